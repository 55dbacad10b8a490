"""Folder evaluators: score an nnU-Net prediction folder against its ground truth, per protocol.

``evaluate_folder(pred_dir, gt_dir, protocol)`` reads ``<case><file_ending>`` files from both folders with nnU-Net's
own readers, scores every case with :mod:`xlstm_unet.metrics`, and writes ``per_case.csv`` (one row per case) and
``summary.json`` (mean, std, median and n of every column, plus the protocol and every convention used).

Protocols (``shared/docs/reference.md``, the official U-Mamba / SegMamba evaluation scripts):

``generic``
    Per label (or region): Dice, NSD at ``nsd_tolerance_mm`` (default 2, in the units of the spacing) and HD95,
    spacing from the ground truth's header. Empty masks: Dice/NSD 1 when both are empty, 0 when one is; HD95 0 when
    both are empty, the image diagonal in mm when one is.
``abdomen``
    Per organ Dice and NSD with the organ tolerance table :data:`ABDOMEN_NSD_TOLERANCE_MM` (organs found by NAME in
    the labels, see :func:`abdomen_organ`), spacing from the header. Aorta, IVC and esophagus are scored only on the
    slices (first array axis, nnU-Net's z) where the ground truth has that organ. Empty: both empty -> 1, one empty
    -> 0.
``endoscopy``
    Per image, Dice and NSD (tolerance 2 px, spacing 1) per label present in either mask, averaged over those
    labels (``dice_mean``, ``nsd_mean``); per-label columns are empty where the label is in neither mask.
``cells``
    Predictions are 3-class maps (0 background, 1 interior, 2 boundary) turned into instances by
    :func:`~xlstm_unet.metrics.semantic_to_instances`; ground-truth instances come from ``gt_instances_dir`` (or
    ``gt_dir`` itself). F1 per image at IoU >= 0.5 after removing cells within 2 px of the border; report the mean
    and the median.
``brats``
    WT/TC/ET Dice and HD95 at 1 mm spacing (SegMamba). Empty: when the prediction or the ground truth region is
    empty, Dice 0 and HD95 50; when BOTH are empty SegMamba's code also gives 0 / 50 (``brats_both_empty=
    "segmamba"``, default); ``"perfect"`` gives 1 / 0 instead. The choice is written to summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from xlstm_unet._io import atomic_write
from xlstm_unet.readers import (
    SUPPORTED_FILE_ENDINGS,
    Case,
    case_files,
    find_cases,
    load_dataset_json,
    read_image,
    read_label_map,
)
from xlstm_unet.scoring import (
    ABDOMEN_NSD_TOLERANCE_MM,
    ABDOMEN_ZRANGE_ORGANS,
    BRATS_REGION_COLUMNS,
    PROTOCOLS,
    EvalProtocol,
    abdomen_organ,
    conventions,
    score_case,
    scoring_settings,
)

# The readers (xlstm_unet.readers) and the per-protocol rules (xlstm_unet.scoring) are importable from here too.
__all__ = [
    "PROTOCOLS",
    "EvalProtocol",
    "ABDOMEN_NSD_TOLERANCE_MM",
    "ABDOMEN_ZRANGE_ORGANS",
    "BRATS_REGION_COLUMNS",
    "SUPPORTED_FILE_ENDINGS",
    "Case",
    "abdomen_organ",
    "find_cases",
    "read_label_map",
    "read_image",
    "case_files",
    "load_dataset_json",
    "score_folder",
    "summarize",
    "write_results",
    "evaluate_folder",
    "register",
]


def _check_same_shape(case: Case, pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(
            f"case {case.name}: prediction {case.pred_file} has shape {pred.shape}, ground truth {case.gt_file} "
            f"has shape {gt.shape}"
        )


def score_folder(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    protocol: EvalProtocol = "generic",
    *,
    labels: Mapping[str, int | Sequence[int]] | None = None,
    gt_instances_dir: str | os.PathLike | None = None,
    regions: Mapping[str, Sequence[int]] | None = None,
    spacing: float | Sequence[float] | None = None,
    nsd_tolerance_mm: float = 2.0,
    brats_both_empty: Literal["segmamba", "perfect"] = "segmamba",
    abdomen_zrange: Literal["inclusive", "official"] = "inclusive",
    endoscopy_nsd: Literal["official", "contour"] = "official",
    file_ending: str | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score every case; returns ``(per_case, summary)`` without writing anything. See :func:`evaluate_folder`."""
    for arg, val, allowed in (
        ("protocol", protocol, PROTOCOLS), ("brats_both_empty", brats_both_empty, ("segmamba", "perfect")),
        ("abdomen_zrange", abdomen_zrange, ("inclusive", "official")),
        ("endoscopy_nsd", endoscopy_nsd, ("official", "contour")),
    ):
        if val not in allowed:
            raise ValueError(f"{arg} must be one of {allowed}, got {val!r}")
    if gt_instances_dir is not None and protocol != "cells":
        warnings.warn(f"gt_instances_dir is only used by the cells protocol, not {protocol!r}", stacklevel=2)
    inst_dir = gt_instances_dir if protocol == "cells" else None
    if protocol == "cells" and inst_dir is None:
        sibling = Path(gt_dir).parent / "labelsTs_instances"  # the layout of xlstm_unet.datasets converters
        if sibling.is_dir() and Path(gt_dir).resolve() != sibling.resolve():
            inst_dir = sibling
    cases, ending = find_cases(pred_dir, gt_dir, file_ending, inst_dir)
    ds = load_dataset_json(gt_dir)
    label_map = dict(labels) if labels is not None else (dict(ds["labels"]) if ds and "labels" in ds else None)

    settings = scoring_settings(
        protocol, label_map, gt_dir=gt_dir, has_instances=inst_dir is not None, regions=regions, spacing=spacing,
        nsd_tolerance_mm=nsd_tolerance_mm, brats_both_empty=brats_both_empty, abdomen_zrange=abdomen_zrange,
        endoscopy_nsd=endoscopy_nsd,
    )

    rows: list[dict[str, Any]] = []
    for case in tqdm(cases, desc=f"evaluate ({protocol})", disable=not progress, unit="case"):
        pred, _ = read_label_map(case.pred_file)
        gt, header_sp = read_label_map(case.gt_instances_file or case.gt_file)
        _check_same_shape(case, pred, gt)
        try:
            row = score_case(pred, gt, header_sp, settings)
        except ValueError as err:
            raise ValueError(f"case {case.name} ({case.gt_file}): {err}") from err
        rows.append({"case": case.name, **row})

    per_case = pd.DataFrame(rows)
    if protocol == "generic" and settings.units is None:  # labels found per case: a label absent from both = both empty
        metric_cols = [c for c in per_case.columns if c != "case"]
        per_case = per_case.fillna({c: (0.0 if c.startswith("hd95_") else 1.0) for c in metric_cols})
        for pre in ("dice", "nsd", "hd95"):
            per_case[f"{pre}_mean"] = per_case[[c for c in metric_cols if c.startswith(f"{pre}_")]].mean(axis=1)
    cols = ["case"] + sorted((c for c in per_case.columns if c != "case"), key=_column_order)
    per_case = per_case[cols]
    summary = {
        "protocol": protocol, "n_cases": len(per_case), "pred_dir": str(pred_dir), "gt_dir": str(gt_dir),
        "gt_instances_dir": None if inst_dir is None else str(inst_dir), "file_ending": ending,
        "metrics": summarize(per_case), "conventions": conventions(settings),
        "statistics": "mean, std (ddof=0) and median over cases, ignoring empty (NaN) entries; n = cases used",
        "software": _versions(),
    }
    return per_case, summary


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("xlstm-unet", "monai", "scipy", "scikit-image", "nnunetv2"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _column_order(col: str) -> tuple[int, int]:
    """dice, nsd, hd95 columns (each with its *_mean last), then the cell columns in a fixed order."""
    fixed = ["f1", "precision", "recall", "tp", "fp", "fn", "n_pred", "n_gt", "dice_foreground"]
    if col in fixed:
        return (0, fixed.index(col))
    pre = col.split("_", 1)[0]
    group = {"dice": 1, "nsd": 2, "hd95": 3}.get(pre, 4)
    return (group, 1 if col.endswith("_mean") else 0)


def summarize(per_case: pd.DataFrame) -> dict[str, dict[str, float | int | None]]:
    """``{column: {"mean", "std", "median", "n"}}`` over the cases of a per-case table (NaN entries ignored,
    std with ddof=0, ``None`` where a column has no value)."""
    out: dict[str, dict[str, float | int | None]] = {}
    for col in per_case.columns:
        if col == "case" or not pd.api.types.is_numeric_dtype(per_case[col]):
            continue
        v = per_case[col].to_numpy(dtype=np.float64)
        v = v[~np.isnan(v)]
        if v.size == 0:
            out[col] = {"mean": None, "std": None, "median": None, "n": 0}
        else:
            out[col] = {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
                        "n": int(v.size)}
    return out


def write_results(per_case: pd.DataFrame, summary: Mapping[str, Any], out_dir: str | os.PathLike) -> None:
    """Write ``per_case.csv`` and ``summary.json`` into ``out_dir``: both go to temp files first and are renamed
    into place only when both are complete."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "per_case.csv", suffix=".tmp") as csv, atomic_write(out / "summary.json",
                                                                               suffix=".tmp") as js:
        per_case.to_csv(csv, index=False)
        js.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def evaluate_folder(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    protocol: EvalProtocol = "generic",
    out_dir: str | os.PathLike | None = None,
    *,
    labels: Mapping[str, int | Sequence[int]] | None = None,
    gt_instances_dir: str | os.PathLike | None = None,
    regions: Mapping[str, Sequence[int]] | None = None,
    spacing: float | Sequence[float] | None = None,
    nsd_tolerance_mm: float = 2.0,
    brats_both_empty: Literal["segmamba", "perfect"] = "segmamba",
    abdomen_zrange: Literal["inclusive", "official"] = "inclusive",
    endoscopy_nsd: Literal["official", "contour"] = "official",
    file_ending: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate an nnU-Net prediction folder against a ground-truth folder with one protocol (module docstring).

    Args:
        pred_dir: predictions, ``<case><file_ending>`` (extra files such as ``plans.json`` are ignored).
        gt_dir: ground truth with the same file names (nnU-Net ``labelsTr``/``labelsTs``); a ``dataset.json`` in it
            or its parent gives ``file_ending`` and ``labels`` unless passed here.
        protocol: one of :data:`PROTOCOLS`.
        out_dir: where ``per_case.csv`` and ``summary.json`` go (created; files replaced atomically); None writes
            nothing.
        labels: ``{name: id}`` (or ``{name: [ids]}`` regions), as nnU-Net's dataset.json; names label the columns
            and, for ``abdomen``, select the NSD tolerance (:func:`abdomen_organ`).
        gt_instances_dir: ``cells`` only: ground-truth instance maps ``<case>.<tif|png|...>``. Default: the
            ``labelsTs_instances`` folder next to ``gt_dir`` when it exists (the layout our converters write), else
            ``gt_dir`` itself (an error when its dataset.json says it holds 3-class labels).
        regions: ``generic``: score these ``{name: [ids]}`` unions instead of labels; ``brats``: replaces
            WT/TC/ET (e.g. BraTS 2021 label 4).
        spacing: overrides the spacing (scalar or one per array axis). Default: the ground truth's header
            (``generic``, ``abdomen``), 1 px (``endoscopy``), 1 mm (``brats``).
        nsd_tolerance_mm: ``generic`` NSD tolerance, in the units of the spacing.
        brats_both_empty: ``"segmamba"`` (region empty in both -> Dice 0, HD95 50, as SegMamba's code) or
            ``"perfect"`` (-> Dice 1, HD95 0).
        abdomen_zrange: ``"inclusive"`` (all slices where the ground-truth organ is) or ``"official"`` (the official
            script's ``[lo, hi)``, one slice fewer).
        endoscopy_nsd: ``"official"`` (the image as a one-slice volume, as U-Mamba's script) or ``"contour"``
            (true 2D surface Dice).
        file_ending: overrides the detected file ending.
        progress: show a tqdm bar.

    Returns:
        The summary (also written as ``summary.json``): ``protocol``, ``n_cases``, ``metrics`` ``{column: {"mean",
        "std", "median", "n"}}``, ``conventions`` and the folders.
    """
    per_case, summary = score_folder(
        pred_dir, gt_dir, protocol, labels=labels, gt_instances_dir=gt_instances_dir, regions=regions,
        spacing=spacing, nsd_tolerance_mm=nsd_tolerance_mm, brats_both_empty=brats_both_empty,
        abdomen_zrange=abdomen_zrange, endoscopy_nsd=endoscopy_nsd, file_ending=file_ending, progress=progress,
    )
    if out_dir is not None:
        write_results(per_case, summary, out_dir)
    return summary


# ----------------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``xlstm-unet evaluate PRED GT --protocol P --out DIR`` to the ``xlstm-unet`` command."""
    p = subparsers.add_parser(
        "evaluate", help="score a prediction folder against ground truth (per_case.csv + summary.json)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("pred_dir", help="folder with <case><file_ending> predictions")
    p.add_argument("gt_dir", help="folder with the ground-truth labels (dataset.json next to it or above is read)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="generic", help="evaluation protocol (default: generic)")
    p.add_argument("--out", required=True, help="output folder for per_case.csv and summary.json")
    p.add_argument("--gt-instances", default=None, help="cells: folder of ground-truth instance maps")
    p.add_argument("--spacing", type=float, nargs="+", default=None,
                   help="override the spacing (one value, or one per array axis)")
    p.add_argument("--nsd-tolerance", type=float, default=2.0, help="generic: NSD tolerance (default 2)")
    p.add_argument("--brats-both-empty", choices=("segmamba", "perfect"), default="segmamba",
                   help="brats: score when a region is empty in both (default segmamba: Dice 0, HD95 50)")
    p.add_argument("--abdomen-zrange", choices=("inclusive", "official"), default="inclusive",
                   help="abdomen: slice range for aorta/IVC/esophagus (default inclusive)")
    p.add_argument("--endoscopy-nsd", choices=("official", "contour"), default="official",
                   help="endoscopy: NSD surface (default official: one-slice volume)")
    p.add_argument("--file-ending", default=None, help="override the file ending (default: dataset.json/detected)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_cli)
    return p


def _run_cli(args: argparse.Namespace) -> int:
    spacing = None
    if args.spacing is not None:
        spacing = args.spacing[0] if len(args.spacing) == 1 else tuple(args.spacing)
    try:
        summary = evaluate_folder(
            args.pred_dir, args.gt_dir, args.protocol, args.out, gt_instances_dir=args.gt_instances,
            spacing=spacing, nsd_tolerance_mm=args.nsd_tolerance, brats_both_empty=args.brats_both_empty,
            abdomen_zrange=args.abdomen_zrange, endoscopy_nsd=args.endoscopy_nsd, file_ending=args.file_ending,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError) as err:
        sys.stderr.write(f"xlstm-unet evaluate: error: {err}\n")
        return 1
    lines = [f"{args.protocol}: {summary['n_cases']} case(s) -> {Path(args.out) / 'summary.json'}"]
    for col, s in summary["metrics"].items():
        if s["n"]:
            lines.append(f"  {col:<24} {s['mean']:.4f} +- {s['std']:.4f}  (median {s['median']:.4f}, n={s['n']})")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
