"""Per-case scoring under each evaluation protocol (the rules: :mod:`xlstm_unet.evaluation`'s docstring).

:func:`scoring_settings` resolves a protocol's options and label names once per folder; :func:`score_case` scores
one (prediction, ground truth) pair with :mod:`xlstm_unet.metrics`; :func:`conventions` says what summary.json
records about the rules used.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from xlstm_unet import metrics as M

__all__ = [
    "EvalProtocol",
    "PROTOCOLS",
    "ABDOMEN_NSD_TOLERANCE_MM",
    "ABDOMEN_ZRANGE_ORGANS",
    "BRATS_REGION_COLUMNS",
    "abdomen_organ",
    "ScoringSettings",
    "scoring_settings",
    "score_case",
    "conventions",
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


def _units_from_labels(labels: Mapping[str, int | Sequence[int]]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, label ids) for every non-background label or region of a dataset.json-style mapping."""
    units = []
    for name, val in labels.items():
        ids = tuple(int(v) for v in val) if isinstance(val, (list, tuple)) else (int(val),)
        if _norm(name) in {"background", "ignore"} or ids == (0,):
            continue
        units.append((str(name), ids))
    return units


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
class ScoringSettings:
    """Everything a per-case scorer needs, resolved once per folder by :func:`scoring_settings`."""

    protocol: str
    units: tuple[tuple[str, tuple[int, ...]], ...] | None  # generic (None: labels found per case) and brats
    organs: tuple[tuple[str, int, str | None], ...]  # abdomen: (label name, id, organ key or None)
    names: Mapping[int, str]  # label id -> column name
    spacing: float | Sequence[float] | None
    nsd_tolerance_mm: float
    brats_both_empty: str
    abdomen_zrange: Literal["inclusive", "official"]
    endoscopy_nsd: str
    regions_given: bool = False  # generic: units are the caller's regions


def scoring_settings(
    protocol: EvalProtocol,
    label_map: Mapping[str, int | Sequence[int]] | None,
    *,
    gt_dir: str | os.PathLike,
    has_instances: bool,
    regions: Mapping[str, Sequence[int]] | None,
    **options: Any,
) -> ScoringSettings:
    """Resolve what each protocol scores from the label names (``{name: id}`` or region ``{name: [ids]}``, as
    dataset.json) and ``regions``. ``gt_dir`` names the folder in errors; ``has_instances``: the cells protocol has a
    ground-truth instance folder; ``options``: the other fields of :class:`ScoringSettings` (``spacing``,
    ``nsd_tolerance_mm``, ``brats_both_empty``, ``abdomen_zrange``, ``endoscopy_nsd``), the options of
    :func:`xlstm_unet.evaluation.evaluate_folder`."""
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
                              stacklevel=3)
            organs.append((name, ids[0], organ))
    elif protocol == "cells" and not has_instances and label_map is not None \
            and {"interior", "boundary"} <= {_norm(k) for k in label_map}:
        raise ValueError(
            f"{gt_dir} holds 3-class cell labels (dataset.json names interior/boundary), not instances: pass "
            f"gt_instances_dir (the converters write labelsTs_instances next to labelsTs)"
        )
    names = {}
    if label_map is not None:
        names = {ids[0]: _column_name(n) for n, ids in _units_from_labels(label_map) if len(ids) == 1}
    return ScoringSettings(protocol=protocol, units=None if units is None else tuple(units), organs=tuple(organs),
                           names=names, regions_given=regions is not None, **options)


def _score_generic(pred: np.ndarray, gt: np.ndarray, sp: tuple[float, ...], s: ScoringSettings) -> dict[str, float]:
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


def _score_abdomen(pred: np.ndarray, gt: np.ndarray, sp: tuple[float, ...], s: ScoringSettings) -> dict[str, float]:
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


def _score_endoscopy(pred: np.ndarray, gt: np.ndarray, sp: tuple[float, ...], s: ScoringSettings) -> dict[str, float]:
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


def _score_brats(pred: np.ndarray, gt: np.ndarray, sp: tuple[float, ...], s: ScoringSettings) -> dict[str, float]:
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


def score_case(pred: np.ndarray, gt: np.ndarray, header_spacing: Sequence[float], s: ScoringSettings
               ) -> dict[str, float]:
    """Score one case: ``pred`` and ``gt`` are (*spatial) label maps of the same shape (``gt``: instance ids for
    ``cells``); ``header_spacing`` is the ground truth's, used unless the protocol or ``s.spacing`` fixes it.
    Returns ``{column: value}`` (NaN where a metric is undefined)."""
    if s.protocol == "cells":
        return _score_cells(pred, gt)
    default_sp = 1.0 if s.protocol in ("endoscopy", "brats") else tuple(header_spacing)
    sp = M.as_spacing(default_sp if s.spacing is None else s.spacing, gt.ndim)
    return _SCORERS[s.protocol](pred, gt, sp, s)


def conventions(s: ScoringSettings) -> dict[str, Any]:
    """What summary.json says about the protocol: every tolerance, spacing and empty-mask rule used."""
    header_or = "ground-truth header" if s.spacing is None else s.spacing
    one_or = 1.0 if s.spacing is None else s.spacing
    hd95 = "95th percentile of both directed edge-distance sets pooled (medpy hd95, as SegMamba)"
    if s.protocol == "generic":
        return dict(
            units="regions" if s.regions_given else ("labels (dataset.json)" if s.units else "labels found"),
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
