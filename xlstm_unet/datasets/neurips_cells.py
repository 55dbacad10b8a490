"""NeurIPS 2022 Cell Segmentation challenge -> ``Dataset703_NeurIPSCells`` (3-class cell protocol, test instances).

Format source: the challenge data description (https://neurips22-cellseg.grand-challenge.org/dataset/, data on
Zenodo record 10719375): ``Training-labeled/images/cell_XXXXX.<png|bmp|tif|tiff>`` (1000 labelled images, grey or
RGB, 8- or 16-bit) with ``Training-labeled/labels/cell_XXXXX_label.tiff`` (uint16/uint32 instance ids,
0 = background), and the 101-image tuning set ``Tuning/images/cell_XXXXX.tiff`` + ``Tuning/labels/...`` that the
paper (after U-Mamba) uses for evaluation. Output labels as U-Mamba's ``Dataset703_NeurIPSCell/dataset.json``.

Raw layout::

    <source>/Training-labeled/images/cell_00001.png       (or .bmp, .tif, .tiff, .jpg)
    <source>/Training-labeled/labels/cell_00001_label.tiff
    <source>/Tuning/images/cell_00001.tiff
    <source>/Tuning/labels/cell_00001_label.tiff

Conversion: images to uint8 RGB by per-channel 1-99 percentiles of the non-zero pixels
(:func:`~._common.percentile_to_uint8`; grey images are repeated to 3 channels, an alpha channel is dropped,
channel-first TIFFs are transposed); labels to ``{background 0, interior 1, boundary 2}`` by
:func:`~._common.instances_to_3class`; the test (tuning) instance maps go to ``labelsTs_instances``. Case ids are
prefixed by the set (``train_cell_00001``, ``tuning_cell_00001``) because both sets number from 1.
Protocol ``cells``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from ._common import (
    CaseData,
    CasePlan,
    DatasetFormatError,
    DatasetInfo,
    DatasetPlan,
    Protocol,
    pair_files,
    require_dir,
)
from .ctc_nuclei import CELL_LABELS, cell_case

__all__ = ["build_neurips_cells", "NEURIPS_CELLS", "read_cell_image"]

_IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
_SOURCE = "NeurIPS 2022 Cell Segmentation challenge (Ma et al., Nature Methods 2024), " \
          "https://neurips22-cellseg.grand-challenge.org/"


def read_cell_image(path: Path) -> np.ndarray:
    """Read a challenge image as ``(H, W, 3)`` (grey repeated, alpha dropped, channel-first transposed)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(path, "missing file (image)")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            img = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                img = np.asarray(im.convert("RGB") if im.mode in ("P", "PA", "LA", "CMYK") else im)
    except Exception as err:  # noqa: BLE001
        raise DatasetFormatError(path, f"unreadable or corrupt image ({type(err).__name__}: {err})") from err
    img = np.squeeze(img)
    if img.ndim == 3 and img.shape[-1] not in (3, 4) and img.shape[0] in (3, 4):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise DatasetFormatError(path, f"expected a grey or RGB(A) 2D image, got shape {img.shape}")
    img = img[..., :3]
    if img.dtype.kind == "f" and not np.all(np.isfinite(img)):
        raise DatasetFormatError(path, "image contains NaN or infinite intensities")
    return img


def _load(image: Path, label: Path, keep_instances: bool) -> CaseData:
    return cell_case(read_cell_image(image), image, label, keep_instances)


def _pairs(folder: Path, prefix: str, max_cases: int | None, option: str) -> dict[str, tuple[Path, Path]]:
    require_dir(folder, f"NeurIPS cells {prefix} set; pass {option}=<folder in the source> for another folder")
    pairs = pair_files(folder / "images", folder / "labels", _IMAGE_SUFFIXES, ("_label.tiff", "_label.tif"))
    ids = sorted(pairs)[:max_cases] if max_cases is not None else sorted(pairs)
    return {f"{prefix}_{cid}": pairs[cid] for cid in ids}


def build_neurips_cells(source: Path, *, seed: int = 0, train_dir: str = "Training-labeled",
                        test_dir: str = "Tuning", max_cases: int | None = None) -> DatasetPlan:
    """Plan the NeurIPS 2022 cells conversion (see the module docstring); ``max_cases`` caps each set."""
    source = require_dir(Path(source), "NeurIPS cells source")
    train = _pairs(source / train_dir, "train", max_cases, "train_dir")
    test = _pairs(source / test_dir, "tuning", max_cases, "test_dir")
    cases = tuple(
        [CasePlan(case_id=cid, subset="train", load=partial(_load, *p, False), files=p) for cid, p in train.items()]
        + [CasePlan(case_id=cid, subset="test", load=partial(_load, *p, True), files=p) for cid, p in test.items()])
    return DatasetPlan(
        name="NeurIPSCells",
        description="NeurIPS 2022 Cell Segmentation (real data): uint8 RGB images, 3-class targets (background, "
                    "interior, boundary) from instance labels; test = tuning set, instances in labelsTs_instances.",
        reference=_SOURCE,
        licence="CC BY-NC-ND 4.0 (challenge data; see the Zenodo record)",
        channel_names={"0": "R", "1": "G", "2": "B"},
        labels=dict(CELL_LABELS),
        file_ending=".png",
        protocol=Protocol.CELLS,
        synthetic=False,
        source=_SOURCE,
        seed=seed,
        cases=cases,
        dims=2,
        extra={"image_normalisation": "per-channel 1-99 percentile of non-zero pixels to uint8 RGB",
               "target_rule": "instances_to_3class(min_interior_size=16)",
               "options": {"train_dir": train_dir, "test_dir": test_dir, "max_cases": max_cases}},
        split_extra={"method": f"official: {train_dir} = train, {test_dir} = test"},
    )


NEURIPS_CELLS = DatasetInfo(
    name="neurips_cells", default_id=703, folder_name="NeurIPSCells", protocol=Protocol.CELLS,
    summary="NeurIPS 2022 cell segmentation, 2D RGB, instances -> 3 classes (real; download needed)",
    build=build_neurips_cells, download="https://neurips22-cellseg.grand-challenge.org/dataset/ "
                                        "(Zenodo 10719375)",
    raw_layout="Training-labeled|Tuning/images/cell_XXXXX.<ext> + labels/cell_XXXXX_label.tiff")
