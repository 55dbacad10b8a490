"""Helpers for the dataset tests: nnU-Net's integrity check run in-process, folder hashing, tiny fixture writers."""

from __future__ import annotations

import hashlib
import itertools
import types
from pathlib import Path

import numpy as np


class _SerialPool:
    """Stands in for ``multiprocessing.Pool`` inside nnU-Net's verify module: runs ``starmap`` in this process."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __enter__(self) -> "_SerialPool":
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def starmap(self, func, iterable):
        return list(itertools.starmap(func, iterable))


def verify_nnunet(folder: Path, monkeypatch) -> None:
    """Run ``nnunetv2...verify_dataset_integrity`` on ``folder`` with its checks executed in-process.

    The checks (label values, shapes, spacing, channel count, NaN) are nnU-Net's own functions; only the spawn pool
    is replaced, because starting spawn workers that re-import nnU-Net costs ~10-20 s per call on 2 busy cores.
    """
    import nnunetv2.experiment_planning.verify_dataset_integrity as vdi

    monkeypatch.setattr(vdi, "multiprocessing", types.SimpleNamespace(
        get_context=lambda *_a, **_k: types.SimpleNamespace(Pool=_SerialPool)))
    vdi.verify_dataset_integrity(str(folder), num_processes=1)


def tree_digest(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def snapshot_mtimes(folder: Path) -> dict[str, tuple[int, str]]:
    """``{relative path: (mtime_ns, sha256)}``: to check that sources were not modified."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_nifti(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    """Write ``arr`` ``(X, Y, Z)`` as NIfTI with a diagonal affine of ``spacing`` (mm)."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([*spacing, 1.0])), str(path))
    return path


def write_png(path: Path, arr: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)
