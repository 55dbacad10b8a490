"""TCIA Brain-Tumor-Progression glioblastoma MRI (3D, 4 modalities, binary tumour) -> ``Dataset913_PGBMBrainMRI``.

Source: ``$XLSTM_UNET_SHARED_DATA/pgbm_brain_mri`` (5 studies of 3 patients, DICOM series converted to NIfTI with
their DICOM geometry; see that folder's README). Collection: https://doi.org/10.7937/K9/TCIA.2018.15quzvnb.

Raw layout::

    <source>/<patient>_<study date>/t1.nii.gz  t1c.nii.gz  t2.nii.gz  flair.nii.gz  seg.nii.gz (uint8 {0, 1})

Conversion: channels ``0 t1, 1 t1c, 2 t2, 3 flair`` (stored dtype kept), labels ``{background: 0, tumor: 1}``,
spacing and orientation from the source headers (the seg's affine, which equals t1c's; all five volumes must share
shape and spacing). Case id = study folder name. **The split is by patient** (``n_test_patients`` seeded-random
patients go to test, with all their studies), because the studies of one patient are not independent;
``n_test_patients=0`` converts every patient as training data, ``n_test_patients=<number of patients>`` every
patient as test data (e.g. one new patient to predict and evaluate).
Protocol ``generic`` (DSC / HD95 of the binary tumour).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

from ._common import (
    CasePlan,
    DatasetFormatError,
    DatasetInfo,
    DatasetPlan,
    Protocol,
    check_modality_files,
    load_nifti_case,
    require_dir,
    seeded_group_split,
)

__all__ = ["build_pgbm_brain_mri", "PGBM_BRAIN_MRI", "PGBM_MODALITIES"]

#: Source file stems of the channels, in channel order.
PGBM_MODALITIES: tuple[str, ...] = ("t1", "t1c", "t2", "flair")

_SOURCE = "TCIA Brain-Tumor-Progression (Schmainda & Prah 2018), doi:10.7937/K9/TCIA.2018.15quzvnb"


def _study_files(study: Path) -> tuple[list[Path], Path]:
    return check_modality_files({m: study / f"{m}.nii.gz" for m in PGBM_MODALITIES}, study / "seg.nii.gz",
                                f"study {study.name}")


def build_pgbm_brain_mri(source: Path, *, seed: int = 0, n_test_patients: int = 1,
                         patients: Sequence[str] | None = None) -> DatasetPlan:
    """Plan the PGBM conversion (see the module docstring); headers of every study are checked here.

    ``patients`` restricts the conversion to these patient ids (e.g. ``["PGBM-001", "PGBM-006"]``, quick runs).
    """
    source = require_dir(Path(source), "pgbm_brain_mri source")
    studies = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    if patients is not None:
        known = {p.name.split("_")[0] for p in studies}
        unknown = sorted(set(patients) - known)
        if unknown:
            raise ValueError(f"unknown patients {unknown}; available: {sorted(known)}")
        studies = [p for p in studies if p.name.split("_")[0] in set(patients)]
    if not studies:
        raise DatasetFormatError(source, "empty dataset: no study folders <patient>_<date>/")
    groups: dict[str, list[str]] = {}
    files: dict[str, tuple[list[Path], Path]] = {}
    for study in studies:
        if "_" not in study.name:
            raise DatasetFormatError(study, "study folder must be named <patient>_<date>")
        files[study.name] = _study_files(study)
        groups.setdefault(study.name.split("_")[0], []).append(study.name)
    train, test = seeded_group_split(groups, n_test_patients, seed, option="n_test_patients")
    subset = {**{c: "train" for c in train}, **{c: "test" for c in test}}
    cases = tuple(
        CasePlan(case_id=cid, subset=subset[cid], load=partial(load_nifti_case, *files[cid]),  # type: ignore[arg-type]
                 files=(*files[cid][0], files[cid][1]), group=cid.split("_")[0])
        for cid in sorted(files))
    return DatasetPlan(
        name="PGBMBrainMRI",
        description="TCIA Brain-Tumor-Progression glioblastoma MRI (real data): T1, T1c, T2, FLAIR and a binary "
                    "tumour mask; split by patient.",
        reference=_SOURCE,
        licence="CC BY 3.0 and the TCIA data usage policy (unconfirmed; see the data README)",
        channel_names={str(i): m for i, m in enumerate(PGBM_MODALITIES)},
        labels={"background": 0, "tumor": 1},
        file_ending=".nii.gz",
        protocol=Protocol.GENERIC,
        synthetic=False,
        source=_SOURCE,
        seed=seed,
        cases=cases,
        dims=3,
        extra={"options": {"n_test_patients": n_test_patients,
                           "patients": None if patients is None else sorted(patients)}},
        split_extra={"method": f"seeded split by patient, n_test_patients={n_test_patients}"},
    )


PGBM_BRAIN_MRI = DatasetInfo(
    name="pgbm_brain_mri", default_id=913, folder_name="PGBMBrainMRI", protocol=Protocol.GENERIC,
    summary="TCIA glioblastoma MRI, 3D 4 modalities, binary tumour, split by patient (real; shared subset)",
    build=build_pgbm_brain_mri, shared_subdir="pgbm_brain_mri",
    download="https://doi.org/10.7937/K9/TCIA.2018.15quzvnb (DICOM; convert series to NIfTI first)",
    raw_layout="<patient>_<date>/{t1,t1c,t2,flair,seg}.nii.gz")
