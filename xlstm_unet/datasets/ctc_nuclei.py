"""Cell Tracking Challenge nuclei (Fluo-N2DH-GOWT1, Fluo-N2DL-HeLa) -> ``Dataset912_CTCNuclei`` (cell protocol).

Source: ``$XLSTM_UNET_SHARED_DATA/ctc_nuclei`` (10 annotated frames, see that folder's README), made from the CTC
training data (http://celltrackingchallenge.net/2d-datasets/, ``<seq>/t<NNN>.tif`` + ``<seq>_GT/SEG/man_seg<NNN>.tif``).

Raw layout::

    <source>/images/<set>_t<NN>.tif     grey, uint8 (GOWT1) or uint16 (HeLa: 12-bit counts + 32768 offset)
    <source>/labels/<set>_t<NN>.tif     uint16 instance ids, 0 = background

Conversion (the cell protocol of reference.md, as for NeurIPS 2022 cells):

- images: per-image 1-99 percentile normalisation (of the non-zero pixels) to uint8
  (:func:`~._common.percentile_to_uint8`), one grey
  channel; this also removes the HeLa offset;
- labels: :func:`~._common.instances_to_3class` -> ``{background: 0, interior: 1, boundary: 2}``;
- test instance labels are kept in ``labelsTs_instances/<case>.png`` (uint16) for the F1 evaluation.

The split is seeded and stratified by cell line (``test_fraction`` of each line, at least one frame per line;
``test_fraction=0`` / ``1``: every frame train / test).
Caveat from the data README: the annotations are not exhaustive (border-cut nuclei are mostly unlabelled), so
"background" includes some unannotated nuclei.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    instances_to_3class,
    pair_files,
    percentile_to_uint8,
    read_image_2d,
    seeded_split,
)

__all__ = ["build_ctc_nuclei", "load_instances", "CTC_NUCLEI", "CELL_LABELS"]

#: The 3-class cell targets.
CELL_LABELS: dict[str, int] = {"background": 0, "interior": 1, "boundary": 2}

_SOURCE = "Cell Tracking Challenge Fluo-N2DH-GOWT1 / Fluo-N2DL-HeLa (Ulman et al. 2017), celltrackingchallenge.net"


def load_instances(path: Path) -> np.ndarray:
    """Read an instance label image ``(H, W)``; checks it is a non-negative integer map (errors name the file)."""
    inst = read_image_2d(path)
    if inst.ndim != 2:
        raise DatasetFormatError(path, f"expected a 2D instance map (H, W), got shape {inst.shape}")
    if not np.issubdtype(inst.dtype, np.integer):
        if np.issubdtype(inst.dtype, np.floating) and np.all(np.isfinite(inst)) and np.all(inst == np.round(inst)):
            inst = inst.astype(np.int64)
        else:
            raise DatasetFormatError(path, f"instance labels must be integers, got {inst.dtype}")
    if inst.min(initial=0) < 0:
        raise DatasetFormatError(path, "instance labels must be >= 0")
    return inst


def cell_case(img: np.ndarray, image_path: Path, label_path: Path, keep_instances: bool) -> CaseData:
    """The cell protocol's case from an image ``(H, W)`` or ``(H, W, C)`` read from ``image_path`` and the instance
    map in ``label_path``: percentile-normalised uint8 channels, 3-class targets, the instances when kept."""
    inst = load_instances(label_path)
    if inst.shape != img.shape[:2]:
        raise DatasetFormatError(label_path, f"image/label shape mismatch: image {img.shape[:2]} "
                                             f"({image_path.name}), label {inst.shape}")
    return CaseData(channels=(percentile_to_uint8(img),), label=instances_to_3class(inst),
                    instances=inst if keep_instances else None, channel_files=(image_path,), label_file=label_path)


def _load(image_path: Path, label_path: Path, keep_instances: bool) -> CaseData:
    img = read_image_2d(image_path)
    if img.ndim != 2:
        raise DatasetFormatError(image_path, f"expected a grey image (H, W), got shape {img.shape}")
    if np.issubdtype(img.dtype, np.floating) and not np.all(np.isfinite(img)):
        raise DatasetFormatError(image_path, "image contains NaN or infinite intensities")
    return cell_case(img, image_path, label_path, keep_instances)


def build_ctc_nuclei(source: Path, *, seed: int = 0, test_fraction: float = 0.2,
                     cases: Sequence[str] | None = None) -> DatasetPlan:
    """Plan the CTC nuclei conversion (see the module docstring). ``cases`` restricts to these ids (quick runs)."""
    source = Path(source)
    pairs = pair_files(source / "images", source / "labels", (".tif", ".tiff"), (".tif", ".tiff"))
    if cases is not None:
        unknown = sorted(set(cases) - set(pairs))
        if unknown:
            raise ValueError(f"unknown case ids {unknown}; available: {sorted(pairs)}")
        pairs = {c: pairs[c] for c in sorted(cases)}
    lines: dict[str, list[str]] = {}
    for cid in pairs:
        lines.setdefault(cid.split("_")[0], []).append(cid)
    subset: dict[str, str] = {}
    for line, ids in sorted(lines.items()):
        if len(ids) < 2 and 0 < test_fraction < 1:
            raise ValueError(f"cell line {line!r} has {len(ids)} frame(s); need at least 2 to split train/test "
                             f"(the split is per line): add frames of this line, or pass test_fraction=0 (all "
                             f"train) or test_fraction=1 (all test)")
        train, test = seeded_split(ids, test_fraction, seed)
        subset.update({c: "train" for c in train} | {c: "test" for c in test})
    plans = tuple(CasePlan(case_id=cid, subset=subset[cid],  # type: ignore[arg-type]
                           load=partial(_load, *pairs[cid], subset[cid] == "test"), files=pairs[cid],
                           group=cid.split("_")[0])
                  for cid in pairs)
    return DatasetPlan(
        name="CTCNuclei",
        description="Cell Tracking Challenge nuclei (GOWT1, HeLa), real data; 3-class targets (background, "
                    "interior, boundary) from instance labels; test instances in labelsTs_instances.",
        reference=_SOURCE,
        licence="CTC conditions of use: public non-CTC use needs the data providers' permission",
        channel_names={"0": "fluorescence"},
        labels=dict(CELL_LABELS),
        file_ending=".png",
        protocol=Protocol.CELLS,
        synthetic=False,
        source=_SOURCE,
        seed=seed,
        cases=plans,
        dims=2,
        extra={"options": {"test_fraction": test_fraction, "cases": None if cases is None else sorted(cases)},
               "image_normalisation": "per-image 1-99 percentile to uint8",
               "target_rule": "instances_to_3class(min_interior_size=16)"},
        split_extra={"method": f"seeded random split per cell line, test_fraction={test_fraction}"},
    )


CTC_NUCLEI = DatasetInfo(
    name="ctc_nuclei", default_id=912, folder_name="CTCNuclei", protocol=Protocol.CELLS,
    summary="Cell Tracking Challenge nuclei, 2D instances -> 3 classes (real; shared subset by default)",
    build=build_ctc_nuclei, shared_subdir="ctc_nuclei", download="http://celltrackingchallenge.net/2d-datasets/",
    raw_layout="images/<set>_t<NN>.tif, labels/<set>_t<NN>.tif (uint16 instances)")
