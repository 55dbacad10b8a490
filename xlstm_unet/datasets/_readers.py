"""Reading the converters' sources: folders, 2D images, NIfTI volumes and their geometry (errors name the file)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ._plan import CaseData, DatasetFormatError

__all__ = [
    "IMAGE_SUFFIXES_2D",
    "require_dir",
    "require_file",
    "pair_files",
    "limit_cases",
    "read_image_2d",
    "load_nifti",
    "nifti_header_geometry",
    "check_same_geometry",
    "check_modality_files",
    "load_nifti_case",
]

#: 2D file endings the readers accept (``.jpg`` only as a *source*: nnU-Net refuses lossy outputs).
IMAGE_SUFFIXES_2D: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


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
