"""Kvasir-SEG polyp segmentation (2D RGB endoscopy, binary) -> ``Dataset911_KvasirSEG``.

Source: the shared subset in ``$XLSTM_UNET_SHARED_DATA/kvasir_seg`` (200 of the 1000 pairs, already resized to
256 x 256 by the repository they come from; see that folder's README), or the full release from
https://datasets.simula.no/kvasir-seg/ (``Kvasir-SEG/images/<id>.jpg``, ``Kvasir-SEG/masks/<id>.jpg``).

Raw layout::

    <source>/images/<id>.jpg|.png      RGB uint8
    <source>/masks/<id>.png            uint8 {0, 1} (shared subset)   or
    <source>/masks/<id>.jpg            grey/RGB JPEG 0..255 (original release): binarised at > 127, because JPEG
                                       compression leaves grey values along the mask edges

Output: ``imagesTr/<id>_0000.png`` (one RGB PNG = channels R, G, B; nnU-Net's 2D convention), labels
``{background: 0, polyp: 1}``, protocol ``endoscopy`` (per-image DSC/NSD with a 2 px tolerance), and a seeded
random split (``test_fraction`` of the cases, default 0.2).
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
    limit_cases,
    pair_files,
    read_image_2d,
    seeded_split,
)

__all__ = ["build_kvasir_seg", "KVASIR_SEG"]

_SOURCE = "Kvasir-SEG (Jha et al., MMM 2020), https://datasets.simula.no/kvasir-seg/"


def _load(image_path: Path, mask_path: Path) -> CaseData:
    img = read_image_2d(image_path)
    if img.ndim == 2:
        raise DatasetFormatError(image_path, f"expected an RGB image (H, W, 3), got grey {img.shape}")
    if img.dtype != np.uint8:
        raise DatasetFormatError(image_path, f"expected uint8 RGB, got {img.dtype}")
    mask = read_image_2d(mask_path)
    lossy = mask_path.suffix.lower() in (".jpg", ".jpeg")
    if mask.ndim == 3:
        if not lossy:
            raise DatasetFormatError(mask_path, f"expected a single-channel mask (H, W), got {mask.shape}")
        mask = mask.max(axis=-1)
    if lossy:
        mask = (mask > 127).astype(np.uint8)
    if mask.shape != img.shape[:2]:
        raise DatasetFormatError(mask_path, f"image/label shape mismatch: image {img.shape[:2]} "
                                            f"({image_path.name}), mask {mask.shape}")
    return CaseData(channels=(img,), label=mask, channel_files=(image_path,), label_file=mask_path)


def build_kvasir_seg(source: Path, *, seed: int = 0, test_fraction: float = 0.2,
                     max_cases: int | None = None) -> DatasetPlan:
    """Plan the Kvasir-SEG conversion from ``source`` (see the module docstring for the layout).

    ``max_cases`` keeps the first cases in sorted id order (for quick runs); the split is then drawn from them.
    """
    source = Path(source)
    pairs = pair_files(source / "images", source / "masks", (".jpg", ".jpeg", ".png"), (".png", ".jpg", ".jpeg"))
    ids = limit_cases(list(pairs), max_cases)
    train, test = seeded_split(ids, test_fraction, seed)
    subset = {**{c: "train" for c in train}, **{c: "test" for c in test}}
    cases = tuple(CasePlan(case_id=cid, subset=subset[cid], load=partial(_load, *pairs[cid]), files=pairs[cid])
                  for cid in ids)
    return DatasetPlan(
        name="KvasirSEG",
        description="Kvasir-SEG colonoscopy frames with binary polyp masks (real data).",
        reference=_SOURCE,
        licence="research and education only; cite Jha et al. 2020 (see the publisher's terms)",
        channel_names={"0": "R", "1": "G", "2": "B"},
        labels={"background": 0, "polyp": 1},
        file_ending=".png",
        protocol=Protocol.ENDOSCOPY,
        synthetic=False,
        source=_SOURCE,
        seed=seed,
        cases=cases,
        dims=2,
        extra={"options": {"test_fraction": test_fraction, "max_cases": max_cases}},
        split_extra={"method": f"seeded random split, test_fraction={test_fraction}"},
    )


KVASIR_SEG = DatasetInfo(
    name="kvasir_seg", default_id=911, folder_name="KvasirSEG", protocol=Protocol.ENDOSCOPY,
    summary="Kvasir-SEG polyps, 2D RGB, binary (real; shared subset by default)", build=build_kvasir_seg,
    shared_subdir="kvasir_seg", download="https://datasets.simula.no/kvasir-seg/",
    raw_layout="images/<id>.jpg, masks/<id>.png {0,1} or masks/<id>.jpg (0..255)")
