"""Dataset converters to nnU-Net v2 raw format, and the built-in SYNTHETIC phantoms.

Registry (name -> default nnU-Net dataset id, output folder ``Dataset<id>_<Name>``):

=================  ====  ========================  ==========  =====================================================
name               id    folder                    protocol    source
=================  ====  ========================  ==========  =====================================================
phantom2d          901   Dataset901_Phantom2D      generic     SYNTHETIC, generated offline
phantom3d          902   Dataset902_Phantom3D      brats       SYNTHETIC, generated offline
kvasir_seg         911   Dataset911_KvasirSEG      endoscopy   shared data ``kvasir_seg`` (or the Kvasir-SEG release)
ctc_nuclei         912   Dataset912_CTCNuclei      cells       shared data ``ctc_nuclei``
pgbm_brain_mri     913   Dataset913_PGBMBrainMRI   generic     shared data ``pgbm_brain_mri`` (split by patient)
amos_mri           701   Dataset701_AMOSMRI        abdomen     AMOS 2022 release (MRI ids > 500) / U-Mamba Dataset702
endovis17          702   Dataset702_EndoVis17      endoscopy   EndoVis 2017 train/ + test/ instrument_dataset_<k>
neurips_cells      703   Dataset703_NeurIPSCells   cells       NeurIPS 2022 Training-labeled/ + Tuning/
brats23            704   Dataset704_BraTS2023      brats       BraTS 2023 GLI training data (70/10/20 split)
generic            990   Dataset990_<name>         (option)    any images/ + masks/ folder with a user label map
=================  ====  ========================  ==========  =====================================================

Use :func:`convert` (or ``xlstm-unet convert NAME``); each module also documents its raw layout and format source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._common import (
    CaseData,
    CasePlan,
    DatasetFormatError,
    DatasetInfo,
    DatasetPlan,
    Protocol,
    convert_with,
    instances_to_3class,
    percentile_to_uint8,
    write_dataset,
)
from .amos_mri import AMOS_MRI
from .brats23 import BRATS23
from .ctc_nuclei import CTC_NUCLEI
from .endovis17 import ENDOVIS17
from .generic import GENERIC
from .kvasir_seg import KVASIR_SEG
from .neurips_cells import NEURIPS_CELLS
from .pgbm_brain_mri import PGBM_BRAIN_MRI
from .phantom import PHANTOM2D, PHANTOM3D

__all__ = [
    "DATASETS",
    "convert",
    "DatasetInfo",
    "DatasetPlan",
    "CasePlan",
    "CaseData",
    "DatasetFormatError",
    "Protocol",
    "write_dataset",
    "instances_to_3class",
    "percentile_to_uint8",
]

#: The registry: dataset name -> :class:`DatasetInfo` (default id, folder name, protocol, builder).
DATASETS: dict[str, DatasetInfo] = {info.name: info for info in (
    PHANTOM2D, PHANTOM3D, KVASIR_SEG, CTC_NUCLEI, PGBM_BRAIN_MRI, AMOS_MRI, ENDOVIS17, NEURIPS_CELLS, BRATS23,
    GENERIC)}


def convert(name: str, *, source: str | Path | None = None, out_root: str | Path | None = None,
            dataset_id: int | None = None, seed: int = 0, overwrite: bool = False, **options: Any) -> Path:
    """Convert (or generate) dataset ``name`` into nnU-Net raw format and return the dataset folder.

    Args:
        name: a key of :data:`DATASETS`.
        source: the raw release folder; defaults to the shared data for ``kvasir_seg``, ``ctc_nuclei`` and
            ``pgbm_brain_mri``; must be ``None`` for the phantoms.
        out_root: parent folder of ``Dataset<id>_<Name>``; defaults to ``nnUNet_raw``
            (:func:`xlstm_unet.paths.nnunet_dirs`).
        dataset_id: nnU-Net dataset id (1..999); defaults to the registry's.
        seed: split / generation seed, saved in ``split.json``.
        overwrite: replace an existing output folder (atomically, only after the new one is complete).
        options: dataset-specific (e.g. ``max_cases``, ``n_train``); see each module's ``build_*``.

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones), bad options, or bad input data
            (:class:`DatasetFormatError`, naming the file).
        FileExistsError: the output exists and ``overwrite`` is false.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return convert_with(DATASETS[name], source=source, out_root=out_root, dataset_id=dataset_id, seed=seed,
                        overwrite=overwrite, **options)
