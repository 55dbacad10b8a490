"""xlstm_unet.benchmarking: one benchmark row per process, with its own peak RSS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xlstm_unet.benchmarking import ChildFailed, peak_memory_mb, peak_rss_mb, run_in_child, start_method


def _touch_mb(mb: int) -> dict:
    """Allocate ``mb`` MiB and write one byte per page (resident); return this process's peak RSS."""
    block = bytearray(mb * 2**20)
    block[::4096] = b"x" * len(block[::4096])
    return {"peak_mb": peak_rss_mb(), "len": len(block)}


def _raise() -> None:
    raise ValueError("no such stage: 7")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def test_each_child_has_its_own_peak_rss():
    big = run_in_child(_touch_mb, 512)
    small = run_in_child(_touch_mb, 1)
    assert (big["len"], small["len"]) == (512 * 2**20, 2**20)  # results come back through the pipe
    # the first child's 512 MiB count in its peak, not in the next child's (which starts from this process's RSS)
    assert big["peak_mb"] - small["peak_mb"] > 400


def test_child_errors_and_deaths_are_reported():
    with pytest.raises(ChildFailed, match="ValueError: no such stage: 7"):
        run_in_child(_raise)
    with pytest.raises(ChildFailed, match="killed by signal 9"):
        run_in_child(_die)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.slow)])
def test_runs_in_another_process(device):
    # "cuda" spawns a fresh interpreter (whether or not this machine has a GPU: the function uses none)
    pid, value = run_in_child(_pid_and_square, 7, device=device)
    assert value == 49 and pid != os.getpid()


def test_peak_memory_on_cpu_is_the_peak_rss():
    before = peak_rss_mb()
    assert before <= peak_memory_mb("cpu") <= peak_memory_mb(torch.device("cpu")) <= peak_rss_mb()
    assert before > 50  # this process has imported torch: tens of MB at least, in MiB not KiB or bytes


def test_start_method():
    assert start_method("cuda") == "spawn"
    assert start_method("cpu") == ("fork" if sys.platform.startswith("linux") else "spawn")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_gpu_checks_script_says_it_needs_a_gpu(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_checks.sh"
    proc = subprocess.run(
        ["bash", str(script), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PY": sys.executable},
    )
    assert proc.returncode == 2
    assert "sees no CUDA device" in proc.stderr
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-written
