"""Pausing a training cleanly: a wall-clock budget, and the signals a cluster sends before it stops a job.

A training pauses when one of :data:`PAUSE_SIGNALS` arrives or its time limit runs out: our trainers
(:class:`xlstm_unet.nnunet.trainers.nnUNetTrainerRecipe`) then save ``checkpoint_latest.pth`` at the next training
iteration and stop, ``nnUNetv2_train`` exits with :data:`PAUSED_EXIT_CODE`, :func:`xlstm_unet.experiment.run_experiment`
raises :class:`ExperimentPaused`, and ``xlstm-unet run-all`` reports the run as ``paused``. Running the same command
again resumes from the checkpoint (docs/cluster.md).

Time limits are durations: a number of seconds (``5400``), units (``90m``, ``3h``, ``1h30m``, ``2d``) or
``[D-]H:MM:SS`` (SLURM's notation). The budget counts from where it is given: ``train(..., time_limit=...)`` and
``XLSTM_UNET_TIME_LIMIT`` read by ``nnUNetv2_train`` from the start of the training; ``run_experiment`` from its
own start (the conversion and planning count too); ``run-all --time-limit`` from the start of the command (locally)
or of each job (SLURM). Nested limits keep the earliest deadline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

__all__ = [
    "PAUSED_EXIT_CODE",
    "TIME_LIMIT_ENV",
    "PAUSE_SIGNALS",
    "ExperimentPaused",
    "parse_duration",
    "format_duration",
    "pause_reason",
    "time_left",
    "pause_handling",
]

log = logging.getLogger(__name__)

#: Exit status of ``nnUNetv2_train`` (and ``xlstm-unet run-all``) when a training paused instead of finishing:
#: distinct from success (0), failure (1) and usage errors (2), so that a job script can tell "run me again".
PAUSED_EXIT_CODE = 3
TIME_LIMIT_ENV = "XLSTM_UNET_TIME_LIMIT"
#: SIGTERM: SLURM (and most schedulers) at the time limit or on preemption, before SIGKILL; SIGUSR1: the usual
#: ``sbatch --signal=USR1@<seconds>`` early warning; SIGUSR2: submitit's early warning (``--signal=USR2@90``).
PAUSE_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, name))

_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_UNITS_RE = re.compile(r"^(?:\d+(?:\.\d+)?[dhms])+$")
_CLOCK_RE = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})$")


class ExperimentPaused(RuntimeError):
    """A training of an experiment paused (time limit or signal); its checkpoint is kept, run again to resume."""


def parse_duration(value: str | float | int | None, what: str = "time limit") -> float | None:
    """Seconds in ``value`` (see the module docstring for the forms); ``None`` and ``""`` give ``None``.

    Raises:
        ValueError: naming ``what`` for anything else, or a duration that is not positive.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a duration such as 3h, 90m or 1:30:00, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip().lower().replace(" ", "")
        clock = _CLOCK_RE.match(text)
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif _UNITS_RE.match(text):
            seconds = sum(float(n) * _UNIT_S[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([dhms])", text))
        elif clock:
            d, h, m, s = (int(g or 0) for g in clock.groups())
            seconds = d * 86400.0 + h * 3600.0 + m * 60.0 + s
        else:
            raise ValueError(f"{what}: expected a duration such as 3h, 90m, 1h30m, 5400 or 1:30:00, got {value!r}")
    if not seconds > 0:
        raise ValueError(f"{what}: must be positive, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (for messages)."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _State:
    """Process-wide: the first pause signal received, the earliest deadline (``time.time()``) in force, and the
    handlers that the outermost :func:`pause_handling` replaced."""

    signum: int | None = None
    deadline: float | None = None
    limit_s: float | None = None
    depth: int = 0
    previous: dict = {}


_state = _State()


def _forget_in_child() -> None:
    """A forked child (a multiprocessing worker, nnU-Net's augmentation workers) gets back the handlers its parent
    had: ``multiprocessing.Pool.terminate`` ends workers with SIGTERM, which must not just set a flag there."""
    with contextlib.suppress(ValueError):  # signal.signal outside the main thread
        for s, handler in _state.previous.items():
            signal.signal(s, handler)
    _state.signum = _state.deadline = _state.limit_s = None
    _state.depth, _state.previous = 0, {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def pause_reason() -> str | None:
    """Why the running training should pause now (``"signal SIGTERM"``, ``"time limit 3:00:00"``), else ``None``."""
    if _state.signum is not None:
        return f"signal {signal.Signals(_state.signum).name}"
    if _state.deadline is not None and time.time() >= _state.deadline:
        return f"time limit {format_duration(_state.limit_s or 0.0)}"
    return None


def time_left() -> float | None:
    """Seconds until the earliest deadline in force (negative once passed), ``None`` without a time limit."""
    return None if _state.deadline is None else _state.deadline - time.time()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _state.signum is None:
        _state.signum = signum
        log.warning("received %s: the training pauses at the next iteration", signal.Signals(signum).name)


@contextlib.contextmanager
def pause_handling(time_limit: str | float | None = None) -> Iterator[None]:
    """Within this block the :data:`PAUSE_SIGNALS` only request a pause (:func:`pause_reason`), and ``time_limit``
    (default: ``$XLSTM_UNET_TIME_LIMIT``) sets a deadline counted from now; the earliest deadline of nested blocks
    wins. Handlers are installed by the outermost block in the main thread and restored when it ends, which also
    forgets a received signal."""
    limit = parse_duration(time_limit if time_limit is not None else os.environ.get(TIME_LIMIT_ENV),
                           what=f"time limit ({TIME_LIMIT_ENV})" if time_limit is None else "time limit")
    outer = (_state.deadline, _state.limit_s)
    if limit is not None and (_state.deadline is None or time.time() + limit < _state.deadline):
        _state.deadline, _state.limit_s = time.time() + limit, limit
    installed = _state.depth == 0 and threading.current_thread() is threading.main_thread()
    if installed:
        _state.previous = {s: signal.signal(s, _on_signal) for s in PAUSE_SIGNALS}
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        _state.deadline, _state.limit_s = outer
        if installed:
            for s, handler in _state.previous.items():
                signal.signal(s, handler)
            _state.previous = {}
        if _state.depth == 0:
            _state.signum = None
