"""Validation and the deterministic, atomic writer of a converted dataset (nnU-Net v2 raw format).

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
from pathlib import Path
from typing import Any

import numpy as np

from xlstm_unet._io import replace_path

from ._plan import CaseData, CasePlan, DatasetFormatError, DatasetInfo, DatasetPlan, Protocol
from ._readers import require_dir

__all__ = ["write_dataset", "convert_with", "write_array"]

logger = logging.getLogger(__name__)

_SUBSET_DIRS: dict[str, tuple[str, str]] = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
_INSTANCES_DIR = "labelsTs_instances"


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
        replace_path(tmp, out_dir)
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
