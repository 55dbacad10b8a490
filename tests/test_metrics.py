"""Tests for xlstm_unet.metrics: hand-computed cases, empty-mask conventions, agreement with MONAI / brute force."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from xlstm_unet import metrics as M


def square(shape=(30, 30), start=(5, 5), size=10) -> np.ndarray:
    """A boolean box of side ``size`` starting at ``start`` (any dimension)."""
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(s, s + size) for s in start)] = True
    return m


def random_blobs(rng: np.random.Generator, shape, sigma=2.0, level=0.6) -> np.ndarray:
    """Smooth random masks (several blobs), so surfaces are not pure noise."""
    return ndi.gaussian_filter(rng.random(shape), sigma) > np.quantile(ndi.gaussian_filter(rng.random(shape), sigma),
                                                                       level)


def brute_force_hd95(a: np.ndarray, b: np.ndarray, spacing, aggregate: str = "pooled") -> float:
    """HD95 written out independently: edge voxels = mask - erosion (face connectivity), KD-tree distances between
    edge voxel centres in mm; pooled 95th percentile (medpy 0.5's ``hd95``: the percentile of both directed sets
    stacked) or the larger directed one (MONAI)."""
    def edge_points(m):
        edges = m & ~ndi.binary_erosion(m, structure=ndi.generate_binary_structure(m.ndim, 1))
        return np.argwhere(edges) * np.asarray(spacing, dtype=float)

    pa, pb = edge_points(a), edge_points(b)
    d_ab = cKDTree(pb).query(pa)[0]
    d_ba = cKDTree(pa).query(pb)[0]
    if aggregate == "pooled":
        return float(np.percentile(np.concatenate([d_ab, d_ba]), 95))
    return float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))


# ----------------------------------------------------------------------------------------------------------------------
# Dice
# ----------------------------------------------------------------------------------------------------------------------
def test_dice_of_two_known_squares():
    a = square(start=(0, 0))
    b = square(start=(5, 0))  # overlaps a in 5 x 10 = 50 pixels; each has 100
    assert M.dice(a, b) == pytest.approx(2 * 50 / 200)
    c = square(start=(3, 4))  # overlap 7 x 6 = 42
    assert M.dice(a, c) == pytest.approx(84 / 200)
    assert M.dice(a, a) == 1.0
    assert M.dice(a, square(start=(15, 15))) == 0.0


def test_dice_3d_and_integer_inputs():
    a = square((12, 12, 12), (0, 0, 0), 4)  # 64 voxels
    b = square((12, 12, 12), (2, 0, 0), 4)  # overlap 2 x 4 x 4 = 32
    assert M.dice(a.astype(np.uint8), b.astype(np.float32)) == pytest.approx(64 / 128)


def test_dice_empty_conventions():
    e = np.zeros((8, 8), bool)
    assert M.dice(e, e) == 1.0
    assert M.dice(e, e, both_empty=0.0) == 0.0
    assert M.dice(square((8, 8), (1, 1), 3), e) == 0.0
    assert M.dice(e, square((8, 8), (1, 1), 3)) == 0.0


@pytest.mark.parametrize("shape", [(40, 36), (16, 18, 20)])
def test_dice_agrees_with_monai(shape):
    from monai.metrics import compute_dice

    rng = np.random.default_rng(1)
    for _ in range(3):
        a, b = random_blobs(rng, shape), random_blobs(rng, shape)
        ref = compute_dice(torch.from_numpy(a[None, None].astype(np.float32)),
                           torch.from_numpy(b[None, None].astype(np.float32)), include_background=True)
        assert M.dice(a, b) == pytest.approx(float(ref[0, 0]), abs=1e-6)


def test_binary_and_shape_validation():
    with pytest.raises(ValueError, match="same shape"):
        M.dice(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="binary mask"):
        M.dice(np.array([[0, 2]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="one entry per array axis"):
        M.nsd(square(), square(), (1.0, 1.0, 1.0), 2)
    with pytest.raises(ValueError, match="> 0"):
        M.hd95(square(), square(), (1.0, 0.0))
    with pytest.raises(ValueError, match="tolerance"):
        M.nsd(square(), square(), 1.0, -1)


# ----------------------------------------------------------------------------------------------------------------------
# NSD
# ----------------------------------------------------------------------------------------------------------------------
# Hand computation for a square of side L = 10 px and its copy shifted by d rows (2D, subvoxel surface elements as in
# DeepMind's surface-distance): the contour has 4(L-1) straight elements (weight = the length of the side they lie
# on: spacing[1] on top/bottom, spacing[0] on left/right) and 4 corner elements (weight sqrt((s0/2)^2 + (s1/2)^2)),
# sitting on the voxel-corner grid. For A -> B (and symmetrically B -> A):
#   top side (2 corners + L-1 straight): distance d*s0;
#   left/right straight elements at row r = 0.5 .. L-1.5: distance max(0, d - 0.5 - r) * s0;
#   bottom side: corners distance 0, straight element at column c: min(d*s0, min(c + 0.5, L - 0.5 - c) * s1).
def test_nsd_shift_by_one_within_tolerance_is_one():
    a, b = square(), square(start=(6, 5))
    assert M.nsd(a, b, 1.0, 2.0) == pytest.approx(1.0)
    assert M.nsd(a, b, (1.0, 1.0), 1.0) == pytest.approx(1.0)  # d <= tau counts


def test_nsd_shift_by_three_isotropic():
    a, b = square(), square(start=(8, 5))
    # pass: left/right 2*9 straight + 2 bottom corners + 4 bottom straight (c+0.5 <= 2); total 36 + 4 corners
    w = math.sqrt(0.5)
    expected = (18 + 2 * w + 4) / (36 + 4 * w)
    assert M.nsd(a, b, 1.0, 2.0) == pytest.approx(expected, abs=1e-6)
    assert M.nsd(b, a, 1.0, 2.0) == pytest.approx(expected, abs=1e-6)  # symmetric
    assert M.nsd(a, b, 1.0, 3.0) == pytest.approx(1.0)


def test_nsd_anisotropic_spacing():
    a = square()
    # shift 1 row along an axis of 3 mm: top side fails (3 > 2); sides pass (weight 3 each); bottom as above
    w = math.sqrt(1.5 ** 2 + 0.5 ** 2)
    expected = (2 * 9 * 3 + 2 * w + 4) / (2 * 9 * 3 + 2 * 9 + 4 * w)
    assert M.nsd(a, square(start=(6, 5)), (3.0, 1.0), 2.0) == pytest.approx(expected, abs=1e-6)
    # shift 3 rows along an axis of 0.5 mm: every distance <= 1.5 mm
    assert M.nsd(a, square(start=(8, 5)), (0.5, 1.0), 2.0) == pytest.approx(1.0)
    # the same shift along the other axis is not within 2 mm once that axis is 1 mm
    assert M.nsd(a, square(start=(5, 8)), (0.5, 1.0), 2.0) < 0.99


def test_nsd_3d_shifts():
    a = square((20, 20, 20), (5, 5, 5), 8)
    assert M.nsd(a, square((20, 20, 20), (6, 5, 5), 8), (1.0, 1.0, 1.0), 2.0) == pytest.approx(1.0)
    shifted3 = square((20, 20, 20), (8, 5, 5), 8)
    assert M.nsd(a, shifted3, (0.5, 1.0, 1.0), 2.0) == pytest.approx(1.0)
    iso = M.nsd(a, shifted3, 1.0, 2.0)
    assert 0.3 < iso < 0.95


def test_nsd_empty_conventions():
    e = np.zeros((10, 10), bool)
    m = square((10, 10), (2, 2), 4)
    assert M.nsd(e, e, 1.0, 2.0) == 1.0  # MONAI itself returns NaN here
    assert math.isnan(M.nsd(e, e, 1.0, 2.0, both_empty=float("nan")))
    assert M.nsd(m, e, 1.0, 2.0) == 0.0
    assert M.nsd(e, m, 1.0, 2.0) == 0.0


# ----------------------------------------------------------------------------------------------------------------------
# HD95
# ----------------------------------------------------------------------------------------------------------------------
def test_hd95_of_a_known_shift():
    a, b = square(), square(start=(8, 5))  # shift 3 rows: a quarter of each edge is exactly 3 away, none further
    assert M.hd95(a, b, 1.0) == pytest.approx(3.0)
    assert M.hd95(a, b, (2.0, 1.0)) == pytest.approx(6.0)
    assert M.hd95(a, square(start=(5, 8)), (2.0, 0.5)) == pytest.approx(1.5)
    assert M.hd95(a, a, 1.0) == 0.0


@pytest.mark.parametrize("shape,spacing", [((40, 36), (2.0, 0.7)), ((14, 20, 18), (2.5, 0.8, 1.1))])
def test_hd95_matches_brute_force(shape, spacing):
    rng = np.random.default_rng(7)
    for _ in range(2):
        a, b = random_blobs(rng, shape), random_blobs(rng, shape)
        assert M.hd95(a, b, spacing) == pytest.approx(brute_force_hd95(a, b, spacing), rel=1e-5)
        mx = M.hd95(a, b, spacing, aggregate="max_directed")
        assert mx == pytest.approx(brute_force_hd95(a, b, spacing, "max"), rel=1e-5)
        assert mx >= M.hd95(a, b, spacing) - 1e-6


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI calls its own deprecated argument
def test_hd95_max_directed_agrees_with_monai():
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(11)
    a, b = random_blobs(rng, (12, 22, 20)), random_blobs(rng, (12, 22, 20))
    t = [torch.from_numpy(m[None, None].astype(np.float32)) for m in (a, b)]
    ref = compute_hausdorff_distance(t[0], t[1], include_background=True, percentile=95, spacing=[3.0, 0.9, 0.9])
    assert M.hd95(a, b, (3.0, 0.9, 0.9), aggregate="max_directed") == pytest.approx(float(ref[0, 0]), rel=1e-5)


@pytest.mark.parametrize("shape,spacing", [((40, 36), (1.0, 1.0)), ((40, 36), (2.0, 0.7)),
                                           ((14, 20, 18), (2.5, 0.8, 1.1)), ((30, 30, 1), (1.0, 1.0, 1.0))])
def test_nsd_agrees_with_deepmind_surface_distance(shape, spacing):
    """NSD against DeepMind's surface-distance (the code in the official FLARE / U-Mamba ``SurfaceDice.py``), on
    random masks, anisotropic spacing and a one-slice volume (the official endoscopy call)."""
    import surface_distance

    rng = np.random.default_rng(4)
    a, b = random_blobs(rng, shape), random_blobs(rng, shape)
    if shape[-1] == 1:
        a, b = random_blobs(rng, shape[:2])[..., None], random_blobs(rng, shape[:2])[..., None]
    distances = surface_distance.compute_surface_distances(b, a, spacing)
    for tol in (1.0, 2.0, 3.0):
        ref = surface_distance.compute_surface_dice_at_tolerance(distances, tol)
        assert M.nsd(a, b, spacing, tol) == pytest.approx(ref, abs=1e-6)


def test_hd95_empty_conventions():
    e = np.zeros((10, 20), bool)
    m = square((10, 20), (2, 2), 4)
    assert M.hd95(e, e, 1.0) == 0.0
    assert M.hd95(e, e, 1.0, both_empty=50.0) == 50.0
    assert M.hd95(m, e, (2.0, 1.0)) == pytest.approx(math.hypot(20, 20))  # image diagonal in mm
    assert M.hd95(e, m, 1.0, one_empty=50.0) == 50.0


# ----------------------------------------------------------------------------------------------------------------------
# cells
# ----------------------------------------------------------------------------------------------------------------------
def planted_cells():
    """64x64: GT cells 1 (matched exactly), 2 (matched with a shift), 3 (missed), 4 (a border cell, also predicted),
    5 (predicted too small: IoU < 0.5); predictions add a false positive far from any cell."""
    gt = np.zeros((64, 64), np.int32)
    pred = np.zeros((64, 64), np.int32)
    gt[10:20, 10:20] = 1
    pred[10:20, 10:20] = 7
    gt[10:20, 30:40] = 2
    pred[11:21, 30:40] = 3  # IoU 90 / 110
    gt[40:50, 10:20] = 3
    gt[0:6, 50:58] = 4  # touches the 2-px border band
    pred[1:6, 50:58] = 9
    gt[40:50, 40:50] = 5
    pred[40:44, 40:50] = 11  # IoU 40 / 100
    pred[25:30, 52:57] = 5  # false positive
    return pred, gt


def test_cell_f1_planted():
    pred, gt = planted_cells()
    r = M.cell_f1(pred, gt)
    assert (r["tp"], r["fp"], r["fn"], r["n_pred"], r["n_gt"]) == (2, 2, 2, 4, 4)
    assert r["precision"] == pytest.approx(0.5)
    assert r["recall"] == pytest.approx(0.5)
    assert r["f1"] == pytest.approx(0.5)
    r0 = M.cell_f1(pred, gt, border_px=0)  # the border cell now counts and matches (IoU 40/48)
    assert (r0["tp"], r0["fp"], r0["fn"]) == (3, 2, 2)
    assert r0["f1"] == pytest.approx(2 * (3 / 5) * (3 / 5) / (6 / 5))
    r9 = M.cell_f1(pred, gt, iou_threshold=0.9)  # only the exact match survives (90/110 < 0.9)
    assert r9["tp"] == 1


def test_cell_f1_one_to_one_matching():
    gt = np.zeros((40, 40), np.int32)
    gt[5:15, 5:15] = 1
    gt[5:15, 16:26] = 2
    pred = np.zeros_like(gt)
    pred[5:15, 5:26] = 1  # one blob covering both cells: IoU 100/210 with each -> no match at 0.5
    assert M.cell_f1(pred, gt)["tp"] == 0
    pred2 = np.zeros_like(gt)
    pred2[5:15, 5:14] = 1
    pred2[5:15, 14:26] = 2  # pred 2 overlaps both GT cells; Hungarian keeps the matching one-to-one
    r = M.cell_f1(pred2, gt)
    assert r["tp"] == 2 and r["fp"] == 0 and r["fn"] == 0


def test_cell_f1_empty_conventions():
    pred, gt = planted_cells()
    r = M.cell_f1(np.zeros_like(gt), gt)
    assert (r["f1"], r["tp"], r["fp"], r["fn"]) == (0.0, 0, 0, 4)
    assert M.cell_f1(np.zeros_like(gt), np.zeros_like(gt))["f1"] == 0.0  # official: tp == 0 -> 0
    assert M.cell_f1(pred, np.zeros_like(gt))["fp"] == 4


def test_cell_f1_agrees_with_monai_panoptic_counts():
    from monai.metrics import compute_panoptic_quality

    rng = np.random.default_rng(3)
    for _ in range(3):
        gt = M.semantic_to_instances(random_blobs(rng, (64, 64), 2.0, 0.55).astype(np.uint8), connectivity=1)
        pred = M.semantic_to_instances(random_blobs(rng, (64, 64), 2.0, 0.55).astype(np.uint8), connectivity=1)
        # a perturbed copy of gt gives real matches
        pred = np.where(rng.random(gt.shape) < 0.5, gt, pred)
        pred = M.semantic_to_instances((pred > 0).astype(np.uint8), connectivity=1)
        ours = M.cell_f1(pred, gt, iou_threshold=0.5, border_px=0)
        tp, fp, fn, _ = compute_panoptic_quality(torch.from_numpy(pred), torch.from_numpy(gt), remap=True,
                                                 match_iou_threshold=0.5, output_confusion_matrix=True).tolist()
        # MONAI pairs at IoU > 0.5, ours at >= 0.5: equal unless an IoU is exactly 0.5
        iou = M.instance_iou(gt, pred)
        if not np.any(np.isclose(iou, 0.5)):
            assert (ours["tp"], ours["fp"], ours["fn"]) == (int(tp), int(fp), int(fn))
        assert ours["tp"] > 0


def test_remove_border_instances_and_iou():
    inst = np.zeros((10, 10), np.int32)
    inst[0, 4] = 3  # in the band
    inst[1, 1:3] = 5  # in the band (row 1)
    inst[4:6, 4:6] = 8
    inst[2:4, 7] = 2  # column 7 < 10 - 2: inside
    out = M.remove_border_instances(inst, 2)
    assert sorted(np.unique(out)) == [0, 1, 2]
    assert inst[0, 4] == 3  # input unchanged
    iou = M.instance_iou(np.array([[1, 1, 0, 2]]), np.array([[1, 0, 0, 1]]))
    np.testing.assert_allclose(iou, [[1 / 3], [1 / 2]])  # gt 1: 1 of 3 px; gt 2: 1 of 2 px


def test_semantic_to_instances_boundary_handling():
    sem = np.zeros((20, 30), np.uint8)
    sem[5:15, 5:25] = 2  # boundary class around two touching cells
    sem[6:14, 6:14] = 1
    sem[6:14, 16:24] = 1  # interior separated by boundary columns 14..15
    inst = M.semantic_to_instances(sem)
    assert inst.max() == 2
    assert np.all(inst[sem == 2] == 0)  # boundary pixels stay background (official)
    assert (inst == 1).sum() == 64 and (inst == 2).sum() == 64
    grown = M.semantic_to_instances(sem, boundary_label=2)
    assert np.all(grown[sem > 0] > 0) and grown.max() == 2
    diag = np.zeros((6, 6), np.uint8)
    diag[1, 1] = diag[2, 2] = 1
    assert M.semantic_to_instances(diag).max() == 1  # 8-connected by default
    assert M.semantic_to_instances(diag, connectivity=1).max() == 2


# ----------------------------------------------------------------------------------------------------------------------
# BraTS regions
# ----------------------------------------------------------------------------------------------------------------------
def test_brats_regions():
    seg = np.array([[0, 1, 2, 3]])
    r = M.brats_regions(seg)
    assert list(r) == ["WT", "TC", "ET"]
    np.testing.assert_array_equal(r["WT"], [[False, True, True, True]])
    np.testing.assert_array_equal(r["TC"], [[False, True, False, True]])
    np.testing.assert_array_equal(r["ET"], [[False, False, False, True]])
    r21 = M.brats_regions(np.array([[4, 2]]), {"ET": (4,)})
    np.testing.assert_array_equal(r21["ET"], [[True, False]])


# ----------------------------------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------------------------------
def test_paired_comparison_known_sign_and_exact_p():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.5, 0.8, 10)
    a = b + 0.05 + np.linspace(0.001, 0.01, 10)  # every difference positive and distinct
    r = M.paired_comparison(a, b, n_boot=2000, seed=1)
    # exact two-sided Wilcoxon p with all 10 ranks positive: 2 / 2^10
    assert r["p_value"] == pytest.approx(2 / 2 ** 10)
    assert r["mean_diff"] == pytest.approx(np.mean(a - b))
    assert 0 < r["ci_low"] <= r["mean_diff"] <= r["ci_high"]
    s = M.paired_comparison(b, a, n_boot=2000, seed=1)
    assert s["mean_diff"] == pytest.approx(-r["mean_diff"])
    assert s["ci_high"] < 0 and s["p_value"] == pytest.approx(r["p_value"])
    assert M.paired_comparison(a, b, n_boot=2000, seed=1) == r  # seeded


def test_paired_comparison_ci_matches_numpy_bootstrap():
    rng = np.random.default_rng(5)
    a, b = rng.normal(0.7, 0.1, 40), rng.normal(0.68, 0.1, 40)
    r = M.paired_comparison(a, b, n_boot=4000, seed=0)
    d = a - b
    idx = np.random.default_rng(99).integers(0, d.size, (20000, d.size))
    lo, hi = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
    assert r["ci_low"] == pytest.approx(lo, abs=0.006)
    assert r["ci_high"] == pytest.approx(hi, abs=0.006)


def test_paired_comparison_edge_cases():
    assert M.paired_comparison([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])["p_value"] == 1.0
    with pytest.warns(UserWarning, match="NaN"):
        r = M.paired_comparison([0.5, np.nan, 0.7, 0.9], [0.4, 0.6, 0.6, 0.7], n_boot=100)
    assert r["n"] == 3
    with pytest.raises(ValueError, match="paired"):
        M.paired_comparison([1, 2], [1, 2, 3])


def test_holm():
    np.testing.assert_allclose(M.holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan])
    np.testing.assert_allclose(M.holm([0.5, 0.9]), [1.0, 1.0])


def test_compare_methods_table():
    rng = np.random.default_rng(2)
    cases = [f"c{i}" for i in range(12)]
    base = rng.uniform(0.6, 0.8, 12)
    ref = pd.DataFrame({"case": cases, "dice_mean": base})
    better = {c: v + 0.05 + 1e-3 * i for i, (c, v) in enumerate(zip(cases, base))}  # distinct diffs
    worse = pd.DataFrame({"case": cases + ["extra"], "dice_mean": list(base - 0.03 + 1e-4 * np.arange(12)) + [0.1]})
    with pytest.warns(UserWarning, match="dropped"):
        t = M.compare_methods({"nnunet": ref, "xlstm": better, "worse": worse}, "nnunet", "dice_mean", n_boot=500)
    assert list(t.index) == ["nnunet", "xlstm", "worse"]
    assert (t["n"] == 12).all()
    assert t.loc["xlstm", "diff"] == pytest.approx(0.05 + 1e-3 * 5.5)
    assert t.loc["worse", "diff"] == pytest.approx(-0.03 + 1e-4 * 5.5)
    assert t.loc["xlstm", "mean"] == pytest.approx(base.mean() + 0.05 + 1e-3 * 5.5)
    assert t.loc["xlstm", "std"] == pytest.approx((base + 1e-3 * np.arange(12)).std())
    assert bool(t.loc["xlstm", "better"]) and not bool(t.loc["worse", "better"])
    assert math.isnan(t.loc["nnunet", "p_value"])
    assert t.loc["xlstm", "p_holm"] >= t.loc["xlstm", "p_value"]
    with pytest.raises(ValueError, match="reference"):
        M.compare_methods({"a": better}, "b", "dice_mean")
    with pytest.raises(ValueError, match="no column"):
        M.compare_methods({"a": ref}, "a", "nsd_mean")
