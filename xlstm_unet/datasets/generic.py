"""Generic folder converter: images + masks + a user label map -> nnU-Net raw format, no code needed.

Raw layout (folder names configurable with ``images_dir`` / ``masks_dir``)::

    <source>/images/<case><ext>               one file per case (2D grey or RGB, or 3D), when ``channels`` is None
    <source>/images/<case>_<channel><ext>     one file per channel, for each suffix in ``channels`` (e.g.
                                              channels=["t1", "t2"] or nnU-Net style ["0000", "0001"])
    <source>/masks/<case><ext>                integer label image, same size (and for 3D, same spacing)

``<ext>``: 2D ``.png``, ``.tif``/``.tiff``, ``.jpg``/``.jpeg`` (images only; masks must be lossless), ``.bmp``;
3D ``.nii.gz`` / ``.nii``. Images and masks may use different 2D extensions.

Options:
    labels: ``{name: value}``, must contain ``background: 0`` (CLI: ``--labels background=0,tumor=1``);
    mask_values: optional remapping of raw mask values to label values, e.g. ``{255: 1}`` for 0/255 masks
        (values not listed stay as they are; the result must lie in ``labels``);
    channels / channel_names: channel file suffixes and their names in dataset.json (default: the suffixes; for
        one 2D file per case ``R, G, B`` or ``grey`` from the first image);
    test_fraction (0.2), max_cases, dataset_name ("Generic": the folder becomes ``Dataset<id>_<dataset_name>``),
    protocol ("generic" | "abdomen" | "endoscopy" | "cells" | "brats").

Output: 2D as ``.png`` (uint8/uint16 images) or ``.tif`` (``file_ending=".tif"``, any real dtype); 3D as
``.nii.gz`` (``.nii.gz`` sources are copied byte for byte unless their mask is remapped). Default dataset id 990.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from ._common import (
    IMAGE_SUFFIXES_2D,
    CaseData,
    CasePlan,
    DatasetFormatError,
    DatasetInfo,
    DatasetPlan,
    Protocol,
    limit_cases,
    load_nifti_case,
    read_image_2d,
    require_dir,
    seeded_split,
)

__all__ = ["build_generic", "GENERIC", "parse_label_map"]

_NIFTI = (".nii.gz", ".nii")
_LOSSY = (".jpg", ".jpeg")


def parse_label_map(text: str) -> dict[str, int]:
    """``"background=0,tumor=1"`` -> ``{"background": 0, "tumor": 1}`` (the CLI's ``--labels``)."""
    out: dict[str, int] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"label map items must be name=value, got {item!r} in {text!r}")
        try:
            out[name.strip()] = int(value)
        except ValueError as err:
            raise ValueError(f"label value of {name.strip()!r} must be an integer, got {value!r}") from err
    return out


def _ending(path: Path) -> str | None:
    name = path.name.lower()
    for suf in (*_NIFTI, *IMAGE_SUFFIXES_2D):
        if name.endswith(suf):
            return suf
    return None


def _index(folder: Path) -> dict[str, Path]:
    """``{name without extension: path}`` of the image files in ``folder`` (duplicate stems are an error)."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        end = _ending(p)
        if end is None:
            continue
        stem = p.name[: -len(end)]
        if stem in out:
            raise DatasetFormatError(p, f"duplicate case id {stem!r} (also {out[stem].name})")
        out[stem] = p
    return out


def _remap(mask: np.ndarray, mask_values: Mapping[int, int] | None) -> np.ndarray:
    if not mask_values:
        return mask
    out = mask.astype(np.int64, copy=True)
    for src, dst in mask_values.items():
        out[mask == src] = dst
    return out


def _load_2d(image_files: tuple[Path, ...], mask_file: Path, mask_values: Mapping[int, int] | None) -> CaseData:
    chans = tuple(read_image_2d(p) for p in image_files)
    mask = read_image_2d(mask_file)
    if mask.ndim != 2:
        raise DatasetFormatError(mask_file, f"expected a single-channel mask (H, W), got shape {mask.shape}")
    return CaseData(channels=chans, label=_remap(mask, mask_values), channel_files=image_files, label_file=mask_file)


def _load_3d(image_files: tuple[Path, ...], mask_file: Path, mask_values: Mapping[int, int] | None) -> CaseData:
    data = load_nifti_case(image_files, mask_file)
    if not mask_values:
        return data
    return CaseData(channels=data.channels, label=_remap(data.label, mask_values), affine=data.affine,
                    channel_files=data.channel_files, label_file=data.label_file,
                    copy_channels=data.copy_channels, copy_label=False)


def build_generic(source: Path, *, seed: int = 0, labels: Mapping[str, int] | str | None = None,
                  channels: Sequence[str] | None = None, channel_names: Sequence[str] | None = None,
                  mask_values: Mapping[int, int] | None = None, images_dir: str = "images",
                  masks_dir: str = "masks", test_fraction: float = 0.2, max_cases: int | None = None,
                  dataset_name: str = "Generic", protocol: str = "generic",
                  file_ending: Literal[".png", ".tif"] | None = None) -> DatasetPlan:
    """Plan a generic folder conversion (see the module docstring for layout and options)."""
    source = Path(source)
    if labels is None:
        raise ValueError("generic datasets need a label map: labels={'background': 0, 'name': 1, ...} "
                         "(CLI: --labels background=0,name=1)")
    labels = parse_label_map(labels) if isinstance(labels, str) else {str(k): int(v) for k, v in labels.items()}
    if labels.get("background") != 0:
        raise ValueError(f"the label map must contain background=0, got {labels}")
    if not dataset_name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"dataset_name must be letters, digits, '-' or '_', got {dataset_name!r}")
    proto = Protocol(protocol)
    img_dir = require_dir(source / images_dir, "images")
    msk_dir = require_dir(source / masks_dir, "masks")
    images, masks = _index(img_dir), _index(msk_dir)
    if not images:
        raise DatasetFormatError(img_dir, "empty dataset: no image files")

    # group image files into cases
    if channels is None:
        case_files = {cid: (p,) for cid, p in images.items()}
    else:
        if not channels or len(set(channels)) != len(channels):
            raise ValueError(f"channels must be distinct non-empty suffixes, got {channels}")
        case_files = {}
        by_stem = dict(images)
        for stem, p in images.items():
            suf = next((c for c in channels if stem.endswith(f"_{c}")), None)
            if suf is None:
                raise DatasetFormatError(p, f"file name does not end in one of the channel suffixes "
                                            f"{['_' + c for c in channels]}")
            cid = stem[: -len(suf) - 1]
            if cid not in case_files:
                missing = [by_stem.get(f"{cid}_{c}") for c in channels]
                for c, m in zip(channels, missing):
                    if m is None:
                        raise DatasetFormatError(img_dir / f"{cid}_{c}{_ending(p)}",
                                                 f"missing channel {c!r} of case {cid!r}")
                case_files[cid] = tuple(m for m in missing if m is not None)
    endings = {_ending(p) for files in case_files.values() for p in files}
    dims = 3 if endings <= set(_NIFTI) else 2
    if dims == 2 and endings & set(_NIFTI):
        raise DatasetFormatError(img_dir, f"mixed 2D and 3D image files ({sorted(e for e in endings if e)})")
    for cid, files in case_files.items():
        if cid not in masks:
            raise DatasetFormatError(files[0], f"no mask for case {cid!r} (expected {msk_dir}/{cid}<ext>)")
        m_end = _ending(masks[cid])
        if m_end in _LOSSY:
            raise DatasetFormatError(masks[cid], "lossy JPEG masks are not supported; save masks as PNG/TIFF")
        if (dims == 3) != (m_end in _NIFTI):
            raise DatasetFormatError(masks[cid], f"mask format {m_end} does not match the {dims}D images")
    for cid, p in masks.items():
        if cid not in case_files:
            raise DatasetFormatError(p, f"mask without an image (no {img_dir}/{cid}<ext>)")

    ids = limit_cases(list(case_files), max_cases)
    train, test = seeded_split(ids, test_fraction, seed)
    subset = {**{c: "train" for c in train}, **{c: "test" for c in test}}

    if dims == 3:
        ending = ".nii.gz"
        n_ch = len(case_files[ids[0]])
        default_names = list(channels) if channels is not None else ["image"]
    else:
        ending = file_ending or (".tif" if endings <= {".tif", ".tiff"} else ".png")
        first = read_image_2d(case_files[ids[0]][0])  # peek: grey or RGB decides the channel count
        per_file = first.shape[-1] if first.ndim == 3 else 1
        n_ch = per_file * len(case_files[ids[0]])
        if channels is None:
            default_names = ["R", "G", "B"] if per_file == 3 else ["grey"]
        else:
            default_names = [f"{c}_{k}" for c in channels for k in "RGB"] if per_file == 3 else list(channels)
    names = list(channel_names) if channel_names is not None else default_names
    if len(names) != n_ch:
        raise ValueError(f"channel_names has {len(names)} entries, but the images have {n_ch} channels")
    loader = _load_3d if dims == 3 else _load_2d
    mv = {int(k): int(v) for k, v in mask_values.items()} if mask_values else None
    cases = tuple(CasePlan(case_id=cid, subset=subset[cid],  # type: ignore[arg-type]
                           load=partial(loader, case_files[cid], masks[cid], mv),
                           files=(*case_files[cid], masks[cid])) for cid in ids)
    return DatasetPlan(
        name=dataset_name,
        description=f"Generic folder conversion of {source.name}",
        channel_names={str(i): n for i, n in enumerate(names)},
        labels=labels,
        file_ending=ending,  # type: ignore[arg-type]
        protocol=proto,
        synthetic=False,
        source=f"generic folder {source.name}",
        seed=seed,
        cases=cases,
        dims=dims,  # type: ignore[arg-type]
        folder_name=dataset_name,
        extra={"options": {"channels": None if channels is None else list(channels), "test_fraction": test_fraction,
                           "max_cases": max_cases,
                           "mask_values": None if mv is None else {str(k): v for k, v in sorted(mv.items())}}},
        split_extra={"method": f"seeded random split, test_fraction={test_fraction}"},
    )


GENERIC = DatasetInfo(
    name="generic", default_id=990, folder_name="Generic", protocol=Protocol.GENERIC,
    summary="any folder of images + masks (2D PNG/TIFF/JPG or 3D NIfTI) with a user label map",
    build=build_generic, download="your own data",
    raw_layout="images/<case>[_<channel>].<ext>, masks/<case>.<ext>")
