"""Shared machinery of the dataset converters, importable from one place (the converters import from here).

:mod:`._plan`: the data model (:class:`DatasetPlan`, :class:`CasePlan`, :class:`CaseData`, :class:`DatasetInfo`,
:class:`Protocol`, :class:`DatasetFormatError`); :mod:`._readers`: reading sources (folders, 2D images, NIfTI);
:mod:`._splits`: seeded splits and the cell targets; :mod:`._writer`: validation and the atomic, deterministic
writer of the nnU-Net raw folder (:func:`write_dataset`; the output layout is in its module docstring).
"""

from __future__ import annotations

from ._plan import CaseData, CasePlan, DatasetFormatError, DatasetInfo, DatasetPlan, Protocol, Subset
from ._readers import (
    IMAGE_SUFFIXES_2D,
    check_modality_files,
    check_same_geometry,
    limit_cases,
    load_nifti,
    load_nifti_case,
    nifti_header_geometry,
    pair_files,
    read_image_2d,
    require_dir,
    require_file,
)
from ._splits import instances_to_3class, percentile_to_uint8, seeded_group_split, seeded_split
from ._writer import convert_with, write_array, write_dataset

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
    "check_modality_files",
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
