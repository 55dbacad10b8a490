"""BraTS 2023 adult glioma (GLI) -> ``Dataset704_BraTS2023`` (region-based WT/TC/ET, SegMamba's 70/10/20 split).

Format source: the BraTS 2023 GLI challenge release on Synapse (syn51156910), folder
``ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData`` as described on the challenge page and in its data README
(case folders ``BraTS-GLI-<5-digit patient>-<3-digit timepoint>``, files ``<case>-t1n|t1c|t2w|t2f|seg.nii.gz``,
1 mm isotropic 240 x 240 x 155, labels 0 background, 1 NCR necrotic core, 2 ED edema, 3 ET enhancing tumour).

Raw layout::

    <source>/BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz
                                 BraTS-GLI-00000-000-t1c.nii.gz
                                 BraTS-GLI-00000-000-t2w.nii.gz
                                 BraTS-GLI-00000-000-t2f.nii.gz
                                 BraTS-GLI-00000-000-seg.nii.gz

Conversion: channels ``0 t1n, 1 t1c, 2 t2w, 3 t2f`` and the seg are copied byte for byte (headers kept); the label
file values stay 1/2/3 and ``dataset.json`` declares nnU-Net regions ``whole_tumor [1, 2, 3]``,
``tumor_core [1, 3]``, ``enhancing_tumor [3]`` with ``regions_class_order [2, 1, 3]`` (painting WT as 2, then TC as
1, then ET as 3 restores the BraTS label values). Split (SegMamba protocol): a seeded shuffle of the sorted case ids
into 70 % train, 10 % validation, 20 % test; train + validation go to ``imagesTr`` (nnU-Net runs its own
cross-validation; ``split.json`` records the validation ids), the test cases to ``imagesTs``. Protocol ``brats``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from ._common import (
    CasePlan,
    DatasetFormatError,
    DatasetInfo,
    DatasetPlan,
    Protocol,
    check_modality_files,
    load_nifti_case,
    require_dir,
)

__all__ = ["build_brats23", "BRATS23", "BRATS_MODALITIES", "BRATS_REGIONS", "brats_split"]

BRATS_MODALITIES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
#: nnU-Net region labels (file values: 1 NCR, 2 ED, 3 ET) and their class order.
BRATS_REGIONS: dict[str, int | list[int]] = {
    "background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [1, 3], "enhancing_tumor": [3]}
BRATS_REGIONS_CLASS_ORDER: tuple[int, ...] = (2, 1, 3)

_SOURCE = "BraTS 2023 adult glioma (ASNR-MICCAI-BraTS2023-GLI), https://www.synapse.org/#!Synapse:syn51156910"


def brats_split(ids: list[str], seed: int, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
                ) -> tuple[list[str], list[str], list[str]]:
    """Seeded shuffle of the sorted ``ids`` into ``(train, val, test)`` by ``fractions`` (SegMamba's 70/10/20).

    Sizes: ``n_train = int(n * f_train)``, ``n_val = int(n * f_val)``, test = the rest (at least one case each
    for train and test when ``n >= 2``). ``fractions=(1, 0, 0)`` puts every case in train, ``(0, 0, 1)`` every case
    in test (e.g. new cases to predict). Each list is returned sorted.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}: e.g. "
                         f"(0.7, 0.1, 0.2), (1, 0, 0) for all train or (0, 0, 1) for all test")
    ids = sorted(ids)
    if fractions[0] == 1.0 or fractions[2] == 1.0:
        return (ids, [], []) if fractions[0] == 1.0 else ([], [], ids)
    if len(ids) < 2:
        raise ValueError(f"need at least 2 cases to split, got {len(ids)}: add cases, or pass fractions=(1, 0, 0) "
                         f"(all train) or fractions=(0, 0, 1) (all test)")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_train = max(1, int(len(ids) * fractions[0]))
    n_val = int(len(ids) * fractions[1])
    n_train = min(n_train, len(ids) - 1)
    n_val = min(n_val, len(ids) - 1 - n_train)
    return sorted(order[:n_train]), sorted(order[n_train:n_train + n_val]), sorted(order[n_train + n_val:])


def _case_files(case_dir: Path) -> tuple[list[Path], Path]:
    cid = case_dir.name
    return check_modality_files({m: case_dir / f"{cid}-{m}.nii.gz" for m in BRATS_MODALITIES},
                                case_dir / f"{cid}-seg.nii.gz", f"case {cid}")


def build_brats23(source: Path, *, seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                  max_cases: int | None = None) -> DatasetPlan:
    """Plan the BraTS 2023 conversion (see the module docstring); every case's headers are checked here.

    ``max_cases`` keeps the first case folders in sorted order (quick runs).
    """
    source = require_dir(Path(source), "BraTS 2023 training data")
    dirs = sorted(p for p in source.iterdir() if p.is_dir() and p.name.startswith("BraTS-"))
    if not dirs:
        raise DatasetFormatError(source, "empty dataset: no case folders BraTS-GLI-XXXXX-XXX/")
    if max_cases is not None:
        dirs = dirs[:max_cases]
    files = {d.name: _case_files(d) for d in dirs}
    train, val, test = brats_split(list(files), seed, tuple(fractions))  # type: ignore[arg-type]
    subset = {**{c: "train" for c in train + val}, **{c: "test" for c in test}}
    cases = tuple(CasePlan(case_id=cid, subset=subset[cid], load=partial(load_nifti_case, *files[cid]),  # type: ignore[arg-type]
                           files=(*files[cid][0], files[cid][1])) for cid in sorted(files))
    return DatasetPlan(
        name="BraTS2023",
        description="BraTS 2023 adult glioma (real data): t1n, t1c, t2w, t2f; labels 1 NCR, 2 ED, 3 ET; nnU-Net "
                    "region-based training on whole tumour, tumour core and enhancing tumour.",
        reference=_SOURCE,
        licence="BraTS 2023 data use agreement (Synapse); cite the BraTS 2023 papers",
        channel_names={str(i): m for i, m in enumerate(BRATS_MODALITIES)},
        labels=dict(BRATS_REGIONS),
        regions_class_order=BRATS_REGIONS_CLASS_ORDER,
        file_ending=".nii.gz",
        protocol=Protocol.BRATS,
        synthetic=False,
        source=_SOURCE,
        seed=seed,
        cases=cases,
        dims=3,
        extra={"label_values": {"necrotic_core": 1, "edema": 2, "enhancing_tumor": 3},
               "options": {"fractions": list(fractions), "max_cases": max_cases}},
        split_extra={"val": val, "method": f"seeded shuffle train/val/test = {list(fractions)} (SegMamba "
                                           "protocol); val cases are in imagesTr"},
    )


BRATS23 = DatasetInfo(
    name="brats23", default_id=704, folder_name="BraTS2023", protocol=Protocol.BRATS,
    summary="BraTS 2023 glioma, 3D 4 modalities, WT/TC/ET regions, 70/10/20 split (real; download needed)",
    build=build_brats23, download="https://www.synapse.org/#!Synapse:syn51156910 (BraTS 2023 GLI training data)",
    raw_layout="BraTS-GLI-XXXXX-XXX/BraTS-GLI-XXXXX-XXX-{t1n,t1c,t2w,t2f,seg}.nii.gz")
