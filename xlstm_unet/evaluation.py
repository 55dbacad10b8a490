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
import math
import os
import re
import sys
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from xlstm_unet._io import atomic_write
from xlstm_unet import metrics as M

__all__ = [
    "PROTOCOLS",
    "EvalProtocol",
    "ABDOMEN_NSD_TOLERANCE_MM",
    "ABDOMEN_ZRANGE_ORGANS",
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

#: The evaluation protocols (the values of :class:`xlstm_unet.datasets.Protocol`, which converters record).
EvalProtocol = Literal["generic", "abdomen", "endoscopy", "cells", "brats"]
PROTOCOLS: tuple[str, ...] = get_args(EvalProtocol)

#: NSD tolerance in mm per abdominal organ (official FLARE / U-Mamba abdomen MRI evaluation).
ABDOMEN_NSD_TOLERANCE_MM: dict[str, float] = {
    "liver": 5.0, "right_kidney": 3.0, "spleen": 3.0, "pancreas": 5.0, "aorta": 2.0, "ivc": 2.0,
    "right_adrenal_gland": 2.0, "left_adrenal_gland": 2.0, "gallbladder": 2.0, "esophagus": 3.0, "stomach": 5.0,
    "duodenum": 7.0, "left_kidney": 3.0,
}

#: Organs scored only inside the ground truth's slice range (the official scripts' labels 5, 6 and 10).
ABDOMEN_ZRANGE_ORGANS: tuple[str, ...] = ("aorta", "ivc", "esophagus")

#: Label names (normalised: lower case, runs of non-alphanumerics -> "_") -> organ keys of the tolerance table.
#: Covers the FLARE22 / U-Mamba AbdomenMR names, AMOS names (incl. its "arota" and "postcava"), the official
#: script's short names (RK, LK, IVC, RAG, LAG) and TotalSegmentator-style names.
_ORGAN_ALIASES: dict[str, str] = {
    **{k: k for k in ABDOMEN_NSD_TOLERANCE_MM},
    "rk": "right_kidney", "kidney_right": "right_kidney", "kidney_r": "right_kidney",
    "lk": "left_kidney", "kidney_left": "left_kidney", "kidney_l": "left_kidney",
    "inferior_vena_cava": "ivc", "postcava": "ivc", "vena_cava_inferior": "ivc", "inferior_vena_cava_ivc": "ivc",
    "rag": "right_adrenal_gland", "right_adrenal": "right_adrenal_gland", "adrenal_gland_right": "right_adrenal_gland",
    "lag": "left_adrenal_gland", "left_adrenal": "left_adrenal_gland", "adrenal_gland_left": "left_adrenal_gland",
    "gall_bladder": "gallbladder", "oesophagus": "esophagus", "arota": "aorta",
}

#: File endings the evaluators look for (nnU-Net's reader is chosen from the ending).
SUPPORTED_FILE_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".bmp", ".tif", ".tiff")

_NON_METRIC_FILES = {"dataset.json", "plans.json", "predict_from_raw_data_args.json", "summary.json"}


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def _column_name(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", str(name).strip()).strip("_") or "label"


def abdomen_organ(name: str) -> str | None:
    """The key of :data:`ABDOMEN_NSD_TOLERANCE_MM` for a label name, or ``None`` when it is not an organ there.

    Matching ignores case and punctuation: ``"right kidney"``, ``"kidney_right"``, ``"RK"``; ``"inferior vena
    cava"``, ``"postcava"``, ``"IVC"``; ``"right adrenal gland"``, ``"RAG"``; ``"gall bladder"``; ``"arota"`` (AMOS
    spelling) and so on.
    """
    return _ORGAN_ALIASES.get(_norm(name))


# ----------------------------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One case: its id and the files that hold its prediction, ground truth and (cells) ground-truth instances."""

    name: str
    pred_file: Path
    gt_file: Path
    gt_instances_file: Path | None = None


def load_dataset_json(gt_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``dataset.json`` in ``gt_dir`` or its parent (nnU-Net's raw layout: ``DatasetXXX/labelsTr``), else None."""
    for folder in (Path(gt_dir), Path(gt_dir).parent):
        f = folder / "dataset.json"
        if f.is_file():
            try:
                return json.loads(f.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{f}: not valid JSON ({err})") from err
    return None


def _detect_ending(folder: Path) -> str:
    counts: Counter[str] = Counter()
    for f in folder.iterdir():
        if f.is_file() and f.name not in _NON_METRIC_FILES:
            for e in SUPPORTED_FILE_ENDINGS:  # ".nii.gz" is tested before ".nii"
                if f.name.endswith(e):
                    counts[e] += 1
                    break
    if not counts:
        raise ValueError(f"{folder}: no label files (expected one of {', '.join(SUPPORTED_FILE_ENDINGS)})")
    (ending, _), *rest = counts.most_common()
    if rest:
        warnings.warn(f"{folder}: several file endings {dict(counts)}; using {ending!r}", stacklevel=3)
    return ending


def case_files(folder: str | os.PathLike, ending: str) -> dict[str, Path]:
    """``{case: file}`` for the ``<case><ending>`` files of ``folder`` (sorted; metadata JSON files left out)."""
    folder = Path(folder)
    return {
        f.name[: -len(ending)]: f
        for f in sorted(folder.iterdir())
        if f.is_file() and f.name.endswith(ending) and f.name not in _NON_METRIC_FILES
    }


def find_cases(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    file_ending: str | None = None,
    gt_instances_dir: str | os.PathLike | None = None,
) -> tuple[list[Case], str]:
    """Pair the ground-truth files with their predictions.

    ``file_ending`` defaults to ``dataset.json``'s ``file_ending`` (next to or above ``gt_dir``), else the most
    common supported ending in ``gt_dir``. Every ground-truth case needs a prediction (``ValueError`` naming the
    missing files); predictions without ground truth are ignored with a warning. Returns ``(cases, file_ending)``.
    """
    pred, gt = Path(pred_dir), Path(gt_dir)
    for name, folder in (("prediction", pred), ("ground-truth", gt)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{name} folder not found: {folder}")
    if file_ending is None:
        ds = load_dataset_json(gt)
        file_ending = ds.get("file_ending") if ds else None
        file_ending = file_ending or _detect_ending(gt)
    gt_files = case_files(gt, file_ending)
    if not gt_files:
        raise ValueError(f"{gt}: no ground-truth files ending in {file_ending!r}")
    pred_files = case_files(pred, file_ending)
    missing = [str(pred / f"{c}{file_ending}") for c in gt_files if c not in pred_files]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(gt_files)} ground-truth case(s) have no prediction: "
            + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        )
    extra = sorted(set(pred_files) - set(gt_files))
    if extra:
        warnings.warn(
            f"{pred}: {len(extra)} prediction(s) without ground truth are ignored: {extra[:10]}", stacklevel=2
        )
    inst_files: dict[str, Path] = {}
    if gt_instances_dir is not None:
        inst = Path(gt_instances_dir)
        if not inst.is_dir():
            raise FileNotFoundError(f"ground-truth instance folder not found: {inst}")
        inst_files = case_files(inst, _detect_ending(inst))
        lacking = [c for c in gt_files if c not in inst_files]
        if lacking:
            raise ValueError(f"{inst}: no instance label file for case(s) {lacking[:10]}")
    cases = [Case(c, pred_files[c], f, inst_files.get(c)) for c, f in gt_files.items()]
    return cases, file_ending


@lru_cache(maxsize=None)
def _reader(ending: str, example: str):
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    return determine_reader_writer_from_file_ending(ending, example, allow_nonmatching_filename=True, verbose=False)()


def _ending(path: Path) -> str:
    return next((e for e in SUPPORTED_FILE_ENDINGS if path.name.endswith(e)), path.suffix)


def _drop_2d_axis(arr: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, tuple[float, ...]]:
    """(C, 1, H, W) -> (C, H, W) for nnU-Net's 2D convention: a dummy first spatial axis whose spacing is the
    placeholder 999 * max(in-plane spacing); anything else (a real one-slice volume too) is returned unchanged."""
    if arr.ndim == 4 and arr.shape[1] == 1 and math.isclose(spacing[0], 999 * max(spacing[1:])):
        return arr[:, 0], spacing[1:]
    return arr, spacing


def read_label_map(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read a label/segmentation file with nnU-Net's reader for its ending.

    Returns ``(labels, spacing)``: an int64 array ``(*spatial)`` (``(H, W)`` for 2D files, ``(D, H, W)`` for 3D; the
    axis order of nnU-Net, i.e. z, y, x for NIfTI) and the spacing per axis in the same order. For 2D files nnU-Net
    adds a dummy axis with a placeholder spacing (999 x the largest spacing); it is dropped here. PNG/BMP/TIFF
    images carry no spacing and get 1.
    """
    p = Path(path)
    try:
        seg, props = _reader(_ending(p), str(p)).read_seg(str(p))
    except Exception as err:  # any reader failure becomes a clear per-file error
        raise ValueError(f"{p}: could not read label file ({type(err).__name__}: {err})") from err
    arr, spacing = _drop_2d_axis(np.asarray(seg), tuple(float(s) for s in props["spacing"]))
    arr = arr[0]  # drop nnU-Net's channel axis: (1, *spatial) -> (*spatial)
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)) or (arr.size and arr.min() < 0):
        raise ValueError(f"{p}: expected non-negative integer labels")
    return arr.astype(np.int64), spacing


def read_image(channel_files: Sequence[str | os.PathLike]) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read one case's image, one file per channel (``<case>_0000<ending>``, ...), with nnU-Net's reader.

    Returns ``(image, spacing)``: float32 ``(C, *spatial)`` and the spacing per spatial axis, with the same 2D rule
    as :func:`read_label_map` (an RGB PNG is one file holding 3 channels).
    """
    files = [str(f) for f in channel_files]
    if not files:
        raise ValueError("read_image needs at least one channel file")
    try:
        img, props = _reader(_ending(Path(files[0])), files[0]).read_images(files)
    except Exception as err:  # any reader failure becomes a clear error naming the files
        raise ValueError(f"{files}: could not read image ({type(err).__name__}: {err})") from err
    arr, spacing = _drop_2d_axis(np.asarray(img), tuple(float(s) for s in props["spacing"]))
    return arr, spacing


# ----------------------------------------------------------------------------------------------------------------------
# per-case scoring
# ----------------------------------------------------------------------------------------------------------------------
def _units_from_labels(labels: Mapping[str, int | Sequence[int]]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, label ids) for every non-background label or region of a dataset.json-style mapping."""
    units = []
    for name, val in labels.items():
        ids = tuple(int(v) for v in val) if isinstance(val, (list, tuple)) else (int(val),)
        if _norm(name) in {"background", "ignore"} or ids == (0,):
            continue
        units.append((str(name), ids))
    return units


def _check_same_shape(case: Case, pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(
            f"case {case.name}: prediction {case.pred_file} has shape {pred.shape}, ground truth {case.gt_file} "
            f"has shape {gt.shape}"
        )


def _zslab(gt_mask: np.ndarray, mode: Literal["inclusive", "official"]) -> slice:
    z = np.flatnonzero(gt_mask.any(axis=tuple(range(1, gt_mask.ndim))))
    return slice(int(z[0]), int(z[-1]) + (1 if mode == "inclusive" else 0))


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _add_means(row: dict[str, float], prefixes: Sequence[str]) -> dict[str, float]:
    for pre in prefixes:
        row[f"{pre}_mean"] = _nanmean([v for k, v in row.items() if k.startswith(f"{pre}_") and k != f"{pre}_mean"])
    return row


@dataclass(frozen=True)
class _Settings:
    """Everything a per-case scorer needs, resolved once per folder."""

    protocol: str
    units: tuple[tuple[str, tuple[int, ...]], ...] | None  # generic (None: labels found per case) and brats
    organs: tuple[tuple[str, int, str | None], ...]  # abdomen: (label name, id, organ key or None)
    names: Mapping[int, str]  # label id -> column name
    spacing: float | Sequence[float] | None
    nsd_tolerance_mm: float
    brats_both_empty: str
    abdomen_zrange: Literal["inclusive", "official"]
    endoscopy_nsd: str


def _score_generic(pred: np.ndarray, gt: np.ndarray, sp: tuple[float, ...], s: _Settings) -> dict[str, float]:
    units = s.units or [(s.names.get(int(v), str(int(v))), (int(v),))
                        for v in np.union1d(np.unique(pred), np.unique(gt)) if v != 0]
    row: dict[str, float] = {}
    for name, ids in units:
        p, g = np.isin(pred, ids), np.isin(gt, ids)
        col = _column_name(name)
        row[f"dice_{col}"] = M.dice(p, g)
        row[f"nsd_{col}"] = M.nsd(p, g, sp, s.nsd_tolerance_mm)
        row[f"hd95_{col}"] = M.hd95(p, g, sp)
    # without fixed units the means follow once every case's labels are known (score_folder)
    return _add_means(row, ("dice", "nsd", "hd95")) if s.units is not None else row


def _score_abdomen(pred: np.ndarray, gt: np.ndarray, sp: tuple[float, ...], s: _Settings) -> dict[str, float]:
    row: dict[str, float] = {}
    for name, lab, organ in s.organs:
        p, g = pred == lab, gt == lab
        if organ in ABDOMEN_ZRANGE_ORGANS and g.any() and g.ndim == 3:
            zs = _zslab(g, s.abdomen_zrange)
            p, g = p[zs], g[zs]
        col = _column_name(name)
        row[f"dice_{col}"] = M.dice(p, g)
        if organ is not None:
            row[f"nsd_{col}"] = M.nsd(p, g, sp, ABDOMEN_NSD_TOLERANCE_MM[organ])
    return _add_means(row, ("dice", "nsd"))


def _score_endoscopy(pred: np.ndarray, gt: np.ndarray, sp: tuple[float, ...], s: _Settings) -> dict[str, float]:
    if gt.ndim != 2:
        raise ValueError(f"the endoscopy protocol needs 2D images, got shape {gt.shape}")
    present = [int(v) for v in np.union1d(np.unique(pred), np.unique(gt)) if v != 0]
    if not present:
        return {"dice_mean": 1.0, "nsd_mean": 1.0}
    row: dict[str, float] = {}
    for lab in present:
        p, g = pred == lab, gt == lab
        col = s.names.get(lab, str(lab))
        row[f"dice_{col}"] = M.dice(p, g)
        if s.endoscopy_nsd == "official":  # (H, W, 1): the official script's one-slice volume
            row[f"nsd_{col}"] = M.nsd(p[..., None], g[..., None], (*sp, 1.0), 2.0)
        else:
            row[f"nsd_{col}"] = M.nsd(p, g, sp, 2.0)
    return _add_means(row, ("dice", "nsd"))


#: Region names as nnU-Net dataset.json files spell them -> the paper's column names (dice_wt, hd95_tc, ...).
BRATS_REGION_COLUMNS: dict[str, str] = {
    "wt": "wt", "whole_tumor": "wt", "whole tumor": "wt", "whole tumour": "wt",
    "tc": "tc", "tumor_core": "tc", "tumor core": "tc", "tumour core": "tc",
    "et": "et", "enhancing_tumor": "et", "enhancing tumor": "et", "enhancing tumour": "et",
}


def _score_brats(pred: np.ndarray, gt: np.ndarray, sp: tuple[float, ...], s: _Settings) -> dict[str, float]:
    both_dice, both_hd = (0.0, 50.0) if s.brats_both_empty == "segmamba" else (1.0, 0.0)
    regions = dict(s.units or ())
    pr, gr = M.brats_regions(pred, regions), M.brats_regions(gt, regions)
    row: dict[str, float] = {}
    for name in regions:
        col = BRATS_REGION_COLUMNS.get(str(name).strip().lower(), _column_name(name))
        row[f"dice_{col}"] = M.dice(pr[name], gr[name], both_empty=both_dice)
        row[f"hd95_{col}"] = M.hd95(pr[name], gr[name], sp, both_empty=both_hd, one_empty=50.0)
    return _add_means(row, ("dice", "hd95"))


def _score_cells(pred: np.ndarray, gt_instances: np.ndarray) -> dict[str, float]:
    inst = M.semantic_to_instances(pred, interior_label=1)
    row: dict[str, float] = dict(M.cell_f1(inst, gt_instances, iou_threshold=0.5, border_px=2))
    row["dice_foreground"] = M.dice(inst > 0, gt_instances > 0)
    return row


_SCORERS = {"generic": _score_generic, "abdomen": _score_abdomen, "endoscopy": _score_endoscopy,
            "brats": _score_brats}


def _conventions(s: _Settings, regions_given: bool) -> dict[str, Any]:
    """What summary.json says about the protocol: every tolerance, spacing and empty-mask rule used."""
    header_or = "ground-truth header" if s.spacing is None else s.spacing
    one_or = 1.0 if s.spacing is None else s.spacing
    hd95 = "95th percentile of both directed edge-distance sets pooled (medpy hd95, as SegMamba)"
    if s.protocol == "generic":
        return dict(
            units="regions" if regions_given else ("labels (dataset.json)" if s.units else "labels found"),
            nsd_tolerance=s.nsd_tolerance_mm, spacing=header_or, hd95=hd95,
            empty_dice_nsd="both empty -> 1, one empty -> 0",
            empty_hd95="both empty -> 0, one empty -> image diagonal in mm",
        )
    if s.protocol == "abdomen":
        return dict(
            nsd_tolerance_mm={n: ABDOMEN_NSD_TOLERANCE_MM[o] for n, _, o in s.organs if o},
            dice_only=[n for n, _, o in s.organs if o is None],
            zrange_organs=[n for n, _, o in s.organs if o in ABDOMEN_ZRANGE_ORGANS],
            zrange=("3D only: slices lo..hi (inclusive) where the ground truth has the organ, first array axis (z)"
                    if s.abdomen_zrange == "inclusive" else
                    "3D only: slices [lo, hi) as the official script (its last labelled slice is left out), "
                    "first array axis (z)"),
            spacing=header_or, empty="both empty -> Dice 1, NSD 1; one empty -> 0",
        )
    if s.protocol == "endoscopy":
        return dict(
            labels="per image: the union of non-zero labels present in prediction or ground truth; *_mean averages "
                   "over them; per-label columns are empty where the label is absent from both",
            nsd_tolerance_px=2.0, spacing=one_or,
            nsd_surface=("official: the 2D mask as a one-slice 3D volume (as U-Mamba's script), so its top and "
                         "bottom faces count as surface" if s.endoscopy_nsd == "official" else
                         "contour: the 2D contour (marching squares)"),
            empty_image="no label in either mask -> dice_mean = nsd_mean = 1 (the official script stops there)",
        )
    if s.protocol == "cells":
        return dict(
            instances="prediction: connected components (8-connected) of the interior class 1, boundary pixels "
                      "left as background; ground truth: instance labels as stored",
            iou_threshold=0.5, border_px=2, matching="Hungarian on IoU (scipy linear_sum_assignment)",
            empty="tp == 0 -> precision = recall = F1 = 0 (official)",
            dice_foreground="Dice of ground-truth foreground vs predicted interior instances",
        )
    both = (0.0, 50.0) if s.brats_both_empty == "segmamba" else (1.0, 0.0)
    return dict(
        regions={n: list(ids) for n, ids in (s.units or ())}, spacing=one_or, hd95=hd95,
        one_empty="prediction or ground truth region empty -> Dice 0, HD95 50 (SegMamba)",
        both_empty=f"both empty -> Dice {both[0]:g}, HD95 {both[1]:g} ({s.brats_both_empty})",
        brats_both_empty=s.brats_both_empty,
    )


# ----------------------------------------------------------------------------------------------------------------------
# folder scoring
# ----------------------------------------------------------------------------------------------------------------------
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

    units: list[tuple[str, tuple[int, ...]]] | None = None
    organs: list[tuple[str, int, str | None]] = []
    if protocol == "generic":
        if regions is not None:
            units = [(str(k), tuple(int(v) for v in vs)) for k, vs in regions.items()]
        elif label_map is not None:
            units = _units_from_labels(label_map)
    elif protocol == "brats":
        units = [(str(k), tuple(int(v) for v in vs)) for k, vs in (regions or M.BRATS_REGIONS).items()]
    elif protocol == "abdomen":
        if label_map is None:
            raise ValueError(
                f"the abdomen protocol needs organ names: pass labels={{name: id}} or put a dataset.json next to "
                f"{gt_dir}"
            )
        for name, ids in _units_from_labels(label_map):
            if len(ids) != 1:
                raise ValueError(f"abdomen protocol: label {name!r} is a region {ids}; expected one label per organ")
            organ = abdomen_organ(name)
            if organ is None:
                warnings.warn(f"abdomen protocol: no NSD tolerance for label {name!r}; it gets Dice only",
                              stacklevel=2)
            organs.append((name, ids[0], organ))
    elif protocol == "cells" and inst_dir is None and label_map is not None \
            and {"interior", "boundary"} <= {_norm(k) for k in label_map}:
        raise ValueError(
            f"{gt_dir} holds 3-class cell labels (dataset.json names interior/boundary), not instances: pass "
            f"gt_instances_dir (the converters write labelsTs_instances next to labelsTs)"
        )
    names = {}
    if label_map is not None:
        names = {ids[0]: _column_name(n) for n, ids in _units_from_labels(label_map) if len(ids) == 1}
    settings = _Settings(
        protocol=protocol, units=None if units is None else tuple(units), organs=tuple(organs), names=names,
        spacing=spacing, nsd_tolerance_mm=nsd_tolerance_mm, brats_both_empty=brats_both_empty,
        abdomen_zrange=abdomen_zrange, endoscopy_nsd=endoscopy_nsd,
    )

    rows: list[dict[str, Any]] = []
    for case in tqdm(cases, desc=f"evaluate ({protocol})", disable=not progress, unit="case"):
        pred, _ = read_label_map(case.pred_file)
        gt, header_sp = read_label_map(case.gt_instances_file or case.gt_file)
        _check_same_shape(case, pred, gt)
        if protocol == "cells":
            row = _score_cells(pred, gt)
        else:
            default_sp = 1.0 if protocol in ("endoscopy", "brats") else header_sp
            sp = M.as_spacing(default_sp if spacing is None else spacing, gt.ndim)
            try:
                row = _SCORERS[protocol](pred, gt, sp, settings)
            except ValueError as err:
                raise ValueError(f"case {case.name} ({case.gt_file}): {err}") from err
        rows.append({"case": case.name, **row})

    per_case = pd.DataFrame(rows)
    if protocol == "generic" and units is None:  # labels found per case: a label absent from both = both empty
        metric_cols = [c for c in per_case.columns if c != "case"]
        per_case = per_case.fillna({c: (0.0 if c.startswith("hd95_") else 1.0) for c in metric_cols})
        for pre in ("dice", "nsd", "hd95"):
            per_case[f"{pre}_mean"] = per_case[[c for c in metric_cols if c.startswith(f"{pre}_")]].mean(axis=1)
    cols = ["case"] + sorted((c for c in per_case.columns if c != "case"), key=_column_order)
    per_case = per_case[cols]
    summary = {
        "protocol": protocol, "n_cases": len(per_case), "pred_dir": str(pred_dir), "gt_dir": str(gt_dir),
        "gt_instances_dir": None if inst_dir is None else str(inst_dir), "file_ending": ending,
        "metrics": summarize(per_case), "conventions": _conventions(settings, regions is not None),
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
