"""AMOS 2022 abdomen MRI, 13 organs -> ``Dataset701_AMOSMRI`` (the paper's "Abdomen MRI", U-Mamba's setting).

Format sources: the AMOS 2022 release (Zenodo record 7262581, ``amos22/`` with ``dataset.json``, ``imagesTr``,
``labelsTr``, ``imagesVa``, ``labelsVa``, ``imagesTs``; files ``amos_<4-digit id>.nii.gz``; ids above 500 are MRI;
label values 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 esophagus, 6 liver, 7 stomach, 8 aorta,
9 postcava (IVC), 10 pancreas, 11 right adrenal gland, 12 left adrenal gland, 13 duodenum, 14 bladder,
15 prostate/uterus) and U-Mamba's ``Dataset702_AbdomenMR`` (its ``data/README.md`` and ``dataset.json``:
``imagesTr/amos_XXXX_0000.nii.gz``, ``labelsTr/amos_XXXX.nii.gz``, 60 AMOS MRI for training and 50 further MRI
annotated by the U-Mamba authors as the test set, labels in the FLARE order below).

Two accepted raw layouts (detected from the file names):

1. **AMOS release** ``<source>/imagesTr|imagesVa/amos_XXXX.nii.gz`` + ``labelsTr|labelsVa/amos_XXXX.nii.gz``:
   the MRI cases (id > 500) of Tr and Va are the training set; their AMOS label values are mapped to the 13-organ
   order below (14 bladder and 15 prostate/uterus, not among the paper's 13 organs, become background). Test set:
   ``imagesTs`` + ``labelsTs`` MRI cases when ``labelsTs`` exists, else ``test_source`` (see 2.), else a seeded
   ``test_fraction`` split of the training MRI with a warning (not the paper's test set).
2. **U-Mamba Dataset702** ``<source>/imagesTr/amos_XXXX_0000.nii.gz`` + ``labelsTr`` (+ ``imagesTs``/``labelsTs``):
   labels are already in the 13-organ order and are copied as they are.

``test_source`` may point at a folder in layout 2 holding ``imagesTs``/``labelsTs`` (U-Mamba's 50 test MRI).

Output labels (FLARE / U-Mamba order, used by the abdomen NSD tolerances): 1 liver, 2 right kidney, 3 spleen,
4 pancreas, 5 aorta, 6 inferior vena cava, 7 right adrenal gland, 8 left adrenal gland, 9 gallbladder,
10 esophagus, 11 stomach, 12 duodenum, 13 left kidney. One channel ``MRI``; spacing from the headers; protocol
``abdomen``. The same 3D data serve the 2D configuration (nnU-Net's 2d configuration slices it).
"""

from __future__ import annotations

import re
import warnings
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
    check_same_geometry,
    load_nifti,
    load_nifti_case,
    require_dir,
    seeded_split,
)

__all__ = ["build_amos_mri", "AMOS_MRI", "ABDOMEN_LABELS", "AMOS_TO_ABDOMEN"]

#: Output label values (U-Mamba Dataset702 / FLARE order).
ABDOMEN_LABELS: dict[str, int] = {
    "background": 0, "liver": 1, "right kidney": 2, "spleen": 3, "pancreas": 4, "aorta": 5,
    "inferior vena cava": 6, "right adrenal gland": 7, "left adrenal gland": 8, "gallbladder": 9, "esophagus": 10,
    "stomach": 11, "duodenum": 12, "left kidney": 13}
#: AMOS 2022 label value -> output value (14 bladder and 15 prostate/uterus -> background).
AMOS_TO_ABDOMEN: dict[int, int] = {0: 0, 1: 3, 2: 2, 3: 13, 4: 9, 5: 10, 6: 1, 7: 11, 8: 5, 9: 6, 10: 4, 11: 7,
                                   12: 8, 13: 12, 14: 0, 15: 0}
MRI_MIN_ID = 501

_SOURCE = "AMOS 2022 MRI (Ji et al., NeurIPS 2022), https://zenodo.org/record/7262581; U-Mamba test annotations"
_RE_AMOS = re.compile(r"^amos_(\d{4})(_0000)?\.nii\.gz$")


def _scan(images: Path, labels: Path, mri_only: bool) -> dict[str, tuple[Path, Path, bool]]:
    """``{case id: (image, label, amos_values)}`` for the (MRI) cases of one images/labels folder pair."""
    require_dir(images, "AMOS images")
    require_dir(labels, "AMOS labels")
    out: dict[str, tuple[Path, Path, bool]] = {}
    for p in sorted(images.iterdir()):
        m = _RE_AMOS.match(p.name)
        if m is None:
            continue
        num, umamba = int(m.group(1)), m.group(2) is not None
        if mri_only and num < MRI_MIN_ID:
            continue
        cid = f"amos_{m.group(1)}"
        if cid in out:
            raise DatasetFormatError(p, f"duplicate case id {cid!r} (also {out[cid][0]})")
        lab = labels / f"{cid}.nii.gz"
        if not lab.is_file():
            raise DatasetFormatError(lab, f"missing label of {p.name}")
        out[cid] = (p, lab, not umamba)
    return out


def _load(image: Path, label: Path, amos_values: bool) -> CaseData:
    data = load_nifti_case([image], label)
    if not amos_values:
        return data
    lab = np.asarray(data.label)
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
            raise DatasetFormatError(label, "label contains non-integer values")
    lab = lab.astype(np.int64)
    bad = ~np.isin(lab, list(AMOS_TO_ABDOMEN))
    if bad.any():
        raise DatasetFormatError(label, f"label values {np.unique(lab[bad])[:10].tolist()} outside the AMOS set 0..15")
    lut = np.zeros(16, dtype=np.uint8)
    for k, v in AMOS_TO_ABDOMEN.items():
        lut[k] = v
    return CaseData(channels=data.channels, label=lut[lab], affine=data.affine, channel_files=data.channel_files,
                    label_file=data.label_file, copy_channels=data.copy_channels, copy_label=False)


def build_amos_mri(source: Path, *, seed: int = 0, test_source: str | Path | None = None,
                   test_fraction: float = 50 / 110, max_cases: int | None = None) -> DatasetPlan:
    """Plan the AMOS MRI conversion (see the module docstring). ``max_cases`` caps train and test (quick runs)."""
    source = require_dir(Path(source), "AMOS source")
    train: dict[str, tuple[Path, Path, bool]] = {}
    for img, lab in (("imagesTr", "labelsTr"), ("imagesVa", "labelsVa")):
        if (source / img).is_dir() or img == "imagesTr":
            part = _scan(source / img, source / lab, mri_only=True)
            dup = set(part) & set(train)
            if dup:
                cid = sorted(dup)[0]
                raise DatasetFormatError(part[cid][0], f"duplicate case id {cid!r} (also {train[cid][0]})")
            train.update(part)
    if not train:
        raise DatasetFormatError(source / "imagesTr", "empty dataset: no MRI cases amos_XXXX (id > 500)")
    test: dict[str, tuple[Path, Path, bool]] = {}
    method = "AMOS Tr+Va MRI train"
    if test_source is not None:
        ts = require_dir(Path(test_source), "AMOS test source")
        test = _scan(ts / "imagesTs", ts / "labelsTs", mri_only=True)
        method += f", test from test_source ({len(test)} MRI)"
    elif (source / "labelsTs").is_dir():
        test = _scan(source / "imagesTs", source / "labelsTs", mri_only=True)
        method += ", test = imagesTs/labelsTs MRI"
    dup = set(test) & set(train)
    if dup:
        cid = sorted(dup)[0]
        raise DatasetFormatError(test[cid][0], f"duplicate case id {cid!r}: in the training and the test set")
    if max_cases is not None:
        train = {k: train[k] for k in sorted(train)[:max_cases]}
        test = {k: test[k] for k in sorted(test)[:max_cases]}
    subset = {c: "train" for c in train}
    if not test:
        warnings.warn("AMOS: no test labels (labelsTs or test_source); using a seeded split of the labelled MRI, "
                      "which is not the paper's 50-case test set", stacklevel=3)
        tr_ids, te_ids = seeded_split(list(train), test_fraction, seed)
        subset = {**{c: "train" for c in tr_ids}, **{c: "test" for c in te_ids}}
        method += f", no test labels: seeded split test_fraction={test_fraction:.3f}"
    else:
        subset.update({c: "test" for c in test})
    allc = {**train, **test}
    for cid, (img, lab, _) in allc.items():  # header checks before writing anything
        check_same_geometry(lab, load_nifti(lab), img, load_nifti(img))
    cases = tuple(CasePlan(case_id=cid, subset=subset[cid], load=partial(_load, *allc[cid]),  # type: ignore[arg-type]
                           files=allc[cid][:2]) for cid in sorted(allc))
    return DatasetPlan(
        name="AMOSMRI",
        description="AMOS 2022 abdomen MRI (real data), 13 organs in the U-Mamba/FLARE label order.",
        reference=_SOURCE,
        licence="AMOS 2022: CC BY 4.0 (see the Zenodo record)",
        channel_names={"0": "MRI"},
        labels=dict(ABDOMEN_LABELS),
        file_ending=".nii.gz",
        protocol=Protocol.ABDOMEN,
        synthetic=False,
        source=_SOURCE,
        seed=seed,
        cases=cases,
        dims=3,
        extra={"label_map_from_amos": {str(k): v for k, v in AMOS_TO_ABDOMEN.items()},
               "options": {"test_source": None if test_source is None else Path(test_source).name,
                           "test_fraction": test_fraction, "max_cases": max_cases}},
        split_extra={"method": method},
    )


AMOS_MRI = DatasetInfo(
    name="amos_mri", default_id=701, folder_name="AMOSMRI", protocol=Protocol.ABDOMEN,
    summary="AMOS 2022 abdomen MRI, 3D, 13 organs (real; download needed)", build=build_amos_mri,
    download="https://zenodo.org/record/7262581 (amos22.zip); U-Mamba's Dataset702_AbdomenMR for the 50 test MRI",
    raw_layout="imagesTr|imagesVa/amos_XXXX.nii.gz + labelsTr|labelsVa/ (ids > 500 = MRI), or U-Mamba Dataset702")
