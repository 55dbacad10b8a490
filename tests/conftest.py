"""Shared fixtures.

Real-data tests use ``shared_data``: when ``XLSTM_UNET_SHARED_DATA`` (default ``../shared/data``) is missing they
skip locally, but FAIL in CI (``CI=true``), so a missing data mount can never turn the suite green by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xlstm_unet.paths import shared_data_dir


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real datasets; fails in CI and skips elsewhere when it is missing."""
    root = shared_data_dir()
    if not root.is_dir():
        msg = f"real datasets not found at {root} (set XLSTM_UNET_SHARED_DATA)"
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return root


def shared_dataset(name: str):
    """Make a session fixture for one real dataset folder (``kvasir_seg``, ``ctc_nuclei``, ``pgbm_brain_mri``)."""

    @pytest.fixture(scope="session")
    def _fixture(shared_data: Path) -> Path:
        path = shared_data / name
        if not path.is_dir():
            msg = f"real dataset {name!r} not found at {path}"
            if _in_ci():
                pytest.fail(msg)
            pytest.skip(msg)
        return path

    return _fixture


kvasir_dir = shared_dataset("kvasir_seg")
ctc_dir = shared_dataset("ctc_nuclei")
pgbm_dir = shared_dataset("pgbm_brain_mri")
