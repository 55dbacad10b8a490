"""Surviving preemption: a signal or a time limit pauses a training at an iteration, and the resumed run ends with
the epochs, logs and optimiser steps of an uninterrupted one; nnUNetv2_train exits with the paused status."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from xlstm_unet.pause import (PAUSED_EXIT_CODE, TIME_LIMIT_ENV, parse_duration, pause_handling, pause_reason,
                              time_left)

BUDGET = dict(epochs=3, iterations=4, device="cpu", validate=False)


@pytest.mark.parametrize(("text", "seconds"), [
    ("5400", 5400.0), (90, 90.0), ("90s", 90.0), ("45m", 2700.0), ("3h", 10800.0), ("1h30m", 5400.0),
    ("2d", 172800.0), ("1:30:00", 5400.0), ("1-02:00:00", 93600.0), (" 0.5 ", 0.5)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["3 hours", "h", "-5", "0", "1:30", True])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="time limit"):
        parse_duration(text)
    assert parse_duration(None) is None and parse_duration("") is None


def test_pause_handling_signals_deadlines_and_restore(monkeypatch):
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda s, f: seen.append(s))
    try:
        monkeypatch.setenv(TIME_LIMIT_ENV, "1h")
        with pause_handling():
            assert 3590 < time_left() <= 3600 and pause_reason() is None
            with pause_handling(0.05):  # the earlier deadline wins inside, the outer one comes back after
                time.sleep(0.1)
                assert pause_reason() == "time limit 0:00:00"
            assert time_left() > 3500 and pause_reason() is None
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.05)
            assert pause_reason() == "signal SIGUSR1" and seen == []  # ours, not the previous handler
        assert pause_reason() is None and time_left() is None  # forgotten with the outermost block
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert seen == [signal.SIGUSR1]  # the previous handler is back
        monkeypatch.setenv(TIME_LIMIT_ENV, "soon")
        with pytest.raises(ValueError, match=TIME_LIMIT_ENV):
            with pause_handling():
                pass
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_forked_workers_keep_their_parents_handlers():
    import multiprocessing

    with pause_handling():  # multiprocessing.Pool.terminate() ends its (forked) workers with SIGTERM
        worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
        worker.start()
        time.sleep(0.5)
        worker.terminate()
        worker.join(timeout=20)
        assert worker.exitcode == -signal.SIGTERM, "a forked child kept the pause handler"
        assert pause_reason() is None  # and the parent was not asked to pause


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _adam_steps(ckpt: dict) -> set[int]:
    return {int(s["step"]) for s in ckpt["optimizer_state"]["state"].values()}


@pytest.mark.slow
def test_sigterm_mid_epoch_pauses_and_resume_matches_an_uninterrupted_run(phantom2d_prepared, monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from xlstm_unet.nnunet import train
    from xlstm_unet.nnunet.trainers import PARTIAL_EPOCH_KEY

    calls = []
    step = nnUNetTrainer.train_step

    def step_then_sigterm(self, batch):  # a real SIGTERM, arriving during the 6th step (epoch 1, iteration 2)
        out = step(self, batch)
        calls.append(self.current_epoch)
        if len(calls) == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    fallback = []

    def fallback_handler(signum, frame):  # never reached while the training handles SIGTERM
        fallback.append(signum)

    previous = signal.signal(signal.SIGTERM, fallback_handler)
    try:
        monkeypatch.setattr(nnUNetTrainer, "train_step", step_then_sigterm)
        fold = train(phantom2d_prepared, "nnunet", seed=2, **BUDGET)  # seed 2: a folder of its own
        assert calls == [0, 0, 0, 0, 1, 1] and fallback == []
        assert not (fold / "checkpoint_final.pth").exists()
        paused = _load(fold / "checkpoint_latest.pth")
        assert paused["current_epoch"] == 1  # resume in epoch 1 ...
        assert paused[PARTIAL_EPOCH_KEY]["epoch"] == 1 and len(paused[PARTIAL_EPOCH_KEY]["train_losses"]) == 2
        assert {len(v) for v in paused["logging"].values()} == {1}  # ... with epoch 0 complete in the logs
        assert _adam_steps(paused) == {6}
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGTERM) is fallback_handler and fallback == []  # restored after the pause

        train(phantom2d_prepared, "nnunet", seed=2, resume=True, **BUDGET)
    finally:
        signal.signal(signal.SIGTERM, previous)
    final = _load(fold / "checkpoint_final.pth")  # as an uninterrupted run: 3 epochs of 4 iterations
    assert final["current_epoch"] == 3
    assert {len(v) for v in final["logging"].values()} == {3}  # one entry per epoch in every list
    assert _adam_steps(final) == {12}  # 3 x 4 optimiser steps, none lost or repeated
    assert PARTIAL_EPOCH_KEY not in final and not (fold / "checkpoint_latest.pth").exists()
    with open(fold / "training_curve.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    epoch_s = [float(r["epoch_s"]) for r in rows]
    assert all(s > 0 for s in epoch_s)
    ts = final["logging"]["epoch_start_timestamps"]
    assert ts == sorted(ts)


@pytest.mark.slow
def test_nnunetv2_train_exits_with_the_paused_status_at_its_time_limit(phantom2d_prepared):
    from xlstm_unet.nnunet import trainer_name
    from xlstm_unet.nnunet.env import env_vars
    from xlstm_unet.nnunet.trainers import PARTIAL_EPOCH_KEY

    tr = trainer_name("nnunet", epochs=3, iterations=4, seed=3)
    env = {**os.environ, **env_vars(), TIME_LIMIT_ENV: "0.001", "nnUNet_n_proc_DA": "0", "OMP_NUM_THREADS": "1"}
    bin_dir = Path(sys.executable).parent
    out = subprocess.run([str(bin_dir / "nnUNetv2_train"), phantom2d_prepared, "2d", "0", "-tr", tr, "-device", "cpu"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == PAUSED_EXIT_CODE, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Paused in epoch 0 after iteration 1 of 4 (time limit 0:00:00)" in out.stdout
    fold = Path(env["nnUNet_results"]) / phantom2d_prepared / f"{tr}__nnUNetPlans__2d" / "fold_0"
    ckpt = _load(fold / "checkpoint_latest.pth")
    assert ckpt["current_epoch"] == 0 and ckpt[PARTIAL_EPOCH_KEY]["train_losses"] and _adam_steps(ckpt) == {1}
    assert not (fold / "checkpoint_final.pth").exists()
