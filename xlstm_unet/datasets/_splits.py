"""Seeded train/test splits, and the cell protocol's training targets and intensity normalisation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["seeded_split", "seeded_group_split", "instances_to_3class", "percentile_to_uint8"]


def seeded_split(ids: Sequence[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded shuffle of ``ids`` (sorted first), then the first ``round(n * test_fraction)`` are test.

    ``test_fraction=0`` puts every case in train, ``1`` every case in test (e.g. new cases to predict); in between,
    train and test get at least one case each. Returns ``(train, test)``, each sorted.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}: use a fraction such as 0.2, "
                         f"0 (all cases train) or 1 (all cases test)")
    ids = sorted(ids)
    if test_fraction in (0.0, 1.0):
        return (ids, []) if test_fraction == 0.0 else ([], ids)
    if len(ids) < 2:
        raise ValueError(f"need at least 2 cases to split into train and test, got {len(ids)}: add cases, or pass "
                         f"test_fraction=0 (all train) or test_fraction=1 (all test, e.g. to predict new cases)")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_test = min(max(1, int(round(len(ids) * test_fraction))), len(ids) - 1)
    test = sorted(ids[i] for i in order[:n_test])
    train = sorted(ids[i] for i in order[n_test:])
    return train, test


def seeded_group_split(groups: Mapping[str, Sequence[str]], n_test_groups: int, seed: int, *,
                       option: str = "n_test_groups") -> tuple[list[str], list[str]]:
    """Split whole groups (e.g. patients) into train/test: ``n_test_groups`` seeded-random groups go to test.

    ``n_test_groups=0`` puts every group in train, ``len(groups)`` every group in test (e.g. a new patient to
    predict). ``option`` is the converter's name for ``n_test_groups`` in error messages (``n_test_patients``).
    Returns ``(train, test)`` case ids, each sorted.
    """
    names = sorted(groups)
    if not 0 <= n_test_groups <= len(names):
        raise ValueError(f"{option} must be in [0, {len(names)}] for {len(names)} groups, got {n_test_groups}: "
                         f"use 0 (all train), {len(names)} (all test) or a number in between")
    order = np.random.default_rng(seed).permutation(len(names))
    test_groups = {names[i] for i in order[:n_test_groups]}
    test = sorted(c for g in test_groups for c in groups[g])
    train = sorted(c for g in names if g not in test_groups for c in groups[g])
    return train, test


def instances_to_3class(instances: np.ndarray, min_interior_size: int = 16) -> np.ndarray:
    """Instance map -> 3-class semantic map (0 background, 1 interior, 2 boundary), the cell protocol's rule.

    boundary = inner boundaries of the instances (``skimage.segmentation.find_boundaries(mode="inner")``), dilated
    by a radius-1 disk; interior = instance pixels that are not boundary, with connected pieces under
    ``min_interior_size`` px removed (``skimage.morphology.remove_small_objects``). The dilation lets the boundary
    class reach one pixel into the background, as in the reference rule.

    Args:
        instances: ``(H, W)`` integer instance ids, 0 = background.
    Returns:
        ``(H, W)`` uint8 in {0, 1, 2}.
    """
    from skimage import morphology, segmentation

    if instances.ndim != 2:
        raise ValueError(f"expected a 2D instance map (H, W), got shape {instances.shape}")
    boundary = segmentation.find_boundaries(instances, mode="inner")
    boundary = morphology.dilation(boundary, morphology.disk(1))
    interior = (instances > 0) & ~boundary
    interior = morphology.remove_small_objects(interior, max_size=min_interior_size - 1) \
        if _rso_has_max_size() else morphology.remove_small_objects(interior, min_size=min_interior_size)
    out = np.zeros(instances.shape, dtype=np.uint8)
    out[interior] = 1
    out[boundary] = 2
    return out


def _rso_has_max_size() -> bool:
    import inspect

    from skimage import morphology

    return "max_size" in inspect.signature(morphology.remove_small_objects).parameters


def percentile_to_uint8(image: np.ndarray, lower: float = 1.0, upper: float = 99.0, *,
                        nonzero: bool = True) -> np.ndarray:
    """Per-channel percentile normalisation to uint8 (the cell protocol): clip to [p_lower, p_upper], scale to 0-255.

    With ``nonzero`` (default, as the NeurIPS 2022 cell baseline) the percentiles are taken over the channel's
    non-zero pixels, so a large zero background does not pull them down. A channel that is all zero, or whose
    percentile range is below 1e-3, is returned as 0.

    Args:
        image: ``(H, W)`` or ``(H, W, C)``, any real dtype.
    Returns:
        uint8 array of the same shape (values rounded to the nearest integer).
    """
    img = np.asarray(image, dtype=np.float64)
    chans = img[..., None] if img.ndim == 2 else img
    out = np.zeros(chans.shape, dtype=np.uint8)
    for c in range(chans.shape[-1]):
        ch = chans[..., c]
        vals = ch[ch != 0] if nonzero else ch.ravel()
        if vals.size == 0:
            continue
        lo, hi = np.percentile(vals, [lower, upper])
        if hi - lo > 1e-3:
            out[..., c] = np.round(np.clip((ch - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
    return out[..., 0] if img.ndim == 2 else out
