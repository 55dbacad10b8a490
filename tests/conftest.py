"""Shared fixtures.

Real-data tests use ``shared_data``: when ``XLSTM_UNET_SHARED_DATA`` (default ``../shared/data``) is missing they
skip locally, but FAIL in CI (``CI=true``), so a missing data mount can never turn the suite green by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

# One worker process for nnU-Net's pools and augmentation in-process: on 2 cores, spawning workers (each
# re-importing nnU-Net) costs more than it saves. Set before anything imports nnunetv2.configuration.
os.environ.setdefault("nnUNet_def_n_proc", "1")
os.environ.setdefault("nnUNet_n_proc_DA", "0")
# Under pytest-xdist (`make test` runs two workers), one intra-op thread per worker and per child process it starts
# (CLI calls, notebook kernels): two workers of two threads each would oversubscribe 2 cores, and torch's OpenMP
# threads then spin against each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402

from xlstm_unet.paths import shared_data_dir  # noqa: E402


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread avoids thread contention on a busy 2-core machine; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _missing_data(msg: str) -> NoReturn:
    """CI must have the real datasets, so there a missing one fails the test; elsewhere it skips."""
    if _in_ci():
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real datasets; fails in CI and skips elsewhere when it is missing."""
    root = shared_data_dir()
    if not root.is_dir():
        _missing_data(f"real datasets not found at {root} (set XLSTM_UNET_SHARED_DATA)")
    return root


def shared_dataset(name: str):
    """Make a session fixture for one real dataset folder (``kvasir_seg``, ``ctc_nuclei``, ``pgbm_brain_mri``)."""

    @pytest.fixture(scope="session")
    def _fixture(shared_data: Path) -> Path:
        path = shared_data / name
        if not path.is_dir():
            _missing_data(f"real dataset {name!r} not found at {path}")
        return path

    return _fixture


kvasir_dir = shared_dataset("kvasir_seg")
ctc_dir = shared_dataset("ctc_nuclei")
pgbm_dir = shared_dataset("pgbm_brain_mri")


# ---------------------------------------------------------------------------------------------------------------
# nnU-Net folders for the session: one temporary tree, with a small prepared phantom shared by the nnU-Net,
# experiment and notebook tests (conversion + planning + preprocessing once per session).

@pytest.fixture(scope="session")
def nnunet_root(tmp_path_factory) -> Path:
    """Point nnU-Net's three variables at a session temp folder (restored afterwards)."""
    root = tmp_path_factory.mktemp("nnunet")
    names = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
    old = {k: os.environ.get(k) for k in names}
    for k in names:
        (root / k).mkdir()
        os.environ[k] = str(root / k)
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


PHANTOM2D_ID = 901


@pytest.fixture(scope="session")
def phantom2d_prepared(nnunet_root: Path) -> str:
    """A small 2D phantom (synthetic), converted, planned and preprocessed; returns its dataset name."""
    from xlstm_unet.datasets import convert
    from xlstm_unet.nnunet import prepare

    raw = convert("phantom2d", out_root=nnunet_root / "nnUNet_raw", dataset_id=PHANTOM2D_ID, seed=0,
                  n_train=10, n_test=3, shape=(64, 64))
    prepare(PHANTOM2D_ID, configurations=("2d",), num_processes=1)
    return raw.name


PHANTOM3D_ID = 902


@pytest.fixture(scope="session")
def phantom3d_prepared(nnunet_root: Path) -> str:
    """A small 3D phantom (synthetic, 4 channels, BraTS-like regions; five training cases, nnU-Net's minimum for
    its 5-fold split, and one test case of 16 x 32 x 32), converted, planned and preprocessed (3d_fullres)."""
    from xlstm_unet.datasets import convert
    from xlstm_unet.nnunet import prepare

    raw = convert("phantom3d", out_root=nnunet_root / "nnUNet_raw", dataset_id=PHANTOM3D_ID, seed=0,
                  n_train=5, n_test=1, shape_zyx=(16, 32, 32))
    prepare(PHANTOM3D_ID, configurations=("3d_fullres",), num_processes=1)
    return raw.name


@pytest.fixture(scope="session")
def phantom2d_model(phantom2d_prepared: str) -> Path:
    """An xLSTM-UNet Enc trained on the 2D phantom for 1 epoch of 1 iteration, with nnU-Net's final validation
    (which export needs); returns its ``fold_0`` folder."""
    from xlstm_unet.nnunet import train

    return train(phantom2d_prepared, "xlstm_enc", epochs=1, iterations=1, device="cpu", validate=True)


KVASIR_ID = 921  # not the converter's default 911, which the Kvasir notebook test converts with other options


@pytest.fixture(scope="session")
def kvasir_prepared(kvasir_dir: Path, nnunet_root: Path) -> str:
    """The first 10 real Kvasir-SEG cases (RGB, 256 x 256), converted (test_fraction 0.25), planned and
    preprocessed; returns the dataset name. (nnU-Net's integrity check of this conversion is in
    test_datasets_real.py; skipping it here saves a pool of spawned workers.)"""
    from xlstm_unet.datasets import convert
    from xlstm_unet.nnunet import prepare

    raw = convert("kvasir_seg", source=kvasir_dir, out_root=nnunet_root / "nnUNet_raw", dataset_id=KVASIR_ID,
                  max_cases=10, test_fraction=0.25, progress=False)
    prepare(KVASIR_ID, num_processes=1, verify=False)
    return raw.name


# Session and module fixtures that take a minute to build (conversion, planning, preprocessing, a training run). Under
# pytest-xdist (`--dist loadgroup`) every test that uses one of them runs on the same worker, so each is built once.
# (A fixture's users also list the fixtures it depends on: kvasir_model's users fall in kvasir_prepared's group.)
_SHARED_FIXTURES = ("phantom3d_prepared", "kvasir_prepared", "phantom2d_model", "trained_enc", "split_dataset",
                    "phantom2d_default", "phantom3d_default")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the marks into the nodeids' group suffix
def pytest_collection_modifyitems(config, items):  # noqa: ANN001 - pytest hook
    for item in items:
        shared = [name for name in _SHARED_FIXTURES if name in getattr(item, "fixturenames", ())]
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared[0]))
