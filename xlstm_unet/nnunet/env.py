"""``xlstm-unet env``: the shell variables that make nnU-Net's own CLI find our trainers and data.

Usage::

    eval "$(xlstm-unet env)"
    nnUNetv2_train 901 2d 0 -tr nnUNetTrainerXLSTMBot -device cpu

``nnUNet_extTrainer`` points at our trainer folder; ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results``
keep the user's values when set, and default to ``data/...`` in the repository otherwise; ``nnUNet_def_n_proc``
(nnU-Net's worker processes, 8 by default) keeps the user's value, else this machine's CPU count up to 8.
"""

from __future__ import annotations

import argparse
import os
import shlex

from xlstm_unet.nnunet.variants import ext_trainer_dir
from xlstm_unet.paths import NNUNET_VARS, nnunet_dirs

__all__ = ["env_vars", "env_exports", "apply_env", "register"]


def env_vars(data_root: str | os.PathLike | None = None) -> dict[str, str]:
    """The variables: nnU-Net's three folders and ``nnUNet_extTrainer`` (keeping other entries already in it)."""
    out = {k: str(v) for k, v in nnunet_dirs(data_root).items()}
    ext = str(ext_trainer_dir())
    existing = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p and p != ext]
    out["nnUNet_extTrainer"] = os.pathsep.join([ext, *existing])
    # nnU-Net's worker count for preprocessing and the final validation's export (its default, 8, on any machine)
    out["nnUNet_def_n_proc"] = os.environ.get("nnUNet_def_n_proc") or str(max(1, min(8, os.cpu_count() or 1)))
    return out


def env_exports(data_root: str | os.PathLike | None = None) -> str:
    """``export NAME=value`` lines for a POSIX shell."""
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env_vars(data_root).items())


def apply_env(data_root: str | os.PathLike | None = None) -> dict[str, str]:
    """Set the variables in this process (creating nnU-Net's folders) and return them."""
    values = env_vars(data_root)
    for k, v in values.items():
        os.environ[k] = v
        if k in NNUNET_VARS:
            os.makedirs(v, exist_ok=True)
    return values


def _run(args: argparse.Namespace) -> int:
    print(env_exports(args.data_root))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "env", help="print export lines for nnU-Net (eval \"$(xlstm-unet env)\")",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None,
                   help="folder for nnUNet_raw/preprocessed/results when they are unset (default: <repo>/data)")
    p.set_defaults(func=_run)
