"""Shared machinery of the dataset converters: case plans, validation, deterministic writers, atomic output.

A converter module builds a :class:`DatasetPlan` (dataset metadata + one :class:`CasePlan` per case, each with a
``load`` callable) and hands it to :func:`write_dataset`, which

1. validates the plan as a whole before anything is written (empty dataset, duplicate or malformed case ids,
   label declaration), after the converter itself checked its folders, modalities and headers;
2. loads each case, validates its content (shapes, spacing/affine, label values, NaN, dtype) and writes it into a
   temporary folder next to the destination (``<out_root>/.<DatasetXXX_Name>.partial-<random>``);
3. writes ``dataset.json`` and ``split.json`` and renames the temporary folder into place. Any error removes the
   temporary folder, so a failed conversion leaves nothing behind; sources are only ever read.

Output layout (nnU-Net v2 raw format)::

    DatasetXXX_Name/
      imagesTr/<case>_<CCCC><ending>   one file per channel (an RGB PNG is one file holding channels R, G, B)
      labelsTr/<case><ending>
      imagesTs/<case>_<CCCC><ending>
      labelsTs/<case><ending>          test labels, for evaluation only
      labelsTs_instances/<case>.png    cell datasets only: uint16 instance ids of the test images (0 = background)
      dataset.json                     nnU-Net keys + "xlstm_unet": {"protocol", "synthetic", "source", ...}
      split.json                       {"seed", "train", "test", ...}

Array conventions: 2D images are ``(H, W)`` (grey) or ``(H, W, 3)`` (RGB), labels ``(H, W)``; 3D arrays are in
NIfTI voxel order ``(X, Y, Z)`` with a 4x4 voxel-to-world ``affine`` in millimetres (nnU-Net's SimpleITK reader
turns them into ``(Z, Y, X)``). 2D PNG files carry no spacing; nnU-Net uses ``(999, 1, 1)`` for them.

Determinism: PNG is written with Pillow (no time chunks), NIfTI with nibabel (gzip header mtime 0), JSON with fixed
key order, so converting the same input twice gives byte-identical folders.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "DatasetFormatError",
    "Protocol",
    "Subset",
    "CaseData",
    "CasePlan",
    "DatasetPlan",
    "DatasetInfo",
    "write_dataset",
    "convert_with",
    "read_image_2d",
    "write_array",
    "load_nifti",
    "load_nifti_case",
    "nifti_header_geometry",
    "check_same_geometry",
    "require_dir",
    "require_file",
    "pair_files",
    "limit_cases",
    "seeded_split",
    "seeded_group_split",
    "instances_to_3class",
    "percentile_to_uint8",
    "IMAGE_SUFFIXES_2D",
]

logger = logging.getLogger(__name__)

Subset = Literal["train", "test"]

#: 2D file endings the readers accept (``.jpg`` only as a *source*: nnU-Net refuses lossy outputs).
IMAGE_SUFFIXES_2D: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")

_SUBSET_DIRS: dict[str, tuple[str, str]] = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
_INSTANCES_DIR = "labelsTs_instances"


class Protocol(str, Enum):
    """Evaluation protocol the evaluator applies to a converted dataset (``dataset.json["xlstm_unet"]["protocol"]``).

    ``generic``: per-case DSC/NSD per label; ``abdomen``: AMOS/U-Mamba DSC+NSD with organ tolerances;
    ``endoscopy``: per-image DSC+NSD over labels present; ``cells``: instance F1 from the interior class;
    ``brats``: WT/TC/ET Dice and HD95.
    """

    GENERIC = "generic"
    ABDOMEN = "abdomen"
    ENDOSCOPY = "endoscopy"
    CELLS = "cells"
    BRATS = "brats"


class DatasetFormatError(ValueError):
    """Bad input data; the message names the offending file or folder (also in :attr:`path`)."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{problem}")


@dataclass(frozen=True)
class CaseData:
    """The arrays of one case, as loaded by a converter.

    Attributes:
        channels: 2D: each ``(H, W)`` grey or ``(H, W, 3)`` RGB, dtype uint8/uint16 for PNG output (any real
            dtype for ``.tif``); 3D: each ``(X, Y, Z)``, any real dtype.
        label: ``(H, W)`` or ``(X, Y, Z)`` integer-valued semantic labels.
        affine: 3D only: ``(4, 4)`` voxel-to-world matrix in mm shared by all channels and the label.
        instances: cell datasets, test cases: ``(H, W)`` instance ids (0 = background).
        channel_files: source file of each channel (for error messages); may be empty for synthetic data.
        label_file: source file of the label (for error messages).
        copy_channels: 3D only: write each channel as a byte copy of its ``.nii.gz`` source file (keeps the
            source header exactly and skips re-compression); the arrays are still validated.
        copy_label: the same for the label (only when the label array is the unmodified source content).
    """

    channels: tuple[np.ndarray, ...]
    label: np.ndarray
    affine: np.ndarray | None = None
    instances: np.ndarray | None = None
    channel_files: tuple[Path, ...] = ()
    label_file: Path | None = None
    copy_channels: bool = False
    copy_label: bool = False


@dataclass(frozen=True)
class CasePlan:
    """One case to convert: its id, subset, source files and a loader that returns its :class:`CaseData`."""

    case_id: str
    subset: Subset
    load: Callable[[], CaseData]
    files: tuple[Path, ...] = ()
    group: str | None = None  # e.g. the patient of a study; split.json records it


@dataclass(frozen=True)
class DatasetPlan:
    """Everything :func:`write_dataset` needs to write one nnU-Net raw dataset.

    ``labels`` follows nnU-Net v2: ``{"background": 0, "name": int, ...}`` or, for region-based training,
    ``{"background": 0, "region": [int, ...], ...}`` together with ``regions_class_order``.
    """

    name: str
    description: str
    channel_names: dict[str, str]
    labels: dict[str, int | list[int]]
    file_ending: Literal[".png", ".tif", ".nii.gz"]
    protocol: Protocol
    synthetic: bool
    source: str
    seed: int
    cases: tuple[CasePlan, ...]
    dims: Literal[2, 3]
    regions_class_order: tuple[int, ...] | None = None
    reference: str = ""
    licence: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)  # merged into dataset.json["xlstm_unet"]
    split_extra: Mapping[str, Any] = field(default_factory=dict)  # merged into split.json
    folder_name: str | None = None  # overrides DatasetInfo.folder_name (generic datasets)

    @property
    def label_values(self) -> tuple[int, ...]:
        """All label values a label file may contain (background and every class / region member)."""
        vals: set[int] = set()
        for v in self.labels.values():
            vals.update([v] if isinstance(v, int) else v)
        return tuple(sorted(vals))


@dataclass(frozen=True)
class DatasetInfo:
    """A registry entry: how to build one dataset and where its output goes.

    ``build(source, *, seed, **options) -> DatasetPlan``; ``source`` is ``None`` for built-in (synthetic) sets.
    """

    name: str
    default_id: int
    folder_name: str
    protocol: Protocol
    summary: str
    build: Callable[..., DatasetPlan]
    needs_source: bool = True
    shared_subdir: str | None = None
    download: str = ""
    raw_layout: str = ""


# ----------------------------------------------------------------------------------------------------------------
# reading (errors always name the file)


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a folder, else raise :class:`DatasetFormatError` naming it."""
    if not path.is_dir():
        raise DatasetFormatError(path, f"missing folder ({what})")
    return path


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise :class:`DatasetFormatError` naming it."""
    if not path.is_file():
        raise DatasetFormatError(path, f"missing file ({what})")
    return path


def _stem(path: Path, suffixes: Sequence[str]) -> str | None:
    name = path.name
    for suf in sorted(suffixes, key=len, reverse=True):
        if name.lower().endswith(suf.lower()):
            return name[: -len(suf)]
    return None


def pair_files(images_dir: Path, labels_dir: Path, image_suffixes: Sequence[str] = IMAGE_SUFFIXES_2D,
               label_suffixes: Sequence[str] = IMAGE_SUFFIXES_2D, *,
               image_suffix_strip: str = "") -> dict[str, tuple[Path, Path]]:
    """Pair ``images_dir/<id><suffix>`` with ``labels_dir/<id><suffix>``; returns ``{id: (image, label)}``, sorted.

    ``image_suffix_strip`` is removed from the image stem first (e.g. ``"_0000"``). Hidden files are ignored.

    Raises:
        DatasetFormatError: missing folder, empty folder, two files with the same id (duplicate case id), an image
            without a label or a label without an image (each naming the file).
    """
    require_dir(images_dir, "images")
    require_dir(labels_dir, "labels")

    def index(folder: Path, suffixes: Sequence[str], strip: str) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if p.name.startswith(".") or not p.is_file():
                continue
            stem = _stem(p, suffixes)
            if stem is None:
                continue
            if strip and stem.endswith(strip):
                stem = stem[: -len(strip)]
            if stem in out:
                raise DatasetFormatError(p, f"duplicate case id {stem!r} (also {out[stem].name})")
            out[stem] = p
        return out

    images = index(images_dir, image_suffixes, image_suffix_strip)
    labels = index(labels_dir, label_suffixes, "")
    if not images:
        raise DatasetFormatError(images_dir, f"empty dataset: no image files ({', '.join(image_suffixes)})")
    for cid, p in images.items():
        if cid not in labels:
            raise DatasetFormatError(p, f"no label for this image (expected {labels_dir}/{cid}<"
                                        f"{'|'.join(label_suffixes)}>)")
    for cid, p in labels.items():
        if cid not in images:
            raise DatasetFormatError(p, f"label without an image (expected {images_dir}/{cid}{image_suffix_strip}<"
                                        f"{'|'.join(image_suffixes)}>)")
    return {cid: (images[cid], labels[cid]) for cid in sorted(images)}


def limit_cases(ids: Sequence[str], max_cases: int | None) -> list[str]:
    """The first ``max_cases`` of the sorted ``ids`` (all when ``None``), for quick runs and tests."""
    ids = sorted(ids)
    if max_cases is None:
        return ids
    if max_cases < 1:
        raise ValueError(f"max_cases must be >= 1, got {max_cases}: pass a positive number, or None for all cases")
    return ids[:max_cases]


def read_image_2d(path: Path) -> np.ndarray:
    """Read a 2D image file: ``(H, W)`` or ``(H, W, C)`` in its stored dtype (TIFF via tifffile, others Pillow).

    Raises :class:`DatasetFormatError` naming the file when it is missing, unreadable or not 2D.
    """
    path = Path(path)
    require_file(path, "image")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode in ("P", "PA"):
                    im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
                arr = np.asarray(im)
    except Exception as err:  # noqa: BLE001 - any decoder failure is a corrupt file for the user
        raise DatasetFormatError(path, f"unreadable or corrupt image ({type(err).__name__}: {err})") from err
    if arr.ndim == 3 and arr.shape[-1] == 4:  # RGBA: drop an opaque alpha channel
        if np.all(arr[..., 3] == arr[..., 3].max()):
            arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise DatasetFormatError(path, f"expected a 2D grey (H, W) or colour (H, W, 3) image, got shape {arr.shape}")
    return arr


def load_nifti(path: Path):
    """Open a NIfTI file with nibabel (header only); errors name the file."""
    import nibabel as nib

    path = Path(path)
    require_file(path, "NIfTI volume")
    try:
        img = nib.load(str(path))
    except Exception as err:  # noqa: BLE001
        raise DatasetFormatError(path, f"unreadable or corrupt NIfTI ({type(err).__name__}: {err})") from err
    if len(img.shape) != 3:
        raise DatasetFormatError(path, f"expected a 3D volume (X, Y, Z), got shape {tuple(img.shape)}")
    return img


def _nifti_array(img, path: Path) -> np.ndarray:
    try:
        return np.asanyarray(img.dataobj)
    except Exception as err:  # noqa: BLE001 - truncated gzip, short file, ...
        raise DatasetFormatError(path, f"unreadable or corrupt NIfTI data ({type(err).__name__}: {err})") from err


def nifti_header_geometry(img) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """``(shape, spacing)`` of a nibabel image from its header (no data read)."""
    return tuple(int(s) for s in img.shape), tuple(float(z) for z in img.header.get_zooms()[:3])


def check_same_geometry(ref_path: Path, ref_img, path: Path, img, *, spacing_rtol: float = 1e-4) -> None:
    """Raise :class:`DatasetFormatError` naming ``path`` when its shape or spacing differs from ``ref_path``'s."""
    shape_r, sp_r = nifti_header_geometry(ref_img)
    shape, sp = nifti_header_geometry(img)
    if shape != shape_r:
        raise DatasetFormatError(path, f"shape mismatch: expected {shape_r} (as {Path(ref_path).name}), got {shape}")
    if not np.allclose(sp, sp_r, rtol=spacing_rtol, atol=1e-5):
        raise DatasetFormatError(path, f"spacing mismatch: expected {sp_r} mm (as {Path(ref_path).name}), got {sp}")
    if not np.allclose(img.affine, ref_img.affine, atol=1e-3):
        warnings.warn(f"{path}: origin/direction differ from {Path(ref_path).name} (same shape and spacing); "
                      f"the label's geometry is used for all channels", stacklevel=2)


def check_modality_files(channels: Mapping[str, Path], seg: Path, owner: str) -> tuple[list[Path], Path]:
    """Check a multi-modal NIfTI case: every modality file and the segmentation exist, and every modality has the
    segmentation's geometry. ``owner`` names the case in messages (``"case BraTS-GLI-00000-000"``).

    Returns ``(channel files in the given order, seg)``; raises :class:`DatasetFormatError` naming the file.
    """
    for name, path in [*channels.items(), ("seg", seg)]:
        if not path.is_file():
            raise DatasetFormatError(path, f"missing modality {name!r} of {owner}")
    seg_img = load_nifti(seg)
    for path in channels.values():
        check_same_geometry(seg, seg_img, path, load_nifti(path))
    return list(channels.values()), seg


def load_nifti_case(channel_files: Sequence[Path], label_file: Path, *, copy: bool = True) -> CaseData:
    """Load a 3D case: channels and label must share shape and spacing (the label's affine is kept).

    Returns :class:`CaseData` with channels ``(X, Y, Z)`` in their stored dtype and the label's affine; with
    ``copy`` (default) the ``.nii.gz`` sources are written as byte copies (see :class:`CaseData`).
    """
    label_img = load_nifti(label_file)
    imgs = [load_nifti(p) for p in channel_files]
    for p, img in zip(channel_files, imgs):
        check_same_geometry(label_file, label_img, p, img)
    channels = tuple(_nifti_array(img, p) for p, img in zip(channel_files, imgs))
    label = _nifti_array(label_img, label_file)
    gz = all(str(p).endswith(".nii.gz") for p in [*channel_files, label_file])
    return CaseData(channels=channels, label=label, affine=np.asarray(label_img.affine, dtype=np.float64),
                    channel_files=tuple(Path(p) for p in channel_files), label_file=Path(label_file),
                    copy_channels=copy and gz, copy_label=copy and gz)


# ----------------------------------------------------------------------------------------------------------------
# splits and cell targets


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


# ----------------------------------------------------------------------------------------------------------------
# validation and writing


def _check_case_id(case: CasePlan) -> None:
    cid = case.case_id
    if not cid or any(ch in cid for ch in "/\\ \t\n") or cid.startswith("."):
        where = case.files[0] if case.files else None
        raise DatasetFormatError(where, f"invalid case id {cid!r} (no spaces, slashes or leading dot)")


def _validate_plan(plan: DatasetPlan) -> None:
    if not plan.cases:
        raise DatasetFormatError(None, f"empty dataset {plan.name!r}: no cases found")
    seen: dict[str, CasePlan] = {}
    for case in plan.cases:
        _check_case_id(case)
        if case.subset not in _SUBSET_DIRS:
            raise ValueError(f"case {case.case_id!r}: subset must be 'train' or 'test', got {case.subset!r}")
        if case.case_id in seen:
            first, second = seen[case.case_id], case
            a = first.files[0] if first.files else first.case_id
            b = second.files[0] if second.files else second.case_id
            raise DatasetFormatError(b, f"duplicate case id {case.case_id!r} (also from {a})")
        seen[case.case_id] = case
    if not any(c.subset == "train" for c in plan.cases):
        warnings.warn(f"dataset {plan.name!r} has no training cases; its images can be predicted, not trained on",
                      stacklevel=3)
    if not any(c.subset == "test" for c in plan.cases):
        warnings.warn(f"dataset {plan.name!r} has no test cases; evaluation will have nothing to score", stacklevel=3)
    if plan.labels.get("background") != 0:
        raise ValueError(f"labels must map 'background' to 0, got {plan.labels!r}")


def _n_channels(arr: np.ndarray, dims: int) -> int:
    return arr.shape[-1] if (dims == 2 and arr.ndim == 3) else 1


def _validate_case(plan: DatasetPlan, case: CasePlan, data: CaseData) -> None:
    files = data.channel_files or case.files
    label_file = data.label_file or (case.files[-1] if case.files else None)
    name = f"case {case.case_id!r}"
    if not data.channels:
        raise DatasetFormatError(files[0] if files else None, f"{name}: no image channels")
    n_ch = sum(_n_channels(c, plan.dims) for c in data.channels)
    if n_ch != len(plan.channel_names):
        raise DatasetFormatError(files[0] if files else None,
                                 f"{name}: expected {len(plan.channel_names)} channels "
                                 f"({', '.join(plan.channel_names.values())}), got {n_ch}")
    if data.label.ndim != plan.dims:
        raise DatasetFormatError(label_file, f"{name}: expected a {plan.dims}D label, got shape {data.label.shape}")
    for i, ch in enumerate(data.channels):
        f = files[i] if i < len(files) else None
        spatial = ch.shape[:plan.dims]
        if spatial != data.label.shape:
            raise DatasetFormatError(f, f"{name}: image/label shape mismatch: image {spatial}, label "
                                        f"{data.label.shape} ({label_file})")
        if not (np.issubdtype(ch.dtype, np.integer) or np.issubdtype(ch.dtype, np.floating)):
            raise DatasetFormatError(f, f"{name}: unsupported image dtype {ch.dtype}")
        if np.issubdtype(ch.dtype, np.floating) and not np.all(np.isfinite(ch)):
            raise DatasetFormatError(f, f"{name}: image contains NaN or infinite intensities")
        if plan.file_ending == ".png" and ch.dtype not in (np.uint8, np.uint16):
            raise DatasetFormatError(f, f"{name}: PNG output needs uint8/uint16 images, got {ch.dtype}")
    lab = data.label
    if np.issubdtype(lab.dtype, np.floating):
        if not np.all(np.isfinite(lab)):
            raise DatasetFormatError(label_file, f"{name}: label contains NaN or infinite values")
        if not np.all(lab == np.round(lab)):
            raise DatasetFormatError(label_file, f"{name}: label contains non-integer values")
    elif not np.issubdtype(lab.dtype, np.integer) and lab.dtype != bool:
        raise DatasetFormatError(label_file, f"{name}: unsupported label dtype {lab.dtype}")
    allowed = np.asarray(plan.label_values)
    bad = ~np.isin(lab, allowed)
    if bad.any():
        found = np.unique(lab[bad])[:10].tolist()
        raise DatasetFormatError(label_file, f"{name}: label values {found} outside the declared set "
                                             f"{allowed.tolist()}")
    if plan.dims == 3:
        if data.affine is None or data.affine.shape != (4, 4) or not np.all(np.isfinite(data.affine)):
            raise DatasetFormatError(label_file, f"{name}: 3D cases need a finite (4, 4) affine")
    if data.copy_channels and len(data.channel_files) != len(data.channels):
        raise ValueError(f"{name}: copy_channels needs one source file per channel")
    if data.instances is not None and data.instances.shape != lab.shape:
        raise DatasetFormatError(label_file, f"{name}: instance map shape {data.instances.shape} != label "
                                             f"shape {lab.shape}")


def _label_dtype(max_value: int) -> np.dtype:
    return np.dtype(np.uint8) if max_value < 256 else np.dtype(np.uint16)


def _write_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    arr = np.ascontiguousarray(arr)
    if arr.dtype == np.uint16 and arr.ndim != 2:
        raise ValueError(f"{path}: 16-bit PNG must be grey (H, W), got shape {arr.shape}")
    Image.fromarray(arr).save(path, format="PNG", compress_level=1)


def _write_tif(path: Path, arr: np.ndarray) -> None:
    import tifffile

    tifffile.imwrite(path, np.ascontiguousarray(arr), compression="zlib", software=None, datetime=None,
                     metadata=None)


def _write_nifti(path: Path, arr: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(arr), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def write_array(path: Path, arr: np.ndarray, ending: str, affine: np.ndarray | None = None) -> None:
    """Write an image or label the way the converters do: PNG (Pillow), TIFF (tifffile) or NIfTI (nibabel, needs
    ``affine``). 2D arrays are ``(H, W)`` or ``(H, W, 3)``, 3D arrays ``(X, Y, Z)``."""
    if ending == ".png":
        _write_png(path, arr)
    elif ending == ".tif":
        _write_tif(path, arr)
    elif ending == ".nii.gz":
        if affine is None:
            raise ValueError(f"{path}: NIfTI output needs a (4, 4) affine")
        _write_nifti(path, arr, affine)
    else:  # pragma: no cover - Literal type
        raise ValueError(f"unsupported file ending {ending!r}")


def _write_case(root: Path, plan: DatasetPlan, case: CasePlan, data: CaseData) -> None:
    img_dir, lab_dir = (root / d for d in _SUBSET_DIRS[case.subset])
    ending = plan.file_ending
    copy_ok = ending == ".nii.gz"
    for i, ch in enumerate(data.channels):
        dest = img_dir / f"{case.case_id}_{i:04d}{ending}"
        if copy_ok and data.copy_channels and str(data.channel_files[i]).endswith(ending):
            shutil.copyfile(data.channel_files[i], dest)
        else:
            write_array(dest, ch, ending, data.affine)
    dest = lab_dir / f"{case.case_id}{ending}"
    if copy_ok and data.copy_label and data.label_file is not None and str(data.label_file).endswith(ending):
        shutil.copyfile(data.label_file, dest)
    else:
        lab = data.label.astype(_label_dtype(max(plan.label_values)), copy=False)
        write_array(dest, lab, ending, data.affine)
    if data.instances is not None and case.subset == "test":
        inst = data.instances
        if int(inst.max(initial=0)) > np.iinfo(np.uint16).max or int(inst.min(initial=0)) < 0:
            raise DatasetFormatError(data.label_file, f"case {case.case_id!r}: instance ids must fit uint16")
        _write_png(root / _INSTANCES_DIR / f"{case.case_id}.png", inst.astype(np.uint16))


def _dump_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _dataset_json(plan: DatasetPlan, info: DatasetInfo | None, dataset_id: int | None) -> dict[str, Any]:
    n_train = sum(c.subset == "train" for c in plan.cases)
    n_test = sum(c.subset == "test" for c in plan.cases)
    out: dict[str, Any] = {
        "name": plan.name,
        "description": plan.description,
        "reference": plan.reference,
        "licence": plan.licence,
        "channel_names": dict(plan.channel_names),
        "labels": {k: (v if isinstance(v, int) else list(v)) for k, v in plan.labels.items()},
        "numTraining": n_train,
        "file_ending": plan.file_ending,
    }
    if plan.regions_class_order is not None:
        out["regions_class_order"] = list(plan.regions_class_order)
    meta: dict[str, Any] = {
        "protocol": plan.protocol.value,
        "synthetic": plan.synthetic,
        "source": plan.source,
        "converter": info.name if info is not None else None,
        "dataset_id": dataset_id,
        "dims": plan.dims,
        "numTest": n_test,
        "seed": plan.seed,
        "test_labels": "labelsTs",
    }
    if any(c.subset == "test" for c in plan.cases) and plan.protocol is Protocol.CELLS:
        meta["test_instances"] = _INSTANCES_DIR
    meta.update(plan.extra)
    out["xlstm_unet"] = meta
    return out


def _split_json(plan: DatasetPlan) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seed": plan.seed,
        "train": sorted(c.case_id for c in plan.cases if c.subset == "train"),
        "test": sorted(c.case_id for c in plan.cases if c.subset == "test"),
    }
    groups: dict[str, list[str]] = {}
    for c in plan.cases:
        if c.group is not None:
            groups.setdefault(c.group, []).append(c.case_id)
    if groups:
        out["groups"] = {g: sorted(v) for g, v in sorted(groups.items())}
    out.update(plan.split_extra)
    return out


def write_dataset(plan: DatasetPlan, out_dir: str | Path, *, overwrite: bool = False,
                  info: DatasetInfo | None = None, dataset_id: int | None = None,
                  progress: bool = True) -> Path:
    """Validate ``plan`` and write it atomically to ``out_dir`` (see the module docstring for the layout).

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
        DatasetFormatError: bad input; nothing is left at ``out_dir`` (an existing folder is kept untouched).
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    _validate_plan(plan)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / sub).mkdir()
        if plan.protocol is Protocol.CELLS and any(c.subset == "test" for c in plan.cases):
            (tmp / _INSTANCES_DIR).mkdir()
        cases = sorted(plan.cases, key=lambda c: (c.subset, c.case_id))
        for case in tqdm(cases, desc=f"converting {plan.name}", unit="case", disable=not progress, leave=False):
            data = case.load()
            _validate_case(plan, case, data)
            _write_case(tmp, plan, case, data)
        _dump_json(tmp / "dataset.json", _dataset_json(plan, info, dataset_id))
        _dump_json(tmp / "split.json", _split_json(plan))
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:12]}"
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %s (%d cases)", out_dir, len(plan.cases))
    return out_dir


def convert_with(info: DatasetInfo, *, source: str | Path | None = None, out_root: str | Path | None = None,
                 dataset_id: int | None = None, seed: int = 0, overwrite: bool = False,
                 progress: bool = True, **options: Any) -> Path:
    """Build ``info``'s plan from ``source`` and write it to ``<out_root>/Dataset<id>_<Name>``; returns that folder.

    ``source`` defaults to ``<shared data>/<info.shared_subdir>`` for the shared real sets; it is required for the
    other real datasets and ignored (must be ``None``) for synthetic ones. ``out_root`` defaults to nnU-Net's
    ``nnUNet_raw``. ``options`` go to the dataset's builder (unknown ones raise ``ValueError``).
    """
    from xlstm_unet.paths import nnunet_dirs, shared_data_dir

    if info.needs_source:
        if source is None:
            if info.shared_subdir is None:
                raise ValueError(f"dataset {info.name!r} needs source=<folder with the raw release> "
                                 f"(expected layout: {info.raw_layout or 'see the module docstring'})")
            source = shared_data_dir() / info.shared_subdir
        source = Path(source).expanduser()
        require_dir(source, f"{info.name} source")
    elif source is not None:
        raise ValueError(f"dataset {info.name!r} is generated and takes no source, got source={source!r}")
    did = info.default_id if dataset_id is None else int(dataset_id)
    if not 1 <= did <= 999:
        raise ValueError(f"dataset_id must be in 1..999, got {did}")
    try:
        plan = info.build(source, seed=seed, **options)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise ValueError(f"dataset {info.name!r}: {err}") from err
        raise
    root = Path(out_root) if out_root is not None else nnunet_dirs()["nnUNet_raw"]
    folder = root / f"Dataset{did:03d}_{plan.folder_name or info.folder_name}"
    return write_dataset(plan, folder, overwrite=overwrite, info=info, dataset_id=did, progress=progress)
