"""The ``xlstm-unet`` command.

Sub-commands are contributed by the modules that own them: each module listed in :data:`SUBCOMMAND_MODULES`
has a ``register(subparsers)`` function that adds its parser and sets ``func`` (a callable taking the parsed
namespace and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser", "SUBCOMMAND_MODULES"]

#: Modules that add sub-commands, in the order they appear in ``--help``.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "xlstm_unet.nnunet.env",      # env
    "xlstm_unet.datasets.cli",    # convert
    "xlstm_unet.nnunet.plans",    # prepare
    "xlstm_unet.evaluation",      # evaluate
    "xlstm_unet.batch",           # run-all
    "xlstm_unet.study",           # tables
    "xlstm_unet.inference",       # predict
    "xlstm_unet.nnunet.share",    # export, import
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xlstm-unet",
        description="xLSTM-UNet on nnU-Net v2: datasets, trainers, evaluation, batch experiments, "
                    "prediction and model sharing.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as err:
            if err.name != mod_name:  # a real import error inside the module
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
