"""Does the paper path run? Every method of a batch config, through nnU-Net's own CLI, on the built-in phantoms.

Usage::

    .venv/bin/python benchmarks/paper_path.py --json --device cuda        # part of `make bench-gpu`
    .venv/bin/python benchmarks/paper_path.py --json --device cpu --methods nnunet --configuration-2d 2d --dims 2

For each experiment of the config (default ``experiments/gpu_paper.yaml``), its configuration (the paper's pinned
patches: ``2d_p320x320``, ``3d_fullres_p48x160x224``) and each of its methods, on the 2D or 3D phantom:
``nnUNetv2_train`` (nnU-Net's defaults: AMP on CUDA, compile as our trainers decide) for ``--epochs`` x
``--iterations``, ``nnUNetv2_predict`` on the test cases, and our evaluation. Each (configuration, method) is one
row: ``ok`` or ``failed`` with the step that failed and its error line, the training step time (last epoch's
seconds / iterations) and peak memory (CUDA's max allocated, or peak RSS on CPU, from the trainer's
``training_curve.csv``), and the test Dice. Everything the commands print goes to ``<out>/paper_path.log``;
``--json`` prints one JSON object::

    {"device", "config", "epochs", "iterations", "seconds",
     "rows": [{"method", "dim", "configuration", "trainer", "status", "failed_step", "error", "step_s",
               "peak_mem_mb", "dice_mean"}, ...]}

The phantoms are small; the pinned patches are larger than they are, so nnU-Net pads, and the step time and memory
are those of the paper's patch size. Exit status 1 when a row failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

logger = logging.getLogger("paper_path")
REPO = Path(__file__).resolve().parents[1]
PHANTOMS = {2: ("phantom2d", 941, {"n_train": 4, "n_test": 1, "shape": (96, 96)}),
            3: ("phantom3d", 942, {"n_train": 3, "n_test": 1, "shape_zyx": (24, 48, 48)})}


def jobs_from_config(config: str | Path, methods: list[str] | None, dims: list[int],
                     configurations: dict[int, str | None]) -> list[tuple[int, str, str]]:
    """``(dim, configuration, method)`` for every experiment of a batch config (one row per pair, in order)."""
    from xlstm_unet.batch import load_config

    jobs: list[tuple[int, str, str]] = []
    for exp in load_config(config).experiments:
        conf = str(exp.parameters.get("configuration") or "")
        if not conf:  # the notebook's default
            import papermill as pm

            conf = pm.inspect_notebook(str(exp.notebook))["configuration"]["default"].strip("\"'")
        dim = 3 if conf.startswith("3d") else 2
        if dim not in dims:
            continue
        conf = configurations.get(dim) or conf
        for m in exp.parameters.get("methods", []):
            if (methods is None or m in methods) and (dim, conf, m) not in jobs:
                jobs.append((dim, conf, m))
    return jobs


def _run(cmd: list[str], env: dict, log: Path, timeout: float) -> tuple[bool, str]:
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        try:
            proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            fh.write(f"timed out after {timeout} s\n")
            return False, f"timed out after {timeout:.0f} s"
        fh.write(proc.stdout)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    return proc.returncode == 0, (lines[-1] if lines else f"exit status {proc.returncode}")


def run_job(dim: int, configuration: str, method: str, device: str, epochs: int, iterations: int, env: dict,
            root: Path, log: Path, timeout: float) -> dict:
    """Train, predict and evaluate one method; never raises."""
    import pandas as pd

    from xlstm_unet.evaluation import evaluate_folder
    from xlstm_unet.experiment import dataset_protocol
    from xlstm_unet.nnunet import trainer_name
    from xlstm_unet.nnunet.methods import get_method

    _, did, _ = PHANTOMS[dim]
    raw = next((root / "nnUNet_raw").glob(f"Dataset{did}_*"))
    trainer = trainer_name(method, epochs=epochs, iterations=iterations)
    plans = get_method(method).plans
    row = {"method": method, "dim": dim, "configuration": configuration, "trainer": trainer, "status": "failed",
           "failed_step": None, "error": None, "step_s": None, "peak_mem_mb": None, "dice_mean": None}
    bin_dir = Path(sys.executable).parent
    fold_dir = root / "nnUNet_results" / raw.name / f"{trainer}__{plans}__{configuration}" / "fold_all"
    pred = root / "predictions" / f"{configuration}__{method}"
    steps = [
        ("train", [str(bin_dir / "nnUNetv2_train"), str(did), configuration, "all", "-tr", trainer, "-p", plans,
                   "-device", device]),
        ("predict", [str(bin_dir / "nnUNetv2_predict"), "-i", str(raw / "imagesTs"), "-o", str(pred), "-d",
                     str(did), "-c", configuration, "-f", "all", "-tr", trainer, "-p", plans, "-device", device,
                     "-npp", "1", "-nps", "1"]),
    ]
    for step, cmd in steps:
        ok, last = _run(cmd, env, log, timeout)
        if not ok:
            row.update(failed_step=step, error=last)
            return row
    curve_file = fold_dir / "training_curve.csv"
    if curve_file.is_file():
        curve = pd.read_csv(curve_file)
        row["step_s"] = float(curve["epoch_s"].iloc[-1]) / iterations
        row["peak_mem_mb"] = float(curve["peak_mem_mb"].max())
    try:
        ds = json.loads((raw / "dataset.json").read_text())
        summary = evaluate_folder(pred, raw / "labelsTs", protocol=dataset_protocol(raw), labels=ds["labels"],
                                  progress=False)
        row["dice_mean"] = summary["metrics"]["dice_mean"]["mean"]
    except Exception as err:  # noqa: BLE001 - reported in the row
        row.update(failed_step="evaluate", error=f"{type(err).__name__}: {err}")
        return row
    row["status"] = "ok"
    return row


def prepare_phantoms(root: Path, jobs: list[tuple[int, str, str]], log: Path) -> None:
    """Convert the phantoms and plan / preprocess every configuration the jobs use (in this process)."""
    from xlstm_unet.datasets import convert
    from xlstm_unet.nnunet import prepare
    from xlstm_unet.nnunet.methods import get_method

    for dim in sorted({d for d, _, _ in jobs}):
        name, did, opts = PHANTOMS[dim]
        confs = sorted({c for d, c, _ in jobs if d == dim})
        plans = sorted({get_method(m).plans for d, _, m in jobs if d == dim})
        with log.open("a") as fh, contextlib.redirect_stdout(fh):  # nnU-Net's planner prints; stdout is the JSON
            convert(name, out_root=root / "nnUNet_raw", dataset_id=did, overwrite=True, progress=False, **opts)
            prepare(did, configurations=confs, plans=plans, num_processes=2)
            print(f"prepared Dataset{did} ({name}): configurations {confs}, plans {plans}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--config", default=str(REPO / "experiments" / "gpu_paper.yaml"), help="batch config")
    parser.add_argument("--methods", default=None, help="comma-separated subset of the config's methods")
    parser.add_argument("--dims", default="2,3", help="comma-separated subset of 2,3")
    parser.add_argument("--configuration-2d", default=None, help="instead of the config's 2D configuration")
    parser.add_argument("--configuration-3d", default=None, help="instead of the config's 3D configuration")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--workers", type=int, default=3, help="jobs run at once (default 3)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per command (default 900)")
    parser.add_argument("--out", default=None, help="folder for paper_path.log and the nnU-Net folders "
                                                     "(default: a temporary folder, removed afterwards)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    dims = [int(d) for d in args.dims.split(",") if d]
    methods = [m for m in args.methods.split(",") if m] if args.methods else None
    jobs = jobs_from_config(args.config, methods, dims, {2: args.configuration_2d, 3: args.configuration_3d})
    if not jobs:
        parser.error("no (configuration, method) pairs selected")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="paper_path_") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        root = out / "nnunet"
        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            (root / k).mkdir(parents=True, exist_ok=True)
            os.environ[k] = str(root / k)
        os.environ.setdefault("nnUNet_n_proc_DA", "4" if args.device == "cuda" else "0")
        log = out / "paper_path.log"
        from xlstm_unet.nnunet.env import env_vars

        env = {**os.environ, **env_vars()}
        prepare_phantoms(root, jobs, log)
        logger.info("%d jobs: %s", len(jobs), ", ".join(f"{c}/{m}" for _, c, m in jobs))
        with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
            rows = list(pool.map(lambda j: run_job(*j, args.device, args.epochs, args.iterations, env, root, log,
                                                   args.timeout), jobs))
        for r in rows:
            logger.info("%-22s %-18s %s%s", r["configuration"], r["method"], r["status"],
                        f" ({r['failed_step']}: {r['error']})" if r["status"] != "ok" else
                        f" step {r['step_s']:.3f} s, peak {r['peak_mem_mb']:.0f} MB, Dice {r['dice_mean']:.3f}")
        result = {"device": args.device, "config": str(args.config), "epochs": args.epochs,
                  "iterations": args.iterations, "seconds": round(time.perf_counter() - start, 1), "rows": rows}
        if args.json:
            sys.stdout.write(json.dumps(result) + "\n")
    return 1 if any(r["status"] != "ok" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
