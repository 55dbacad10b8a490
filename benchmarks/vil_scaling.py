"""Time and memory of one ViL block (forward + backward) against the sequence length, per mLSTM backend.

Usage::

    .venv/bin/python benchmarks/vil_scaling.py --json               # the contract run (CPU, C=256, batch 2)
    .venv/bin/python benchmarks/vil_scaling.py --json --device cuda # adds triton rows and triton-vs-parallel diffs
    .venv/bin/python benchmarks/vil_scaling.py --json --quick       # tiny sizes, a few seconds (used by the tests)

Output with ``--json``: ONE JSON object on stdout::

    {"device": "cpu", "dim": 256, "batch": 2,
     "rows": [{"backend": "chunkwise" | "parallel" | "triton", "S": int, "fwd_bwd_s": float, "peak_mb": float}, ...],
     "max_abs_diff_vs_parallel": float, ...}

- Rows: chunkwise at S = 1024, 4096, 16384; parallel at S = 1024, 4096; on CUDA also triton at the chunkwise S.
- ``fwd_bwd_s``: median over ``--repeats`` (>= 3) timed forward + backward passes, after one warm-up pass, of one
  :class:`xlstm_unet.vil.ViLBlock` (dim C) on a ``(batch, S, C)`` float32 input that requires grad. Without gradient
  checkpointing (``checkpoint=False``), for every backend: this compares the kernels, not the memory policy (the
  block's default checkpoints the pieces of long CPU sequences, which in a lone block costs a recomputed forward).
- ``peak_mb``: each row runs in its own child process. On CPU it is the child's peak resident set size (max RSS,
  MiB; it includes the ~0.3-0.5 GB of the imported libraries); on CUDA the peak allocated GPU memory (MiB).
- ``max_abs_diff_vs_parallel``: max |y_chunkwise - y_parallel| of the block's output, same weights and input, at
  S = 1024 (``max_abs_grad_diff_vs_parallel``: the same for the input gradient). On CUDA also
  ``triton_max_abs_diff_vs_parallel`` and ``triton_max_abs_grad_diff_vs_parallel``.

Without ``--json`` a readable table goes to stdout. Timings are measurements, never asserted by tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from mlstm_kernels.torch import get_available_mlstm_kernels

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from xlstm_unet.benchmarking import peak_memory_mb, run_in_child  # noqa: E402
from xlstm_unet.vil import ViLBlock  # noqa: E402

FULL = {"dim": 256, "batch": 2, "chunkwise_S": [1024, 4096, 16384], "parallel_S": [1024, 4096], "diff_S": 1024}
QUICK = {"dim": 32, "batch": 1, "chunkwise_S": [128, 256], "parallel_S": [128], "diff_S": 128}


def _block(dim: int, backend: str, device: str) -> ViLBlock:
    torch.manual_seed(0)
    return ViLBlock(dim, backend=backend, checkpoint=False).to(device)


def _input(batch: int, S: int, dim: int, device: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(batch, S, dim, generator=gen).to(device).requires_grad_(True)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _row_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Child process: time one (backend, S) row and measure its peak memory."""
    device = spec["device"]
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    block = _block(spec["dim"], spec["backend"], device)
    x = _input(spec["batch"], spec["S"], spec["dim"], device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for rep in range(spec["repeats"] + 1):  # the first pass is the warm-up
        block.zero_grad(set_to_none=True)
        x.grad = None
        _sync(device)
        start = time.perf_counter()
        block(x).sum().backward()
        _sync(device)
        if rep > 0:
            times.append(time.perf_counter() - start)
    peak_mb = peak_memory_mb(device)
    return {"backend": spec["backend"], "S": spec["S"], "fwd_bwd_s": statistics.median(times), "peak_mb": peak_mb}


def _diff_worker(spec: dict[str, Any]) -> dict[str, float]:
    """Child process: max abs differences of each backend's block output and input grad vs parallel."""
    device = spec["device"]
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    results = {}
    for backend in ["parallel", *spec["backends"]]:
        block = _block(spec["dim"], backend, device)
        x = _input(spec["batch"], spec["S"], spec["dim"], device)
        gen = torch.Generator().manual_seed(2)
        g = torch.randn(x.shape, generator=gen).to(device)
        y = block(x)
        (y * g).sum().backward()
        results[backend] = (y.detach(), x.grad.detach())
    y_ref, gx_ref = results.pop("parallel")
    out = {}
    for backend, (y, gx) in results.items():
        prefix = "" if backend == "chunkwise" else f"{backend}_"
        out[f"{prefix}max_abs_diff_vs_parallel"] = (y - y_ref).abs().max().item()
        out[f"{prefix}max_abs_grad_diff_vs_parallel"] = (gx - gx_ref).abs().max().item()
    return out


def run(device: str, quick: bool, repeats: int, threads: int | None = None) -> dict[str, Any]:
    """Run every row and the equality check, each in a child process; returns the JSON-ready result."""
    if repeats < 3:
        raise ValueError(f"--repeats must be >= 3 (median of at least 3 runs), got {repeats}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but torch.cuda.is_available() is False")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    cfg = QUICK if quick else FULL
    # Import the kernel registry once here (mlstm_kernels imports torch._dynamo and triton: seconds), so that forked
    # children inherit it instead of paying for it inside their timings.
    get_available_mlstm_kernels()
    base = {"device": device, "dim": cfg["dim"], "batch": cfg["batch"], "repeats": repeats, "threads": threads}
    plan = [("chunkwise", S) for S in cfg["chunkwise_S"]] + [("parallel", S) for S in cfg["parallel_S"]]
    if device == "cuda":
        plan += [("triton", S) for S in cfg["chunkwise_S"]]
    rows = [run_in_child(_row_worker, {**base, "backend": b, "S": S}, device=device) for b, S in plan]
    diff_backends = ["chunkwise", "triton"] if device == "cuda" else ["chunkwise"]
    diffs = run_in_child(_diff_worker, {**base, "S": cfg["diff_S"], "backends": diff_backends}, device=device)
    return {"device": device, "dim": cfg["dim"], "batch": cfg["batch"], "rows": rows, **diffs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (dim 32, S <= 256) for a smoke test")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per row after one warm-up (>= 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per row (default: torch's)")
    args = parser.parse_args(argv)
    try:
        result = run(args.device, args.quick, args.repeats, args.threads)
    except (ValueError, RuntimeError) as err:
        print(f"vil_scaling: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"device={result['device']} dim={result['dim']} batch={result['batch']}")
    print(f"{'backend':>10} {'S':>7} {'fwd_bwd_s':>10} {'peak_mb':>9}")
    for row in result["rows"]:
        print(f"{row['backend']:>10} {row['S']:>7} {row['fwd_bwd_s']:>10.3f} {row['peak_mb']:>9.0f}")
    for key, value in result.items():
        if key.endswith("_vs_parallel"):
            print(f"{key}: {value:.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
