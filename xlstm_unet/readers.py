"""Reading nnU-Net raw-format files for evaluation and viewing: dataset.json, case files, label maps, images.

Files are read with nnU-Net's own reader for their ending. nnU-Net gives 2D files a dummy first spatial axis with
a placeholder spacing (999 x the largest in-plane spacing); :func:`read_label_map` and :func:`read_image` drop it
by that one rule, so the evaluator and the slice viewer agree on which cases are 2D.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SUPPORTED_FILE_ENDINGS",
    "Case",
    "load_dataset_json",
    "case_files",
    "find_cases",
    "read_label_map",
    "read_image",
]

#: File endings the evaluators look for (nnU-Net's reader is chosen from the ending).
SUPPORTED_FILE_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".bmp", ".tif", ".tiff")

_NON_METRIC_FILES = {"dataset.json", "plans.json", "predict_from_raw_data_args.json", "summary.json"}



@dataclass(frozen=True)
class Case:
    """One case: its id and the files that hold its prediction, ground truth and (cells) ground-truth instances."""

    name: str
    pred_file: Path
    gt_file: Path
    gt_instances_file: Path | None = None


def load_dataset_json(gt_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``dataset.json`` in ``gt_dir`` or its parent (nnU-Net's raw layout: ``DatasetXXX/labelsTr``), else None."""
    for folder in (Path(gt_dir), Path(gt_dir).parent):
        f = folder / "dataset.json"
        if f.is_file():
            try:
                return json.loads(f.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{f}: not valid JSON ({err})") from err
    return None


def _detect_ending(folder: Path) -> str:
    counts: Counter[str] = Counter()
    for f in folder.iterdir():
        if f.is_file() and f.name not in _NON_METRIC_FILES:
            for e in SUPPORTED_FILE_ENDINGS:  # ".nii.gz" is tested before ".nii"
                if f.name.endswith(e):
                    counts[e] += 1
                    break
    if not counts:
        raise ValueError(f"{folder}: no label files (expected one of {', '.join(SUPPORTED_FILE_ENDINGS)})")
    (ending, _), *rest = counts.most_common()
    if rest:
        warnings.warn(f"{folder}: several file endings {dict(counts)}; using {ending!r}", stacklevel=3)
    return ending


def case_files(folder: str | os.PathLike, ending: str) -> dict[str, Path]:
    """``{case: file}`` for the ``<case><ending>`` files of ``folder`` (sorted; metadata JSON files left out)."""
    folder = Path(folder)
    return {
        f.name[: -len(ending)]: f
        for f in sorted(folder.iterdir())
        if f.is_file() and f.name.endswith(ending) and f.name not in _NON_METRIC_FILES
    }


def find_cases(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    file_ending: str | None = None,
    gt_instances_dir: str | os.PathLike | None = None,
) -> tuple[list[Case], str]:
    """Pair the ground-truth files with their predictions.

    ``file_ending`` defaults to ``dataset.json``'s ``file_ending`` (next to or above ``gt_dir``), else the most
    common supported ending in ``gt_dir``. Every ground-truth case needs a prediction (``ValueError`` naming the
    missing files); predictions without ground truth are ignored with a warning. Returns ``(cases, file_ending)``.
    """
    pred, gt = Path(pred_dir), Path(gt_dir)
    for name, folder in (("prediction", pred), ("ground-truth", gt)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{name} folder not found: {folder}")
    if file_ending is None:
        ds = load_dataset_json(gt)
        file_ending = ds.get("file_ending") if ds else None
        file_ending = file_ending or _detect_ending(gt)
    gt_files = case_files(gt, file_ending)
    if not gt_files:
        raise ValueError(f"{gt}: no ground-truth files ending in {file_ending!r}")
    pred_files = case_files(pred, file_ending)
    missing = [str(pred / f"{c}{file_ending}") for c in gt_files if c not in pred_files]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(gt_files)} ground-truth case(s) have no prediction: "
            + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        )
    extra = sorted(set(pred_files) - set(gt_files))
    if extra:
        warnings.warn(
            f"{pred}: {len(extra)} prediction(s) without ground truth are ignored: {extra[:10]}", stacklevel=2
        )
    inst_files: dict[str, Path] = {}
    if gt_instances_dir is not None:
        inst = Path(gt_instances_dir)
        if not inst.is_dir():
            raise FileNotFoundError(f"ground-truth instance folder not found: {inst}")
        inst_files = case_files(inst, _detect_ending(inst))
        lacking = [c for c in gt_files if c not in inst_files]
        if lacking:
            raise ValueError(f"{inst}: no instance label file for case(s) {lacking[:10]}")
    cases = [Case(c, pred_files[c], f, inst_files.get(c)) for c, f in gt_files.items()]
    return cases, file_ending


@lru_cache(maxsize=None)
def _reader(ending: str, example: str):
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    return determine_reader_writer_from_file_ending(ending, example, allow_nonmatching_filename=True, verbose=False)()


def _ending(path: Path) -> str:
    return next((e for e in SUPPORTED_FILE_ENDINGS if path.name.endswith(e)), path.suffix)


def _drop_2d_axis(arr: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, tuple[float, ...]]:
    """(C, 1, H, W) -> (C, H, W) for nnU-Net's 2D convention: a dummy first spatial axis whose spacing is the
    placeholder 999 * max(in-plane spacing); anything else (a real one-slice volume too) is returned unchanged."""
    if arr.ndim == 4 and arr.shape[1] == 1 and math.isclose(spacing[0], 999 * max(spacing[1:])):
        return arr[:, 0], spacing[1:]
    return arr, spacing


def read_label_map(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read a label/segmentation file with nnU-Net's reader for its ending.

    Returns ``(labels, spacing)``: an int64 array ``(*spatial)`` (``(H, W)`` for 2D files, ``(D, H, W)`` for 3D; the
    axis order of nnU-Net, i.e. z, y, x for NIfTI) and the spacing per axis in the same order. For 2D files nnU-Net
    adds a dummy axis with a placeholder spacing (999 x the largest spacing); it is dropped here. PNG/BMP/TIFF
    images carry no spacing and get 1.
    """
    p = Path(path)
    try:
        seg, props = _reader(_ending(p), str(p)).read_seg(str(p))
    except Exception as err:  # any reader failure becomes a clear per-file error
        raise ValueError(f"{p}: could not read label file ({type(err).__name__}: {err})") from err
    arr, spacing = _drop_2d_axis(np.asarray(seg), tuple(float(s) for s in props["spacing"]))
    arr = arr[0]  # drop nnU-Net's channel axis: (1, *spatial) -> (*spatial)
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)) or (arr.size and arr.min() < 0):
        raise ValueError(f"{p}: expected non-negative integer labels")
    return arr.astype(np.int64), spacing


def read_image(channel_files: Sequence[str | os.PathLike]) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read one case's image, one file per channel (``<case>_0000<ending>``, ...), with nnU-Net's reader.

    Returns ``(image, spacing)``: float32 ``(C, *spatial)`` and the spacing per spatial axis, with the same 2D rule
    as :func:`read_label_map` (an RGB PNG is one file holding 3 channels).
    """
    files = [str(f) for f in channel_files]
    if not files:
        raise ValueError("read_image needs at least one channel file")
    try:
        img, props = _reader(_ending(Path(files[0])), files[0]).read_images(files)
    except Exception as err:  # any reader failure becomes a clear error naming the files
        raise ValueError(f"{files}: could not read image ({type(err).__name__}: {err})") from err
    arr, spacing = _drop_2d_axis(np.asarray(img), tuple(float(s) for s in props["spacing"]))
    return arr, spacing
