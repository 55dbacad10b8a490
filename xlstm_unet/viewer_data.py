"""The slice viewer's data model: cases, what a view shows, and the displayed panels, computed without widgets.

Dims legend:
    C        image channels (modalities, or RGB)
    *spatial (H, W) for 2D cases, (D, H, W) for 3D cases, in array order; nnU-Net's readers give (z, y, x)
    K        number of classes including background (label 0)

Axes of 3D cases: ``axial`` slices array axis 0, ``coronal`` axis 1, ``sagittal`` axis 2 (the names assume nnU-Net's
(z, y, x) array order of an axially acquired volume). Coronal and sagittal slices are flipped so that increasing z
points up. The aspect ratio of every slice comes from the voxel spacing.

Colours come from :func:`xlstm_unet.colors.label_colors`: a label has the same colour here and in every figure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from xlstm_unet.colors import normalize_intensity, overlay_labels
from xlstm_unet.readers import case_files, load_dataset_json, read_image, read_label_map

__all__ = ["IMAGE_PANEL", "GT_PANEL", "ViewAxis", "case_dice", "ViewerCase", "SliceView", "prediction_dir",
           "ViewerData"]

IMAGE_PANEL = "image"
GT_PANEL = "ground truth"


class ViewAxis(str, Enum):
    """Slicing axis of a 3D case: the array axis that is held fixed."""

    AXIAL = "axial"  # array axis 0
    CORONAL = "coronal"  # array axis 1
    SAGITTAL = "sagittal"  # array axis 2

    @property
    def array_axis(self) -> int:
        return {"axial": 0, "coronal": 1, "sagittal": 2}[self.value]


def case_dice(pred: np.ndarray, gt: np.ndarray, labels: Sequence[int] | None = None) -> float:
    """Mean Dice over the foreground labels present in ``pred`` or ``gt`` (labels absent from both are skipped).

    Args:
        pred, gt: (*spatial) integer label maps of the same shape.
        labels: foreground labels to score (default: every label > 0 in either map).
    Returns:
        The mean of :func:`xlstm_unet.metrics.dice` over the scored labels; NaN when no label is present in either
        map (nothing to score).
    """
    from xlstm_unet.metrics import dice

    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match ground truth shape {gt.shape}")
    present = set(np.unique(pred).tolist()) | set(np.unique(gt).tolist())
    cand = [int(k) for k in (labels if labels is not None else sorted(present)) if k > 0 and k in present]
    if not cand:
        return math.nan
    return float(np.mean([dice(pred == k, gt == k) for k in cand]))


@dataclass(frozen=True)
class ViewerCase:
    """One case: the image, its ground truth and each method's prediction.

    Attributes:
        name: case identifier.
        image: (C, *spatial) float image (a single-channel image may be given as (*spatial); it is stored as
            (1, *spatial)).
        gt: (*spatial) integer label map.
        predictions: method name -> (*spatial) integer label map.
        spacing: voxel spacing per spatial axis (array order), or None for unit spacing.
    """

    name: str
    image: np.ndarray
    gt: np.ndarray
    predictions: Mapping[str, np.ndarray] = field(default_factory=dict)
    spacing: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        gt = np.asarray(self.gt)
        img = np.asarray(self.image)
        if gt.ndim not in (2, 3):
            raise ValueError(f"case {self.name!r}: ground truth must be 2D or 3D, got shape {gt.shape}")
        if img.shape == gt.shape:
            img = img[None]  # (1, *spatial)
        if img.ndim != gt.ndim + 1 or img.shape[1:] != gt.shape:
            raise ValueError(
                f"case {self.name!r}: image must be (C, *spatial) or (*spatial) with spatial {gt.shape}, "
                f"got {img.shape}"
            )
        if not np.issubdtype(gt.dtype, np.integer):
            if not np.array_equal(gt, np.round(gt)):
                raise ValueError(f"case {self.name!r}: ground truth has non-integer values")
            gt = gt.astype(np.int64)
        preds = {}
        for method, p in self.predictions.items():
            p = np.asarray(p)
            if p.shape != gt.shape:
                raise ValueError(
                    f"case {self.name!r}, method {method!r}: prediction shape {p.shape} != ground truth {gt.shape}"
                )
            preds[method] = p if np.issubdtype(p.dtype, np.integer) else p.astype(np.int64)
        if self.spacing is not None and len(self.spacing) != gt.ndim:
            raise ValueError(f"case {self.name!r}: spacing {self.spacing} must have {gt.ndim} entries")
        object.__setattr__(self, "image", img)
        object.__setattr__(self, "gt", gt)
        object.__setattr__(self, "predictions", preds)

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.gt.ndim

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.gt.shape)


@dataclass(frozen=True)
class SliceView:
    """What is shown: the case, the axis and slice index (None for 2D), the channel (None = RGB), the aspect."""

    case: str
    axis: ViewAxis | None
    index: int | None
    channel: int | None
    aspect: float


def prediction_dir(method_dir: Path) -> Path | None:
    """A method's predictions: ``<method_dir>/predictions``, else those of its lowest training seed
    (``<method_dir>/seed<k>/predictions``; with several folds, ``fold<f>_seed<k>/``, the first fold's, see
    :mod:`xlstm_unet.experiment`); ``None`` when there are none."""
    method_dir = Path(method_dir)
    if (method_dir / "predictions").is_dir():
        return method_dir / "predictions"
    seeds = [p for p in method_dir.glob("seed*/predictions") if p.is_dir() and p.parent.name[4:].isdigit()]
    if seeds:
        return min(seeds, key=lambda p: int(p.parent.name[4:]))
    runs = [p for p in method_dir.glob("fold*_seed*/predictions") if p.is_dir()]
    return min(runs, key=lambda p: p.parent.name) if runs else None


class ViewerData:
    """Cases to compare, with label names and channel names.

    Build with :meth:`from_arrays` or :meth:`from_results`. Channel images are normalised for display per case and
    channel to the 1-99 percentile of the whole volume (so slices of one case share one window).

    Args:
        cases: the cases (names must be unique).
        labels: label value -> name (default ``{0: "background", k: "label k"}``).
        channel_names: names of the image channels (default ``"0", "1", ...``).
        source: a short description of where the data came from (shown by the viewer).
    """

    def __init__(
        self,
        cases: Sequence[ViewerCase],
        labels: Mapping[int, str] | None = None,
        channel_names: Sequence[str] | None = None,
        source: str = "",
    ) -> None:
        if not cases:
            raise ValueError("ViewerData needs at least one case")
        names = [c.name for c in cases]
        if len(set(names)) != len(names):
            raise ValueError(f"case names must be unique, got {names}")
        nch = {c.image.shape[0] for c in cases}
        if len(nch) != 1:
            raise ValueError(f"all cases must have the same number of channels, got {sorted(nch)}")
        self._cases = {c.name: c for c in cases}
        self.num_channels: int = nch.pop()
        max_label = max(
            int(max([c.gt.max(initial=0)] + [p.max(initial=0) for p in c.predictions.values()])) for c in cases
        )
        lab = {int(k): str(v) for k, v in (labels or {}).items()}
        self.num_classes: int = max(max_label, max(lab, default=0)) + 1
        self.labels: dict[int, str] = {k: lab.get(k, "background" if k == 0 else f"label {k}")
                                       for k in range(self.num_classes)}
        if channel_names is not None and len(channel_names) != self.num_channels:
            raise ValueError(f"expected {self.num_channels} channel names, got {list(channel_names)}")
        self.channel_names: list[str] = (
            list(channel_names) if channel_names is not None else [str(i) for i in range(self.num_channels)]
        )
        self.methods: list[str] = list(dict.fromkeys(m for c in cases for m in c.predictions))
        self.source = source
        self._norm_cache: dict[tuple[str, int], np.ndarray] = {}

    # ---------------------------------------------------------------------------------------------- constructors

    @classmethod
    def from_arrays(
        cls,
        images: Mapping[str, np.ndarray],
        ground_truth: Mapping[str, np.ndarray],
        predictions: Mapping[str, Mapping[str, np.ndarray]] | None = None,
        labels: Mapping[int, str] | None = None,
        channel_names: Sequence[str] | None = None,
        spacing: Mapping[str, Sequence[float]] | None = None,
        source: str = "arrays",
    ) -> ViewerData:
        """Build from arrays keyed by case name.

        Args:
            images: case -> (C, *spatial) or (*spatial) image.
            ground_truth: case -> (*spatial) label map; must have the same keys as ``images``.
            predictions: method -> case -> (*spatial) label map (a method may lack some cases).
            labels, channel_names, source: see :class:`ViewerData`.
            spacing: case -> spacing in array order.
        """
        if set(images) != set(ground_truth):
            raise ValueError(
                f"images and ground_truth must have the same cases, got {sorted(images)} vs {sorted(ground_truth)}"
            )
        predictions = predictions or {}
        for method, per_case in predictions.items():
            extra = set(per_case) - set(images)
            if extra:
                raise ValueError(f"method {method!r} has predictions for unknown cases {sorted(extra)}")
        cases = [
            ViewerCase(
                name=name,
                image=images[name],
                gt=ground_truth[name],
                predictions={m: pc[name] for m, pc in predictions.items() if name in pc},
                spacing=tuple(float(s) for s in spacing[name]) if spacing and name in spacing else None,
            )
            for name in images
        ]
        return cls(cases, labels=labels, channel_names=channel_names, source=source)

    @classmethod
    def from_results(
        cls,
        results_dir: str | os.PathLike,
        raw_dataset_dir: str | os.PathLike,
        methods: Sequence[str] | None = None,
        cases: Sequence[str] | None = None,
        max_cases: int | None = None,
    ) -> ViewerData:
        """Load test cases from the results layout and the nnU-Net raw dataset.

        Args:
            results_dir: ``<results>/<DatasetName>`` with ``<method>/predictions/<case><file_ending>``, or
                with one folder per training seed, ``<method>/seed<k>/predictions/`` (the lowest seed is shown).
            raw_dataset_dir: ``<nnUNet_raw>/<DatasetName>`` with ``dataset.json``, ``imagesTs/<case>_0000<ext>``
                (+ ``_0001``... channels) and ``labelsTs/<case><ext>``.
            methods: methods to load (default: every sub-folder of ``results_dir`` with a ``predictions`` folder).
            cases: case names (default: every case in ``labelsTs`` that has a prediction of some loaded method).
            max_cases: load at most this many cases (sorted by name).
        Files are read with :func:`xlstm_unet.readers.read_image` and :func:`~xlstm_unet.readers.read_label_map`
        (nnU-Net's reader for the dataset's ``file_ending``), so a case is 2D exactly when the evaluator scores it
        as 2D (nnU-Net's dummy axis with its placeholder spacing).
        """
        results_dir, raw_dir = Path(results_dir), Path(raw_dataset_dir)
        ds_json = load_dataset_json(raw_dir)
        if ds_json is None:
            raise ValueError(f"{raw_dir / 'dataset.json'}: not found (expected an nnU-Net raw dataset folder)")
        ending = ds_json.get("file_ending")
        if not ending:
            raise ValueError(f"{raw_dir}: dataset.json has no 'file_ending'")
        if not results_dir.is_dir():
            raise ValueError(f"{results_dir}: results folder not found")
        if methods is None:
            methods = sorted(p.name for p in results_dir.iterdir() if prediction_dir(p) is not None)
        else:
            missing = [m for m in methods if prediction_dir(results_dir / m) is None]
            if missing:
                raise ValueError(f"{results_dir}: no predictions folder for methods {missing}")
        labels_dir = raw_dir / "labelsTs"
        if not labels_dir.is_dir():
            raise ValueError(f"{labels_dir}: not found (ground truth of the test cases)")
        gt_files = case_files(labels_dir, ending)
        pred_files = {m: case_files(prediction_dir(results_dir / m), ending) for m in methods}
        if cases is None:
            with_pred = set().union(*(set(v) for v in pred_files.values())) if pred_files else set(gt_files)
            cases = sorted(c for c in gt_files if c in with_pred)
        else:
            unknown = [c for c in cases if c not in gt_files]
            if unknown:
                raise ValueError(f"{labels_dir}: no ground truth for cases {unknown}")
        cases = list(cases)[: max_cases if max_cases is not None else None]
        if not cases:
            raise ValueError(f"{results_dir}: no test case with both ground truth and a prediction")
        channel_names = [str(v) for _, v in sorted(ds_json.get("channel_names", {}).items(), key=lambda kv: int(kv[0]))]
        out = []
        for case in cases:
            img_files = sorted((raw_dir / "imagesTs").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}"))
            if not img_files:
                raise ValueError(f"{raw_dir / 'imagesTs'}: no image files {case}_XXXX{ending}")
            img, spacing = read_image(img_files)  # (C, *spatial)
            preds = {m: read_label_map(pred_files[m][case])[0] for m in methods if case in pred_files[m]}
            out.append(ViewerCase(case, img, read_label_map(gt_files[case])[0], preds, spacing))
        labels = {}
        for name, val in ds_json.get("labels", {}).items():
            if isinstance(val, int):
                labels[val] = name
        if len(channel_names) != out[0].image.shape[0]:  # e.g. one RGB "channel" entry for a 3-channel PNG
            channel_names = None
        return cls(out, labels=labels, channel_names=channel_names, source=str(results_dir))

    # ---------------------------------------------------------------------------------------------- queries

    @property
    def case_names(self) -> list[str]:
        return list(self._cases)

    def case(self, name: str) -> ViewerCase:
        if name not in self._cases:
            raise ValueError(f"unknown case {name!r}; expected one of {self.case_names}")
        return self._cases[name]

    def label_name(self, k: int) -> str:
        return self.labels.get(int(k), f"label {k}")

    def is_rgb(self) -> bool:
        """Whether the images are 3-channel colour images (shown in colour when no channel is chosen)."""
        return self.num_channels == 3 and all(c.ndim == 2 for c in self._cases.values())

    def default_channel(self) -> int | None:
        """None (colour) for RGB images, else channel 0."""
        return None if self.is_rgb() else 0

    def best_slice(self, case: str, axis: ViewAxis | str) -> int:
        """The slice along ``axis`` with the most ground-truth foreground (the middle one if there is none)."""
        c = self.case(case)
        if c.ndim == 2:
            raise ValueError(f"case {case!r} is 2D; it has no slices")
        ax = ViewAxis(axis).array_axis
        other = tuple(i for i in range(3) if i != ax)
        counts = (c.gt > 0).sum(axis=other)  # (n_slices,)
        return int(np.argmax(counts)) if counts.max() > 0 else c.gt.shape[ax] // 2

    def num_slices(self, case: str, axis: ViewAxis | str) -> int:
        c = self.case(case)
        return 1 if c.ndim == 2 else c.gt.shape[ViewAxis(axis).array_axis]

    def view(self, case: str, axis: ViewAxis | str = ViewAxis.AXIAL, index: int | None = None,
             channel: int | None = None) -> SliceView:
        """Resolve what to show: index defaults to :meth:`best_slice`, channel to :meth:`default_channel`."""
        c = self.case(case)
        if channel is None:
            channel = self.default_channel()
        elif not 0 <= channel < self.num_channels:
            raise ValueError(f"channel must be in [0, {self.num_channels}), got {channel}")
        if c.ndim == 2:
            sp = c.spacing or (1.0, 1.0)
            return SliceView(case, None, None, channel, float(sp[0] / sp[1]))
        ax = ViewAxis(axis)
        n = c.gt.shape[ax.array_axis]
        if index is None:
            index = self.best_slice(case, ax)
        if not 0 <= index < n:
            raise ValueError(f"slice index must be in [0, {n}) for case {case!r} along {ax.value}, got {index}")
        sp = c.spacing or (1.0, 1.0, 1.0)
        rows, cols = (i for i in range(3) if i != ax.array_axis)
        return SliceView(case, ax, int(index), channel, float(sp[rows] / sp[cols]))

    def _take(self, arr: np.ndarray, view: SliceView) -> np.ndarray:
        """(*spatial) -> 2D slice of ``view``; non-axial slices flipped so that axis 0 points up."""
        if view.axis is None:
            return arr
        sl = np.take(arr, view.index, axis=view.axis.array_axis)
        return sl[::-1] if view.axis is not ViewAxis.AXIAL else sl

    def _display_image(self, case: str, view: SliceView) -> np.ndarray:
        """(H, W) grey in [0, 1] for one channel, or (H, W, 3) for colour."""
        c = self.case(case)
        chans = range(self.num_channels) if view.channel is None else [view.channel]
        planes = []
        for ch in chans:
            key = (case, ch)
            if key not in self._norm_cache:
                self._norm_cache[key] = normalize_intensity(c.image[ch])
            planes.append(self._take(self._norm_cache[key], view))
        return planes[0] if len(planes) == 1 else np.stack(planes, axis=-1)

    def slices(self, case: str, view: SliceView, methods: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The raw 2D arrays of one view: ``image`` (raw intensities of the channel; (H, W, C) when
        ``view.channel`` is None), ``ground truth`` and each method's prediction (methods the case lacks are
        left out)."""
        c = self.case(case)
        if view.channel is None:
            img = np.moveaxis(np.stack([self._take(ch, view) for ch in c.image]), 0, -1)  # (H, W, C)
        else:
            img = self._take(c.image[view.channel], view)
        out = {IMAGE_PANEL: img, GT_PANEL: self._take(c.gt, view)}
        for m in methods if methods is not None else self.methods:
            if m in c.predictions:
                out[m] = self._take(c.predictions[m], view)
        return out

    def panels(self, case: str, view: SliceView, methods: Sequence[str] | None = None,
               opacity: float = 0.5) -> dict[str, np.ndarray]:
        """The displayed RGB panels, each (H, W, 3) in [0, 1]: the image, then the ground truth and each method
        blended over it with the shared label colours. A method without a prediction for this case is shown as
        the bare image."""
        methods = list(methods) if methods is not None else self.methods
        raw = self.slices(case, view, methods)
        base = self._display_image(case, view)
        out = {IMAGE_PANEL: overlay_labels(base, None)}
        for name in [GT_PANEL, *methods]:
            out[name] = overlay_labels(base, raw.get(name), opacity, self.num_classes)
        return out

    def dice(self, case: str, method: str) -> float:
        """Mean Dice of ``method`` on the whole case (all slices); NaN if the case has no prediction of it."""
        c = self.case(case)
        if method not in c.predictions:
            return math.nan
        return case_dice(c.predictions[method], c.gt)
