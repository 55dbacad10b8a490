"""The shared label colours: label ``k`` has the same colour in every figure and in the slice viewer.

Background (label 0) is never drawn. :func:`overlay_labels` blends a label map over a 2D image with these colours;
:func:`normalize_intensity` windows an image for display.
"""

from __future__ import annotations

import numpy as np

__all__ = ["label_colors", "label_colormap", "normalize_intensity", "overlay_labels"]


# Fixed palette for labels 1, 2, 3, ... (matplotlib's tab10 order with red first, which reads best on MRI).
_PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.839, 0.153, 0.157),  # 1 red
    (0.173, 0.627, 0.173),  # 2 green
    (0.122, 0.467, 0.706),  # 3 blue
    (1.000, 0.498, 0.055),  # 4 orange
    (0.580, 0.404, 0.741),  # 5 purple
    (0.090, 0.745, 0.812),  # 6 cyan
    (0.890, 0.467, 0.761),  # 7 pink
    (0.737, 0.741, 0.133),  # 8 olive
    (0.549, 0.337, 0.294),  # 9 brown
    (0.498, 0.498, 0.498),  # 10 grey
)


def label_colors(num_classes: int) -> np.ndarray:
    """RGB colours for labels ``0 .. num_classes-1``; label k has the same colour for every ``num_classes``.

    Returns:
        (num_classes, 3) float array in [0, 1]. Row 0 (background) is black and is never drawn by
        :func:`overlay_labels`. Labels beyond the 10-colour palette get evenly spaced hues.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    import matplotlib.colors as mcolors

    out = np.zeros((num_classes, 3), dtype=np.float64)
    for k in range(1, num_classes):
        if k <= len(_PALETTE):
            out[k] = _PALETTE[k - 1]
        else:  # golden-ratio hue steps: distinct and stable for any k
            hue = ((k - len(_PALETTE)) * 0.618033988749895) % 1.0
            out[k] = mcolors.hsv_to_rgb((hue, 0.75, 0.95))
    return out


def label_colormap(num_classes: int):
    """A matplotlib ``ListedColormap`` for label maps: background transparent, label k = ``label_colors[k]``.

    Use with ``imshow(labels, cmap=label_colormap(n), vmin=0, vmax=n - 1, interpolation="nearest")``.
    """
    from matplotlib.colors import ListedColormap

    rgba = np.concatenate([label_colors(num_classes), np.ones((num_classes, 1))], axis=1)
    rgba[0, 3] = 0.0
    return ListedColormap(rgba, name=f"xlstm_unet_labels_{num_classes}")


def normalize_intensity(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Scale intensities to [0, 1] by the ``low``/``high`` percentiles (clipped); a constant image maps to 0.

    Args:
        image: any shape; finite values are used for the percentiles.
        low, high: percentiles, ``0 <= low < high <= 100``.
    Returns:
        float32 array, same shape.
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"expected 0 <= low < high <= 100, got low={low}, high={high}")
    arr = np.asarray(image, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return np.zeros(arr.shape, dtype=np.float32)
    lo, hi = np.percentile(finite, [low, high])
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return np.clip((np.nan_to_num(arr, nan=lo) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def overlay_labels(
    image: np.ndarray, labels: np.ndarray | None, opacity: float = 0.5, num_classes: int | None = None
) -> np.ndarray:
    """Blend a label map over a 2D image with the shared colours.

    Args:
        image: (H, W) grey values in [0, 1], or (H, W, 3) RGB in [0, 1].
        labels: (H, W) integer labels (0 = background, left uncoloured), or None for the image alone.
        opacity: weight of the label colour, in [0, 1].
        num_classes: colours to prepare (default ``labels.max() + 1``).
    Returns:
        (H, W, 3) float64 RGB in [0, 1]: ``(1 - opacity) * image + opacity * colour`` where ``labels > 0``.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        rgb = np.repeat(img[..., None], 3, axis=-1)  # (H, W, 3)
    elif img.ndim == 3 and img.shape[-1] == 3:
        rgb = img.copy()
    else:
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {img.shape}")
    if labels is None:
        return rgb
    lab = np.asarray(labels)
    if lab.shape != rgb.shape[:2]:
        raise ValueError(f"labels shape {lab.shape} does not match image shape {rgb.shape[:2]}")
    if lab.size and lab.min() < 0:
        raise ValueError(f"labels must be >= 0, got minimum {lab.min()}")
    lab = lab.astype(np.int64)
    n = int(num_classes) if num_classes is not None else int(lab.max(initial=0)) + 1
    if lab.size and lab.max() >= n:
        raise ValueError(f"label {lab.max()} out of range for num_classes={n}")
    colours = label_colors(max(n, 1))[lab]  # (H, W, 3)
    fg = (lab > 0)[..., None]
    return np.where(fg, (1.0 - opacity) * rgb + opacity * colours, rgb)
