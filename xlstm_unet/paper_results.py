"""The numbers the xLSTM-UNet paper reports (Chen et al., arXiv 2407.01530), transcribed from its Tables 1-3.

Source: ``shared/paper/xlstm-unet-paper.txt``; each :class:`PaperValue` says which table, row and column it came
from. Values are stored exactly as printed (Tables 1 and 3 as fractions with ``± std``; Table 2 in percent for
Dice and millimetres for HD95, without std). :attr:`PaperValue.mean_fraction` converts percent to fractions so
the values sit beside our measurements.

Method keys follow the results layout (``nnunet``, ``segresnet``, ``unetr``, ``swinunetr``, ``swinunetr_v2``,
``mednext``, ``uxnet``, ``segmamba``, ``umamba_bot``, ``umamba_enc``, ``xlstm_bot``, ``xlstm_enc``). Table 2's
single "Ours" row does not say which variant it is; it is stored under ``xlstm`` and returned for both
``xlstm_bot`` and ``xlstm_enc`` with a note.

Table 2's row printed "SegFormer" holds SegMamba's published BraTS 2023 results (Xing et al., MICCAI 2024: Dice WT
93.61, TC 92.65, ET 87.71, the numbers SegMamba reports for itself), and §3.3 names SegMamba as the 3D baseline;
so that row is stored under ``segmamba``, with its printed label and a note saying so. The paper's other BraTS rows
(SegresNet, UX-Net, MedNeXt, UNETR, SwinUNETR, SwinUNETR-V2) are the baselines SegMamba compares against, in
SegMamba's order; that their values are copied from SegMamba's table as well could not be checked offline.

Metric keys are the per_case.csv columns written by :mod:`xlstm_unet.metrics` (matched case-insensitively):
``dice_mean``, ``nsd_mean``, ``f1`` (Table 1 "Cells in Microscopy" is the F1 score, §3.3), ``dice_wt``,
``hd95_wt``, ``dice_tc``, ``hd95_tc``, ``dice_et``, ``hd95_et`` and, for Table 2's "Avg" column, ``dice_mean`` and
``hd95_mean``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "PaperValue",
    "PAPER_DATASETS",
    "PAPER_VALUES",
    "paper_value",
    "match_dataset",
]

Unit = Literal["fraction", "percent", "mm"]


@dataclass(frozen=True)
class PaperValue:
    """One reported cell: ``mean`` (± ``std`` where printed) in ``unit``, and where it came from."""

    dataset: str
    method: str
    metric: str
    mean: float
    std: float | None
    unit: Unit
    table: str
    row: str
    column: str
    note: str = ""

    @property
    def mean_fraction(self) -> float:
        """The mean on our scale: percent / 100; fractions and millimetres unchanged."""
        return self.mean / 100.0 if self.unit == "percent" else self.mean

    @property
    def std_fraction(self) -> float:
        """The std on our scale (NaN where the paper prints none)."""
        if self.std is None:
            return float("nan")
        return self.std / 100.0 if self.unit == "percent" else self.std


#: The paper's datasets: key -> (name in the paper, aliases used to recognise our dataset folder names).
PAPER_DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "abdomen_mri_2d": ("Organs in Abdomen MRI (2D)", ("abdomenmri2d", "abdomenmr2d", "abdomen2d", "amos2d")),
    "endoscopy": ("Instruments in Endoscopy", ("endoscopy", "endovis", "instruments")),
    "microscopy_cells": ("Cells in Microscopy", ("microscopy", "microscopycells", "cells", "neurips22cellseg",
                                                 "neuripscells")),
    "brats2023": ("BraTS2023", ("brats", "brats2023", "brats3d")),
    "abdomen_mri_3d": ("Organs in Abdomen MRI 3D", ("abdomenmri3d", "abdomenmr3d", "abdomen3d", "amos3d")),
}

_T1_ROWS = {
    "nnU-Net": "nnunet",
    "SegResNet": "segresnet",
    "UNETR": "unetr",
    "SwinUNETR": "swinunetr",
    "U-Mamba_Bot": "umamba_bot",
    "U-Mamba_Enc": "umamba_enc",
    "Ours_bot": "xlstm_bot",
    "Ours_enc": "xlstm_enc",
}

# Table 1: (DSC, NSD) Abdomen MRI, (DSC, NSD) Endoscopy, F1 Microscopy; "mean ± std" as printed.
_T1 = {
    "nnU-Net": ((0.7450, 0.1117), (0.8153, 0.1145), (0.6264, 0.3024), (0.6412, 0.3074), (0.5383, 0.2657)),
    "SegResNet": ((0.7317, 0.1379), (0.8034, 0.1386), (0.5820, 0.3268), (0.5968, 0.3303), (0.5411, 0.2633)),
    "UNETR": ((0.5747, 0.1672), (0.6309, 0.1858), (0.5017, 0.3201), (0.5168, 0.3235), (0.4357, 0.2572)),
    "SwinUNETR": ((0.7028, 0.1348), (0.7669, 0.1442), (0.5528, 0.3089), (0.5683, 0.3123), (0.3967, 0.2621)),
    "U-Mamba_Bot": ((0.7588, 0.1051), (0.8285, 0.1074), (0.6540, 0.3008), (0.6692, 0.3050), (0.5389, 0.2817)),
    "U-Mamba_Enc": ((0.7625, 0.1082), (0.8327, 0.1087), (0.6303, 0.3067), (0.6451, 0.3104), (0.5607, 0.2784)),
    "Ours_bot": ((0.7636, 0.1006), (0.8322, 0.1034), (0.6843, 0.3005), (0.7001, 0.3046), (0.5818, 0.2386)),
    "Ours_enc": ((0.7747, 0.0950), (0.8374, 0.0951), (0.6843, 0.3024), (0.7001, 0.3067), (0.6036, 0.2435)),
}
_T1_COLS = (
    ("abdomen_mri_2d", "dice_mean", "Organs in Abdomen MRI / DSC"),
    ("abdomen_mri_2d", "nsd_mean", "Organs in Abdomen MRI / NSD"),
    ("endoscopy", "dice_mean", "Instruments in Endoscopy / DSC"),
    ("endoscopy", "nsd_mean", "Instruments in Endoscopy / NSD"),
    ("microscopy_cells", "f1", "Cells in Microscopy (F1)"),
)

_T2_ROWS = {
    "SegresNet": "segresnet",
    "UX-Net": "uxnet",
    "MedNeXt": "mednext",
    "UNETR": "unetr",
    "SwinUNETR": "swinunetr",
    "SwinUNETR-V2": "swinunetr_v2",
    "SegFormer": "segmamba",
    "Ours": "xlstm",
}
# Table 2: WT Dice, WT HD95, TC Dice, TC HD95, ET Dice, ET HD95, Avg Dice, Avg HD95 (Dice in %, HD95 in mm).
_T2 = {
    "SegresNet": (92.02, 4.07, 89.10, 4.08, 83.66, 3.88, 88.26, 4.01),
    "UX-Net": (93.13, 4.56, 90.03, 5.68, 85.91, 4.19, 89.69, 4.81),
    "MedNeXt": (92.41, 4.98, 87.75, 4.67, 83.96, 4.51, 88.04, 4.72),
    "UNETR": (92.19, 6.17, 86.39, 5.29, 84.48, 5.03, 87.68, 5.49),
    "SwinUNETR": (92.71, 5.22, 87.79, 4.42, 84.21, 4.48, 88.23, 4.70),
    "SwinUNETR-V2": (93.35, 5.01, 89.65, 4.41, 85.17, 4.41, 89.39, 4.51),
    "SegFormer": (93.61, 3.37, 92.65, 3.85, 87.71, 3.48, 91.32, 3.56),
    "Ours": (93.84, 3.89, 92.77, 4.06, 88.79, 4.14, 91.80, 4.03),
}
_T2_COLS = (
    ("dice_wt", "WT / Dice", "percent"),
    ("hd95_wt", "WT / HD95", "mm"),
    ("dice_tc", "TC / Dice", "percent"),
    ("hd95_tc", "TC / HD95", "mm"),
    ("dice_et", "ET / Dice", "percent"),
    ("hd95_et", "ET / HD95", "mm"),
    ("dice_mean", "Avg / Dice", "percent"),
    ("hd95_mean", "Avg / HD95", "mm"),
)

_T3_ROWS = {
    "nnU-Net": "nnunet",
    "SegResNet": "segresnet",
    "UNETR": "unetr",
    "SwinUNETR": "swinunetr",
    "U-Mamba_Bot": "umamba_bot",
    "xLSTM-UNet_Bot": "xlstm_bot",
}
# Table 3: DSC, NSD ("mean ± std" as printed).
_T3 = {
    "nnU-Net": ((0.8309, 0.0769), (0.8996, 0.0729)),
    "SegResNet": ((0.8146, 0.0959), (0.8841, 0.0917)),
    "UNETR": ((0.6867, 0.1488), (0.7440, 0.1627)),
    "SwinUNETR": ((0.7565, 0.1394), (0.8218, 0.1409)),
    "U-Mamba_Bot": ((0.8453, 0.0673), (0.9121, 0.0634)),
    "xLSTM-UNet_Bot": ((0.8483, 0.0774), (0.9153, 0.0596)),
}


def _build() -> tuple[PaperValue, ...]:
    out: list[PaperValue] = []
    for row, vals in _T1.items():
        for (ds, metric, col), (mean, std) in zip(_T1_COLS, vals):
            out.append(PaperValue(ds, _T1_ROWS[row], metric, mean, std, "fraction", "Table 1", row, col))
    for row, vals in _T2.items():
        note = "Table 2 reports one 'Ours' row without naming the variant" if row == "Ours" else ""
        if row == "SegFormer":
            note = ("printed as 'SegFormer': these are SegMamba's own published BraTS 2023 results (Xing et al., "
                    "MICCAI 2024; Dice WT 93.61 / TC 92.65 / ET 87.71), and §3.3 names SegMamba as the 3D baseline")
        for (metric, col, unit), mean in zip(_T2_COLS, vals):
            out.append(PaperValue("brats2023", _T2_ROWS[row], metric, mean, None, unit, "Table 2", row, col, note))
    for row, vals in _T3.items():
        for (metric, col), (mean, std) in zip((("dice_mean", "DSC"), ("nsd_mean", "NSD")), vals):
            out.append(PaperValue("abdomen_mri_3d", _T3_ROWS[row], metric, mean, std, "fraction", "Table 3", row, col))
    return tuple(out)


#: Every transcribed cell.
PAPER_VALUES: tuple[PaperValue, ...] = _build()
_INDEX = {(v.dataset, v.method, v.metric): v for v in PAPER_VALUES}


def paper_value(dataset: str, method: str, metric: str) -> PaperValue | None:
    """The paper's value for (dataset key, method, metric), or None where the paper reports none.

    ``metric`` is matched case-insensitively (``dice_WT`` == ``dice_wt``). For ``xlstm_bot`` / ``xlstm_enc`` on
    BraTS, Table 2's unnamed "Ours" row is returned (its ``note`` says so).
    """
    if dataset not in PAPER_DATASETS:
        raise ValueError(f"unknown paper dataset {dataset!r}; expected one of {list(PAPER_DATASETS)}")
    key = (dataset, method, metric.lower())
    if key in _INDEX:
        return _INDEX[key]
    if method in ("xlstm_bot", "xlstm_enc"):
        return _INDEX.get((dataset, "xlstm", metric.lower()))
    return None


#: Folder names (normalised) of datasets that the paper uses in 2D and in 3D: the configuration decides.
_BY_DIMENSION: dict[str, tuple[str, str]] = {
    "amosmri": ("abdomen_mri_2d", "abdomen_mri_3d"),
    "amos": ("abdomen_mri_2d", "abdomen_mri_3d"),
    "abdomenmri": ("abdomen_mri_2d", "abdomen_mri_3d"),
}


def match_dataset(name: str, configuration: str | None = None) -> str | None:
    """The paper dataset key for one of our dataset folder names, or None (e.g. ``Dataset702_EndoVis17`` ->
    ``endoscopy``; ``Dataset901_Phantom2D`` -> None).

    The ``DatasetNNN_`` prefix is dropped, the rest lower-cased without separators and compared with the aliases
    in :data:`PAPER_DATASETS` (exact match first, then prefix). The abdomen MRI converter's folder
    (``Dataset701_AMOSMRI``) serves Table 1 (2D) and Table 3 (3D): ``configuration`` (``2d``, ``3d_fullres...``)
    picks one, and without it the name gives None.
    """
    norm = re.sub(r"[^a-z0-9]", "", re.sub(r"^Dataset\d+_", "", name, flags=re.IGNORECASE).lower())
    if norm in _BY_DIMENSION:
        if configuration is None:
            return None
        return _BY_DIMENSION[norm][1 if configuration.startswith("3d") else 0]
    for key, (_, aliases) in PAPER_DATASETS.items():
        if norm in aliases:
            return key
    for key, (_, aliases) in PAPER_DATASETS.items():
        if any(norm.startswith(a) for a in aliases if len(a) >= 5):
            return key
    return None
