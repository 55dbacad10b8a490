"""Segmentation metrics and paired statistics, on numpy arrays.

Overlap and surface metrics (DSC, NSD, HD95), instance matching for cells (F1), BraTS region masks, and the paired
comparison of two methods on the same cases. The folder evaluators that apply these per protocol live in
:mod:`xlstm_unet.evaluation`.

Dims legend: masks are ``(*spatial)`` arrays, ``spatial = (H, W)`` in 2D or ``(D, H, W)`` in 3D. ``spacing`` has one
entry per array axis, in the same order as the axes (nnU-Net's readers return it that way), in mm (or px).

Example::

    >>> from xlstm_unet import metrics
    >>> gt = np.zeros((32, 32), bool); gt[8:20, 8:20] = True
    >>> pred = np.roll(gt, 1, axis=0)
    >>> metrics.dice(pred, gt), metrics.nsd(pred, gt, spacing=(1.0, 1.0), tolerance_mm=2.0)
    (0.9166666666666666, 1.0)
    >>> metrics.hd95(pred, gt, spacing=(2.0, 1.0))
    2.0

Conventions shared by all functions (the official U-Mamba / FLARE evaluation scripts, see
``shared/docs/reference.md``):

- A binary mask is a ``bool`` array or an integer/float array of 0 and 1; anything else raises ``ValueError``.
- Empty masks: when both masks are empty, :func:`dice` and :func:`nsd` return ``both_empty`` (default 1.0); when
  exactly one is empty they return 0.0. :func:`hd95` returns ``both_empty`` (default 0.0) or ``one_empty`` (default:
  the image diagonal in mm, a finite worst case). The BraTS evaluator passes SegMamba's values instead.
- Surface metrics use MONAI underneath: :func:`nsd` is ``monai.metrics.compute_surface_dice`` with
  ``use_subvoxels=True`` (surface elements weighted by their area, as in DeepMind's ``surface-distance`` package
  that the official scripts use); :func:`hd95` takes the edge distances from MONAI and by default pools both
  directions before the 95th percentile, as medpy's ``hd95`` that SegMamba uses (MONAI's own
  ``compute_hausdorff_distance`` takes the larger of the two directed percentiles: ``aggregate="max_directed"``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from scipy import stats
from scipy.optimize import linear_sum_assignment
from skimage.measure import label as cc_label
from skimage.segmentation import expand_labels, relabel_sequential

__all__ = [
    "BRATS_REGIONS",
    "dice",
    "nsd",
    "hd95",
    "image_diagonal_mm",
    "as_spacing",
    "remove_border_instances",
    "instance_iou",
    "cell_f1",
    "semantic_to_instances",
    "brats_regions",
    "paired_comparison",
    "compare_methods",
    "holm",
]

#: BraTS 2023 regions from the labels 1 = NCR, 2 = ED (peritumoral edema), 3 = ET (enhancing tumour).
BRATS_REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


# ----------------------------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------------------------
def _binary(x: np.ndarray, name: str) -> np.ndarray:
    """A bool copy-free view of a binary mask; raises on values other than 0/1."""
    x = np.asarray(x)
    if x.dtype == bool:
        return x
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected a binary mask (bool or 0/1 numbers), got dtype {x.dtype}")
    fg = x != 0
    if np.any(fg & (x != 1)):
        bad = np.unique(x[fg & (x != 1)])[:5].tolist()
        raise ValueError(f"{name}: expected a binary mask (bool or 0/1), got other values such as {bad}")
    return fg


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = _binary(pred, "pred"), _binary(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got pred {p.shape} and gt {g.shape}")
    return p, g


def as_spacing(spacing: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    """``spacing`` as one positive float per axis (a scalar is broadcast); ``ValueError`` on a wrong length."""
    if np.isscalar(spacing):
        sp = (float(spacing),) * ndim  # type: ignore[arg-type]
    else:
        sp = tuple(float(s) for s in spacing)  # type: ignore[union-attr]
    if len(sp) != ndim:
        raise ValueError(f"spacing needs one entry per array axis: expected {ndim}, got {len(sp)} ({sp})")
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be finite and > 0, got {sp}")
    return sp


def _monai_ready(p: np.ndarray, g: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (*spatial) float32 tensors for MONAI; surface metrics exist for 2D and 3D only."""
    if p.ndim not in (2, 3):
        raise ValueError(f"surface metrics need 2D or 3D masks, got {p.ndim} dims (shape {p.shape})")
    return tuple(torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32)) for m in (p, g))  # type: ignore


def image_diagonal_mm(shape: Sequence[int], spacing: float | Sequence[float]) -> float:
    """Length of the image diagonal in mm: ``sqrt(sum((shape_i * spacing_i)**2))``."""
    sp = as_spacing(spacing, len(shape))
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, sp))))


# ----------------------------------------------------------------------------------------------------------------------
# overlap and surface metrics
# ----------------------------------------------------------------------------------------------------------------------
def dice(pred: np.ndarray, gt: np.ndarray, *, both_empty: float = 1.0) -> float:
    """Dice similarity coefficient ``2|P & G| / (|P| + |G|)`` of two binary masks of any dimension.

    Args:
        pred, gt: binary masks of the same shape ``(*spatial)``.
        both_empty: the value when both masks are empty (default 1.0, the U-Mamba/FLARE convention; SegMamba's
            BraTS convention is 0.0). When exactly one mask is empty the result is 0.0.
    """
    p, g = _pair(pred, gt)
    denom = int(p.sum()) + int(g.sum())
    if denom == 0:
        return float(both_empty)
    return 2.0 * int(np.logical_and(p, g).sum()) / denom


def nsd(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: float | Sequence[float],
    tolerance_mm: float,
    *,
    both_empty: float = 1.0,
) -> float:
    """Normalized surface Dice (surface Dice at a tolerance), Nikolov et al. 2021.

    The fraction of both surfaces (weighted by surface-element area) that lies within ``tolerance_mm`` of the other
    surface. Computed by ``monai.metrics.compute_surface_dice(use_subvoxels=True)``, which follows DeepMind's
    ``surface-distance`` (the package behind the official FLARE / U-Mamba ``SurfaceDice.py``): surface elements
    sit on the voxel-corner grid, 2x2(x2) neighbourhoods are cut by marching squares/cubes, and a distance counts as
    within tolerance when ``d <= tolerance_mm``. Masks touching the image border get a closed surface there.

    Args:
        pred, gt: binary masks ``(H, W)`` or ``(D, H, W)`` of the same shape.
        spacing: voxel size per array axis (mm, or 1 for pixels); a scalar means isotropic.
        tolerance_mm: the tolerance tau, finite and >= 0, in the units of ``spacing``.
        both_empty: the value when both masks are empty (default 1.0, the official convention; MONAI returns NaN).
            When exactly one is empty the result is 0.0.
    """
    p, g = _pair(pred, gt)
    sp = as_spacing(spacing, p.ndim)
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance_mm must be finite and >= 0, got {tolerance_mm}")
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return float(both_empty)
    if not (has_p and has_g):
        return 0.0
    from monai.metrics import compute_surface_dice

    tp, tg = _monai_ready(p, g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's own deprecated argument, used internally
        out = compute_surface_dice(
            tp[None, None], tg[None, None], class_thresholds=[float(tolerance_mm)], include_background=True,
            spacing=list(sp), use_subvoxels=True,
        )
    return float(out[0, 0])


def hd95(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: float | Sequence[float],
    *,
    both_empty: float = 0.0,
    one_empty: float | None = None,
    aggregate: Literal["pooled", "max_directed"] = "pooled",
) -> float:
    """95th-percentile Hausdorff distance in the units of ``spacing``.

    Edges are the mask voxels removed by one binary erosion (face connectivity); d(x -> Y) is the Euclidean distance
    from the centre of edge voxel x to the nearest edge voxel centre of Y, scaled by ``spacing`` (both directed
    distance sets come from ``monai.metrics.utils.get_edge_surface_distance``). Percentiles interpolate linearly.

    - ``aggregate="pooled"`` (default): the 95th percentile of both directed sets together, i.e. medpy's
      ``metric.binary.hd95``, which SegMamba's BraTS evaluation uses.
    - ``aggregate="max_directed"``: ``max(P95(d(P -> G)), P95(d(G -> P)))``, the definition of
      ``monai.metrics.compute_hausdorff_distance(percentile=95)``. It is >= the pooled value.

    Args:
        pred, gt: binary masks ``(H, W)`` or ``(D, H, W)`` of the same shape.
        spacing: voxel size per array axis; a scalar means isotropic (BraTS: 1 mm).
        both_empty: the value when both masks are empty (default 0.0).
        one_empty: the value when exactly one mask is empty; ``None`` (default) means the image diagonal in mm
            (:func:`image_diagonal_mm`), the largest distance possible inside the image. SegMamba uses 50.
        aggregate: how the two directed distance sets are combined (see above).
    """
    if aggregate not in ("pooled", "max_directed"):
        raise ValueError(f"aggregate must be 'pooled' or 'max_directed', got {aggregate!r}")
    p, g = _pair(pred, gt)
    sp = as_spacing(spacing, p.ndim)
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return float(both_empty)
    if not (has_p and has_g):
        return image_diagonal_mm(p.shape, sp) if one_empty is None else float(one_empty)
    from monai.metrics.utils import get_edge_surface_distance

    tp, tg = _monai_ready(p, g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        _, (d_pg, d_gp), _ = get_edge_surface_distance(
            tp > 0, tg > 0, distance_metric="euclidean", spacing=list(sp), symmetric=True,
        )
    d_pg, d_gp = np.asarray(d_pg, dtype=np.float64), np.asarray(d_gp, dtype=np.float64)
    if aggregate == "pooled":
        return float(np.percentile(np.concatenate([d_pg, d_gp]), 95))
    return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))


# ----------------------------------------------------------------------------------------------------------------------
# cells: instances and F1
# ----------------------------------------------------------------------------------------------------------------------
def _instances(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
            raise ValueError(f"{name}: expected an integer instance map, got non-integer float values")
        x = x.astype(np.int64)
    elif x.dtype == bool or x.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected an integer instance map (0 = background), got dtype {x.dtype}")
    if x.size and x.min() < 0:
        raise ValueError(f"{name}: instance ids must be >= 0, got minimum {x.min()}")
    return x


def remove_border_instances(instances: np.ndarray, border_px: int = 2) -> np.ndarray:
    """Drop every instance with at least one pixel within ``border_px`` of any image edge, then relabel 1..N.

    ``border_px = 2`` is the official cell protocol (pixels with index < 2 or >= size - 2 on any axis); 0 keeps all.
    Returns a new array ``(*spatial)``; the input is not modified.
    """
    inst = _instances(instances, "instances")
    if border_px < 0:
        raise ValueError(f"border_px must be >= 0, got {border_px}")
    out = inst.copy()
    if border_px > 0:
        band = np.ones(inst.shape, dtype=bool)
        band[tuple(slice(border_px, max(n - border_px, border_px)) for n in inst.shape)] = False
        touching = np.unique(inst[band])
        touching = touching[touching > 0]
        out[np.isin(out, touching)] = 0
    return relabel_sequential(out)[0]


def instance_iou(gt_instances: np.ndarray, pred_instances: np.ndarray) -> np.ndarray:
    """IoU of every (gt, pred) instance pair.

    Both maps must be labelled 1..N consecutively (0 = background). Returns ``(N_gt, N_pred)`` float64.
    """
    g = _instances(gt_instances, "gt_instances").ravel()
    p = _instances(pred_instances, "pred_instances").ravel()
    ng, npr = int(g.max(initial=0)), int(p.max(initial=0))
    # (N_gt + 1, N_pred + 1) pixel-overlap counts, row/col 0 = background
    overlap = np.bincount(g.astype(np.int64) * (npr + 1) + p, minlength=(ng + 1) * (npr + 1))
    overlap = overlap.reshape(ng + 1, npr + 1).astype(np.float64)
    area_g = overlap.sum(axis=1, keepdims=True)
    area_p = overlap.sum(axis=0, keepdims=True)
    union = area_g + area_p - overlap
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, overlap / union, 0.0)
    return iou[1:, 1:]


def cell_f1(
    pred_instances: np.ndarray,
    gt_instances: np.ndarray,
    iou_threshold: float = 0.5,
    border_px: int = 2,
) -> dict[str, float | int]:
    """Instance F1 of one image, as the official cell evaluation (NeurIPS 2022 cell challenge / U-Mamba).

    1. Instances with a pixel within ``border_px`` of the image edge are removed from both maps
       (:func:`remove_border_instances`).
    2. Ground-truth and predicted instances are matched one-to-one by the Hungarian algorithm
       (``scipy.optimize.linear_sum_assignment``), maximising first the number of pairs with IoU >= threshold and
       then their IoU; a pair is a true positive when IoU >= ``iou_threshold``.
    3. ``precision = tp / n_pred``, ``recall = tp / n_gt``, ``f1 = 2 p r / (p + r)``.

    Conventions: when ``tp == 0`` precision, recall and F1 are 0 (official; this includes an image where neither map
    has an instance left). ``fp = n_pred - tp`` and ``fn = n_gt - tp`` always (the official script reports
    ``fn = 0`` when there is no prediction; that did not change its F1).

    Args:
        pred_instances, gt_instances: integer instance maps ``(*spatial)``, 0 = background, any ids.
        iou_threshold: matching threshold in (0, 1].
        border_px: width of the border band; 0 keeps border cells.

    Returns:
        ``{"precision", "recall", "f1", "tp", "fp", "fn", "n_pred", "n_gt"}``.
    """
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    p, g = _instances(pred_instances, "pred_instances"), _instances(gt_instances, "gt_instances")
    if p.shape != g.shape:
        raise ValueError(f"pred_instances and gt_instances must have the same shape, got {p.shape} and {g.shape}")
    p, g = remove_border_instances(p, border_px), remove_border_instances(g, border_px)
    n_pred, n_gt = int(p.max(initial=0)), int(g.max(initial=0))
    tp = 0
    if n_pred > 0 and n_gt > 0:
        iou = instance_iou(g, p)  # (N_gt, N_pred)
        n_min = min(n_gt, n_pred)
        cost = -(iou >= iou_threshold).astype(np.float64) - iou / (2 * n_min)
        rows, cols = linear_sum_assignment(cost)
        tp = int(np.sum(iou[rows, cols] >= iou_threshold))
    if tp == 0:
        precision = recall = f1 = 0.0
    else:
        precision, recall = tp / n_pred, tp / n_gt
        f1 = 2 * precision * recall / (precision + recall)
    return {
        "precision": float(precision), "recall": float(recall), "f1": float(f1),
        "tp": tp, "fp": n_pred - tp, "fn": n_gt - tp, "n_pred": n_pred, "n_gt": n_gt,
    }


def semantic_to_instances(
    semantic: np.ndarray,
    interior_label: int = 1,
    *,
    boundary_label: int | None = None,
    connectivity: int | None = None,
) -> np.ndarray:
    """Instances from a 3-class cell map (0 background, 1 interior, 2 boundary): connected components of interior.

    This is the official protocol (``skimage.measure.label(seg == 1)``): the boundary class only separates touching
    cells and its pixels stay background, so predicted instances are thinner than the ground truth by the boundary
    width (with the training targets' ~2 px boundary ring, a round cell keeps IoU >= 0.5 from ~14 px across).

    Args:
        semantic: integer class map ``(*spatial)``.
        interior_label: the interior class id.
        boundary_label: when given (e.g. 2), boundary pixels are afterwards given to the nearest instance within
            2 px (``skimage.segmentation.expand_labels``), so instances regain their full extent. Not part of the
            official protocol; default ``None`` leaves them as background.
        connectivity: neighbourhood for the components, 1..ndim; ``None`` = ndim (full, 8-connected in 2D; the
            skimage default the official script uses).

    Returns:
        ``(*spatial)`` int32 instance map, 0 = background, instances 1..N.
    """
    sem = np.asarray(semantic)
    if sem.dtype.kind not in "biuf":
        raise ValueError(f"semantic: expected an integer class map, got dtype {sem.dtype}")
    if connectivity is not None and not 1 <= connectivity <= sem.ndim:
        raise ValueError(f"connectivity must be in 1..{sem.ndim}, got {connectivity}")
    inst = cc_label(sem == interior_label, connectivity=connectivity).astype(np.int32)
    if boundary_label is not None:
        grown = expand_labels(inst, distance=2)
        keep = (sem == boundary_label) & (inst == 0)
        inst = np.where(keep, grown, inst).astype(np.int32)
    return inst


# ----------------------------------------------------------------------------------------------------------------------
# BraTS
# ----------------------------------------------------------------------------------------------------------------------
def brats_regions(
    seg: np.ndarray, regions: Mapping[str, Sequence[int]] | None = None
) -> dict[str, np.ndarray]:
    """Binary region masks from a BraTS label map.

    Args:
        seg: integer label map ``(*spatial)``; BraTS 2023 labels 1 = NCR, 2 = ED, 3 = ET.
        regions: name -> labels that form the region; default :data:`BRATS_REGIONS`
            (WT = {1, 2, 3}, TC = {1, 3}, ET = {3}). BraTS 2021 data (ET = 4) needs ``{"WT": (1, 2, 4), ...}``.

    Returns:
        ``{name: bool mask (*spatial)}`` in the order of ``regions``.
    """
    seg = np.asarray(seg)
    if seg.dtype.kind not in "biuf":
        raise ValueError(f"seg: expected an integer label map, got dtype {seg.dtype}")
    regs = BRATS_REGIONS if regions is None else regions
    if not regs:
        raise ValueError("regions must name at least one region")
    return {name: np.isin(seg, np.asarray(labels)) for name, labels in regs.items()}


# ----------------------------------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------------------------------
def paired_comparison(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
    ci_method: Literal["percentile", "BCa", "basic"] = "percentile",
) -> dict[str, float | int | str]:
    """Compare two methods scored on the same cases (``a[i]`` and ``b[i]`` belong to case i).

    - Two-sided Wilcoxon signed-rank test on ``d = a - b`` (``scipy.stats.wilcoxon``, zero differences dropped as
      in Wilcoxon's original method; scipy's ``method="auto"``: exact for n <= 50 without ties or zeros, all sign
      permutations for n <= 13 with them, the normal approximation otherwise). When every difference is 0 the
      p-value is 1.0.
    - Bootstrap ``confidence`` CI of ``mean(d)`` by resampling cases with replacement (``scipy.stats.bootstrap``,
      ``n_boot`` resamples, ``numpy.random.default_rng(seed)``, ``ci_method`` interval).
    - Pairs where either value is NaN are dropped with a warning.

    Returns:
        ``{"n", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "p_value", "statistic", "n_boot", "seed",
        "ci_method"}``; ``mean_diff > 0`` means a scores higher. With n < 2 the CI and p-value are NaN (warned).
    """
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"a and b must be paired (same length), got {x.size} and {y.size}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    ok = ~(np.isnan(x) | np.isnan(y))
    if not ok.all():
        warnings.warn(f"paired_comparison: dropped {int((~ok).sum())} pair(s) with NaN", stacklevel=2)
        x, y = x[ok], y[ok]
    n = int(x.size)
    if n == 0:
        raise ValueError("paired_comparison needs at least one pair without NaN")
    d = x - y
    out: dict[str, float | int | str] = {
        "n": n, "mean_a": float(x.mean()), "mean_b": float(y.mean()), "mean_diff": float(d.mean()),
        "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan"), "statistic": float("nan"),
        "n_boot": int(n_boot), "seed": int(seed), "ci_method": ci_method,
    }
    if n < 2:
        warnings.warn("paired_comparison: one pair only, no test or confidence interval", stacklevel=2)
        return out
    if np.all(d == 0):
        out.update(p_value=1.0, statistic=0.0, ci_low=0.0, ci_high=0.0)
        return out
    res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    out.update(p_value=float(res.pvalue), statistic=float(res.statistic))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        boot = stats.bootstrap(
            (d,), np.mean, n_resamples=n_boot, batch=1000, vectorized=True, confidence_level=confidence,
            method=ci_method, rng=np.random.default_rng(seed),
        )
    out.update(ci_low=float(boot.confidence_interval.low), ci_high=float(boot.confidence_interval.high))
    return out


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1). NaN entries stay NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        out[idx] = running
    return out


def _scores(obj: pd.DataFrame | Mapping[str, float], metric: str, method: str) -> pd.Series:
    if isinstance(obj, pd.DataFrame):
        df = obj.set_index("case") if "case" in obj.columns else obj
        if metric not in df.columns:
            raise ValueError(f"method {method!r}: no column {metric!r}; columns are {list(df.columns)}")
        s = df[metric]
    elif isinstance(obj, Mapping):
        s = pd.Series(dict(obj), dtype=np.float64)
    else:
        raise ValueError(f"method {method!r}: expected a DataFrame or a case -> score mapping, got {type(obj)}")
    s = s.astype(np.float64)
    s.index = s.index.astype(str)
    if s.index.has_duplicates:
        raise ValueError(f"method {method!r}: duplicate case ids {sorted(set(s.index[s.index.duplicated()]))[:5]}")
    return s


def compare_methods(
    per_case: Mapping[str, pd.DataFrame | Mapping[str, float]],
    reference: str,
    metric: str,
    *,
    n_boot: int = 10000,
    seed: int = 0,
    higher_is_better: bool = True,
) -> pd.DataFrame:
    """The results table: every method against ``reference`` on the cases they share.

    Args:
        per_case: method name -> a per-case table (``per_case.csv`` as a DataFrame, with a ``case`` column or a
            case index) or a ``{case: score}`` mapping.
        reference: the method the others are compared with (e.g. ``"nnUNet"``).
        metric: the column to compare (e.g. ``"dice_mean"``, ``"f1"``).
        n_boot, seed: bootstrap settings for :func:`paired_comparison`.
        higher_is_better: only sets the ``better`` column (``False`` for HD95).

    Only cases scored by every method (and not NaN) are used; dropped cases are warned about.

    Returns:
        DataFrame indexed by method (reference first) with ``n, mean, std, median`` (std with ddof=0),
        ``diff`` (= method - reference, mean over cases), ``ci_low, ci_high`` (bootstrap 95% CI of ``diff``),
        ``p_value`` (Wilcoxon), ``p_holm`` (Holm-adjusted over the non-reference methods) and ``better``
        (True when the CI excludes 0 in the good direction). The reference row has NaN comparison columns.
    """
    if reference not in per_case:
        raise ValueError(f"reference {reference!r} is not among the methods {list(per_case)}")
    series = {m: _scores(v, metric, m) for m, v in per_case.items()}
    frame = pd.DataFrame(series)
    complete = frame.dropna()
    if len(complete) < len(frame):
        dropped = sorted(set(frame.index) - set(complete.index))
        warnings.warn(
            f"compare_methods: {len(dropped)} case(s) not scored by every method were dropped, e.g. {dropped[:5]}",
            stacklevel=2,
        )
    if complete.empty:
        raise ValueError(f"compare_methods: no case is scored by every method for {metric!r}")
    methods = [reference] + [m for m in per_case if m != reference]
    rows = []
    ref = complete[reference].to_numpy()
    for m in methods:
        v = complete[m].to_numpy()
        row: dict[str, float | int | bool | str] = {
            "method": m, "n": int(v.size), "mean": float(v.mean()), "std": float(v.std()),
            "median": float(np.median(v)),
        }
        if m == reference:
            row.update(diff=np.nan, ci_low=np.nan, ci_high=np.nan, p_value=np.nan)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # n < 2 is reported as NaN in the table
                r = paired_comparison(v, ref, n_boot=n_boot, seed=seed)
            row.update(diff=r["mean_diff"], ci_low=r["ci_low"], ci_high=r["ci_high"], p_value=r["p_value"])
        rows.append(row)
    table = pd.DataFrame(rows).set_index("method")
    table["p_holm"] = np.nan
    others = [m for m in methods if m != reference]
    if others:
        table.loc[others, "p_holm"] = holm(table.loc[others, "p_value"].to_numpy())
    table["better"] = (table["ci_low"] > 0) if higher_is_better else (table["ci_high"] < 0)
    table.loc[reference, "better"] = False
    table.attrs.update(metric=metric, reference=reference, n_boot=n_boot, seed=seed)
    return table
