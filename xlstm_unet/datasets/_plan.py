"""The converters' data model: a :class:`DatasetPlan` of :class:`CasePlan` s, each loading its :class:`CaseData`.

A converter module builds a plan and hands it to :func:`xlstm_unet.datasets._writer.write_dataset`; the registry
(:data:`xlstm_unet.datasets.DATASETS`) holds one :class:`DatasetInfo` per dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["Subset", "Protocol", "DatasetFormatError", "CaseData", "CasePlan", "DatasetPlan", "DatasetInfo"]

Subset = Literal["train", "test"]


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
