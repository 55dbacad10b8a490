"""Where things live: the repository root, the real shared datasets, and nnU-Net's folders.

Environment variables (all optional):

- ``XLSTM_UNET_SHARED_DATA``: the real datasets (``kvasir_seg``, ``ctc_nuclei``, ``pgbm_brain_mri``).
  Default: ``../shared/data`` relative to the repository root.
- ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``: nnU-Net's own variables. When unset, they default
  to ``data/nnUNet_raw``, ``data/nnUNet_preprocessed`` and ``data/nnUNet_results`` in the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "REPO_ROOT",
    "NNUNET_VARS",
    "shared_data_dir",
    "nnunet_dirs",
    "ensure_nnunet_env",
]

#: The repository root (the folder that holds ``xlstm_unet/``).
REPO_ROOT: Path = Path(__file__).resolve().parent.parent

#: nnU-Net's folder variables and their default sub-folders of ``data/``.
NNUNET_VARS: tuple[str, ...] = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def shared_data_dir() -> Path:
    """The folder with the real datasets: ``$XLSTM_UNET_SHARED_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("XLSTM_UNET_SHARED_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "data").resolve()


def nnunet_dirs(data_root: str | os.PathLike | None = None) -> dict[str, Path]:
    """nnU-Net's three folders: the environment's values, else ``<data_root>/<name>`` (default ``<repo>/data``)."""
    root = Path(data_root) if data_root is not None else REPO_ROOT / "data"
    out = {}
    for name in NNUNET_VARS:
        val = os.environ.get(name)
        out[name] = Path(val).expanduser().resolve() if val else (root / name).resolve()
    return out


def ensure_nnunet_env(data_root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Set nnU-Net's variables in ``os.environ`` where unset, create the folders, and return them.

    nnU-Net reads these variables when ``nnunetv2.paths`` is first imported, so call this before importing
    nnU-Net modules (the :mod:`xlstm_unet.nnunet` API does).
    """
    dirs = nnunet_dirs(data_root)
    for name, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault(name, str(path))
    return dirs
