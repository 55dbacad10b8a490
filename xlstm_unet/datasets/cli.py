"""The ``xlstm-unet convert`` sub-command: convert a dataset (or generate a phantom) into nnU-Net raw format.

Examples::

    xlstm-unet convert phantom2d
    xlstm-unet convert kvasir_seg --out-root data/nnUNet_raw
    xlstm-unet convert brats23 --source /data/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData
    xlstm-unet convert generic --source my_folder --labels background=0,tumor=1 --name MyTumours \\
        --option mask_values={255:1}
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

__all__ = ["register", "run_convert", "parse_options"]

logger = logging.getLogger(__name__)


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``["max_cases=10", "channels=[t1, t2]"]`` -> ``{"max_cases": 10, "channels": ["t1", "t2"]}`` (YAML values)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"--option expects KEY=VALUE with a Python identifier as KEY, got {item!r}")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def _epilog() -> str:
    from . import DATASETS

    width = max(len(n) for n in DATASETS)
    lines = ["datasets (name, default id, protocol: description):"]
    for name, info in DATASETS.items():
        lines.append(f"  {name:<{width}}  {info.default_id:>3}  {info.protocol.value:<9}  {info.summary}")
    lines.append("")
    lines.append("Dataset-specific options go through --option KEY=VALUE (values parsed as YAML), e.g. "
                 "--option max_cases=20, --option n_train=8, --option 'channels=[t1,t2]'.")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``convert`` sub-command to the ``xlstm-unet`` parser."""
    from . import DATASETS

    p = subparsers.add_parser(
        "convert", help="convert a dataset (or generate a SYNTHETIC phantom) into nnU-Net raw format",
        description="Convert a dataset into nnU-Net v2 raw format (imagesTr/labelsTr/imagesTs/labelsTs, "
                    "dataset.json, split.json). Validates the input first; writes atomically.",
        epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=list(DATASETS), metavar="DATASET", help="one of: " + ", ".join(DATASETS))
    p.add_argument("--source", default=None, help="raw dataset folder (default: the shared data for the real "
                                                  "shared sets; unused for phantoms)")
    p.add_argument("--out-root", default=None, help="parent folder of Dataset<id>_<Name> (default: nnUNet_raw)")
    p.add_argument("--dataset-id", type=int, default=None, help="nnU-Net dataset id 1..999 (default per dataset)")
    p.add_argument("--seed", type=int, default=0, help="split / generation seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--labels", default=None, help="generic: label map, e.g. background=0,tumor=1")
    p.add_argument("--channels", default=None, help="generic: comma-separated channel file suffixes, e.g. t1,t2")
    p.add_argument("--name", default=None, help="generic: dataset name (output folder Dataset<id>_<name>)")
    p.add_argument("--option", "-o", action="append", default=None, metavar="KEY=VALUE",
                   help="dataset-specific option (repeatable), value parsed as YAML")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_convert)
    return p


def run_convert(args: argparse.Namespace) -> int:
    """Run ``convert`` from parsed arguments; prints the output folder. Returns the exit code."""
    from . import convert

    try:
        options = parse_options(args.option)
    except ValueError as err:
        print(f"xlstm-unet convert: error: {err}", file=sys.stderr)
        return 2
    if args.dataset == "generic":
        if args.labels is not None:
            options["labels"] = args.labels
        if args.channels is not None:
            options["channels"] = [c.strip() for c in args.channels.split(",") if c.strip()]
        if args.name is not None:
            options["dataset_name"] = args.name
    elif any(v is not None for v in (args.labels, args.channels, args.name)):
        print("xlstm-unet convert: error: --labels, --channels and --name are options of the generic converter only",
              file=sys.stderr)
        return 2
    try:
        folder = convert(args.dataset, source=args.source, out_root=args.out_root, dataset_id=args.dataset_id,
                         seed=args.seed, overwrite=args.overwrite, progress=not args.quiet, **options)
    except (ValueError, FileExistsError) as err:  # bad input or options: one clear line, no traceback
        print(f"xlstm-unet convert: error: {err}", file=sys.stderr)
        return 2
    print(folder)  # the CLI's result: the dataset folder, for scripts
    return 0
