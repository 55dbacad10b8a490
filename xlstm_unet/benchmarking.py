"""Helpers shared by the benchmark scripts (``benchmarks/vil_scaling.py``, ``benchmarks/train_step.py``).

Every benchmark row runs in its own process, so that its peak memory (max RSS on CPU) is its own and no row inherits
another's allocator state. On Linux CPU runs the child is forked from the script, which has imported the libraries
and run no torch op (so no thread pool exists yet): a row then does not pay the ~2.5 s of importing torch and the
model code again. CUDA runs (a CUDA context does not survive a fork) and other platforms spawn a fresh interpreter.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import sys
import traceback
from collections.abc import Callable
from typing import Any


class ChildFailed(RuntimeError):
    """The function run by :func:`run_in_child` raised (the message is its traceback), or its process died."""


def start_method(device: str) -> str:
    """``"fork"`` for CPU runs on Linux, ``"spawn"`` for CUDA and on other platforms."""
    return "fork" if device != "cuda" and sys.platform.startswith("linux") else "spawn"


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def peak_memory_mb(device: Any) -> float:
    """A row's peak memory in MiB on ``device`` (a name or ``torch.device``): ``torch.cuda.max_memory_allocated``
    on CUDA (since the last ``reset_peak_memory_stats``), else this process's peak RSS (:func:`peak_rss_mb`)."""
    import torch

    device = torch.device(device)
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()


def _child_main(conn: Any, fn: Callable[..., Any], args: tuple) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_in_child(fn: Callable[..., Any], *args: Any, device: str = "cpu") -> Any:
    """``fn(*args)`` in a child process (see the module docstring); returns its (picklable) result.

    A forked child's peak RSS starts from this process's current RSS and does not include what earlier children
    allocated. Under ``spawn``, ``fn`` and ``args`` must be picklable (a module-level function).

    Raises:
        ChildFailed: ``fn`` raised (message: the child's traceback) or the child died, e.g. killed for memory
            (message: the signal).
    """
    ctx = mp.get_context(start_method(device))
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child_main, args=(sender, fn, args))
    process.start()
    sender.close()
    try:
        status, value = receiver.recv()
    except EOFError:  # the child died before sending anything
        status, value = "died", None
    finally:
        receiver.close()
    process.join()
    if status == "ok":
        return value
    if status == "error":
        raise ChildFailed(value)
    code = process.exitcode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
    raise ChildFailed(f"benchmark process {how} before reporting a result")
