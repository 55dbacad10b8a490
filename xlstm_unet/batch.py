"""``xlstm-unet run-all CONFIG.yaml``: run a set of experiment notebooks with papermill.

Config (YAML)::

    base_dir: ..                     # optional; relative paths below are resolved against it. It is itself
                                     # relative to the config file. Default: the current working directory.
    output_dir: results/batch        # executed notebooks and done-markers go here
    kernel: python3                  # optional; default python3 (the current interpreter's ipykernel)
    timeout: null                    # optional; per-cell timeout in seconds
    parameters: {device: cpu}        # optional; defaults for every experiment
    executor: local                  # optional; local (default), slurm or submitit-local; --executor overrides
    slurm: {partition: gpu, gpus_per_node: 1, time: 4h, mem: 64G}   # optional; job resources (docs/cluster.md)
    experiments:
      - name: kvasir_seg             # unique; [A-Za-z0-9_.-]+
        notebook: notebooks/10_kvasir_seg.ipynb
        parameters: {epochs: 5}      # merged over the defaults above
        results: [results/kvasir_seg/summary.json]   # optional; files the run must produce
        slurm: {time: 8h}            # optional; merged over the slurm section above

Notebooks run with ``base_dir`` as their working directory, so relative paths in ``parameters`` are relative to
it too.

Per experiment the executed notebook is kept at ``<output_dir>/<name>.ipynb`` (also when it fails, with the error
in it), and a marker ``<output_dir>/<name>.done.json`` (notebook, parameters, finish time) is written atomically
after a successful run whose ``results`` files all exist.

An experiment counts as **done** (and is skipped unless ``--force``) when its marker exists, records the same
notebook and parameters as the config now has, the executed notebook exists, and every ``results`` file exists.
Changing an experiment's parameters therefore re-runs it.

Failures do not stop the batch: the summary lists each experiment as ``ok``, ``skipped``, ``failed`` with the
error line (``ExceptionName: message`` from the notebook, or the problem with the config entry), or ``paused``
when a training paused (``--time-limit``, or SIGTERM / SIGUSR1 / SIGUSR2; :mod:`xlstm_unet.pause`), which the next
call resumes. The command exits with status 1 if any failed, else 3 if any paused, else 0.

``--executor local`` (the default) runs the notebooks here, one after the other; ``--time-limit`` is then the budget
of the whole command. ``--executor slurm`` submits one job per experiment, method, fold and seed instead and keeps
a job table (:mod:`xlstm_unet.cluster`); the ``slurm`` sections are ignored by the local executor, so one config
serves a laptop and a cluster.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from xlstm_unet._io import atomic_write
from xlstm_unet.pause import PAUSED_EXIT_CODE, TIME_LIMIT_ENV, ExperimentPaused, format_duration, parse_duration

__all__ = [
    "Experiment",
    "BatchConfig",
    "Status",
    "RunResult",
    "load_config",
    "is_done",
    "run_notebook",
    "run_all",
    "format_summary",
    "register",
]

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class Status(str, Enum):
    OK = "ok"
    SKIPPED = "skipped"
    FAILED = "failed"
    PAUSED = "paused"          # a training paused (time limit, signal); the next call resumes it
    SUBMITTED = "submitted"    # cluster executors: submitted by this call
    QUEUED = "queued"          # cluster executors: pending or running


@dataclass(frozen=True)
class Experiment:
    """One notebook run: ``notebook`` executed with ``parameters``; ``results`` are the files it must produce."""

    name: str
    notebook: Path
    parameters: Mapping[str, Any] = field(default_factory=dict)
    results: tuple[Path, ...] = ()
    slurm: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchConfig:
    """A parsed config: the base (and working) folder, where outputs go, the kernel, the per-cell timeout, the
    experiments in order, the default executor and the SLURM job resources."""

    path: Path
    base_dir: Path
    output_dir: Path
    kernel: str
    timeout: float | None
    experiments: tuple[Experiment, ...]
    executor: str = "local"
    slurm: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunResult:
    """Outcome of one experiment: status, the error line for failures, the executed notebook, seconds taken."""

    name: str
    status: Status
    error: str = ""
    output_notebook: Path | None = None
    seconds: float = 0.0


def _err(path: Path, msg: str) -> ValueError:
    return ValueError(f"{path}: {msg}")


def load_config(path: str | os.PathLike) -> BatchConfig:
    """Read and check a batch config (see the module docstring); errors name the file and the entry."""
    path = Path(path)
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise _err(path, "config file not found") from err
    except yaml.YAMLError as err:
        raise _err(path, f"not valid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise _err(path, f"expected a mapping at the top level, got {type(raw).__name__}")
    from xlstm_unet.cluster import Executor, check_slurm

    allowed = {"base_dir", "output_dir", "kernel", "timeout", "parameters", "experiments", "executor", "slurm"}
    extra = set(raw) - allowed
    if extra:
        raise _err(path, f"unknown keys {sorted(extra)}; allowed: {sorted(allowed)}")
    base = (path.parent / raw["base_dir"]).resolve() if raw.get("base_dir") is not None else Path.cwd()

    def resolve(p: Any, what: str) -> Path:
        if not isinstance(p, str) or not p:
            raise _err(path, f"{what} must be a non-empty string, got {p!r}")
        q = Path(p).expanduser()
        return q if q.is_absolute() else base / q

    if "output_dir" not in raw:
        raise _err(path, "missing 'output_dir'")
    defaults = raw.get("parameters") or {}
    if not isinstance(defaults, dict):
        raise _err(path, f"'parameters' must be a mapping, got {type(defaults).__name__}")
    entries = raw.get("experiments")
    if not isinstance(entries, list) or not entries:
        raise _err(path, "'experiments' must be a non-empty list")
    experiments = []
    names: set[str] = set()
    for i, e in enumerate(entries):
        where = f"experiments[{i}]"
        if not isinstance(e, dict):
            raise _err(path, f"{where} must be a mapping, got {type(e).__name__}")
        extra = set(e) - {"name", "notebook", "parameters", "results", "slurm"}
        if extra:
            raise _err(path, f"{where}: unknown keys {sorted(extra)}")
        name = e.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise _err(path, f"{where}: 'name' must match [A-Za-z0-9_.-]+, got {name!r}")
        if name in names:
            raise _err(path, f"{where}: duplicate name {name!r}")
        names.add(name)
        params = e.get("parameters") or {}
        if not isinstance(params, dict):
            raise _err(path, f"{where} ({name}): 'parameters' must be a mapping")
        results = e.get("results") or []
        if isinstance(results, str):
            results = [results]
        experiments.append(Experiment(
            name=name,
            notebook=resolve(e.get("notebook"), f"{where} ({name}).notebook"),
            parameters={**defaults, **params},
            results=tuple(resolve(r, f"{where} ({name}).results") for r in results),
            slurm=check_slurm(path, e.get("slurm"), f"{where} ({name}).slurm"),
        ))
    timeout = raw.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise _err(path, f"'timeout' must be a positive number of seconds or null, got {timeout!r}")
    kernel = raw.get("kernel") or "python3"
    executor = raw.get("executor") or Executor.LOCAL.value
    if executor not in {e.value for e in Executor}:
        raise _err(path, f"'executor' must be one of {[e.value for e in Executor]}, got {executor!r}")
    return BatchConfig(path=path, base_dir=base, output_dir=resolve(raw["output_dir"], "output_dir"),
                       kernel=str(kernel), timeout=timeout, experiments=tuple(experiments), executor=executor,
                       slurm=check_slurm(path, raw.get("slurm")))


def _paths(cfg: BatchConfig, exp: Experiment) -> tuple[Path, Path]:
    return cfg.output_dir / f"{exp.name}.ipynb", cfg.output_dir / f"{exp.name}.done.json"


def _marker_payload(exp: Experiment) -> dict[str, Any]:
    return {"notebook": str(exp.notebook), "parameters": json.loads(json.dumps(dict(exp.parameters), default=str))}


def is_done(cfg: BatchConfig, exp: Experiment) -> bool:
    """Whether ``exp`` already ran with the same notebook and parameters and left its outputs (module docstring)."""
    out_nb, marker = _paths(cfg, exp)
    if not (marker.is_file() and out_nb.is_file() and all(p.exists() for p in exp.results)):
        return False
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    want = _marker_payload(exp)
    return recorded.get("notebook") == want["notebook"] and recorded.get("parameters") == want["parameters"]


def _error_line(err: BaseException) -> str:
    ename = getattr(err, "ename", None)
    if ename:  # papermill.PapermillExecutionError
        evalue = str(getattr(err, "evalue", "")).strip().splitlines()
        return f"{ename}: {evalue[-1] if evalue else ''}".rstrip(": ")
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


# Kernels started side by side (jobs on one node) can race for their ports, and a loaded node can miss the start
# timeout; no cell has run then, so starting the kernel again is safe.
_KERNEL_START_ATTEMPTS = 3
_KERNEL_START_ERRORS = ("Kernel died before replying to kernel_info", "Kernel didn't respond in")


def _kernel_failed_to_start(err: BaseException) -> bool:
    return any(m in str(err) for m in _KERNEL_START_ERRORS)


def run_notebook(cfg: BatchConfig, exp: Experiment, force: bool = False, progress_bar: bool = False,
                 log_output: bool = False, time_limit: float | None = None) -> RunResult:
    """Run one experiment's notebook unless it is done (or ``force``); never raises for a failing notebook.
    ``log_output`` streams the notebook's output (training epochs, progress bars) to this process's log;
    ``time_limit`` (seconds) reaches the notebook's trainings as ``XLSTM_UNET_TIME_LIMIT``."""
    import papermill as pm

    out_nb, marker = _paths(cfg, exp)
    if not force and is_done(cfg, exp):
        return RunResult(exp.name, Status.SKIPPED, output_notebook=out_nb)
    t0 = time.perf_counter()
    marker.unlink(missing_ok=True)
    if not exp.notebook.is_file():
        return RunResult(exp.name, Status.FAILED, f"FileNotFoundError: notebook {exp.notebook} not found")
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    log.info("running %s: %s -> %s", exp.name, exp.notebook, out_nb)
    kernel_env = os.environ.get(TIME_LIMIT_ENV)
    try:
        if time_limit is not None:  # the kernel inherits this process's environment
            os.environ[TIME_LIMIT_ENV] = f"{max(time_limit, 1.0):.0f}"
        for attempt in range(1, _KERNEL_START_ATTEMPTS + 1):
            try:
                pm.execute_notebook(
                    str(exp.notebook), str(out_nb), parameters=dict(exp.parameters), kernel_name=cfg.kernel,
                    cwd=str(cfg.base_dir), progress_bar=progress_bar, execution_timeout=cfg.timeout,
                    log_output=log_output, stdout_file=sys.stdout if log_output else None,
                    stderr_file=sys.stderr if log_output else None,
                )
                break
            except Exception as err:  # noqa: BLE001
                if attempt == _KERNEL_START_ATTEMPTS or not _kernel_failed_to_start(err):
                    raise
                log.warning("%s: the kernel did not start (%s); starting it again (%d/%d)", exp.name,
                            _error_line(err), attempt + 1, _KERNEL_START_ATTEMPTS)
                time.sleep(2.0 * attempt)
    except Exception as err:  # noqa: BLE001 - any failure of one experiment is reported, the batch goes on
        status = Status.PAUSED if getattr(err, "ename", None) == ExperimentPaused.__name__ else Status.FAILED
        return RunResult(exp.name, status, _error_line(err), out_nb if out_nb.is_file() else None,
                         time.perf_counter() - t0)
    finally:
        if kernel_env is None:
            os.environ.pop(TIME_LIMIT_ENV, None)
        else:
            os.environ[TIME_LIMIT_ENV] = kernel_env
    missing = [str(p) for p in exp.results if not p.exists()]
    if missing:
        return RunResult(exp.name, Status.FAILED, f"missing results: {', '.join(missing)}", out_nb,
                         time.perf_counter() - t0)
    payload = {**_marker_payload(exp), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "seconds": round(time.perf_counter() - t0, 2)}
    with atomic_write(marker) as tmp:
        tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return RunResult(exp.name, Status.OK, output_notebook=out_nb, seconds=time.perf_counter() - t0)


def run_all(cfg: BatchConfig | str | os.PathLike, force: bool = False, only: Sequence[str] | None = None,
            progress_bar: bool = False, log_output: bool = False, executor: str | None = None,
            time_limit: str | float | None = None, wait: bool = False) -> list[RunResult]:
    """Run the experiments of a config in order (``only``: just these names), continuing past failures.

    ``executor``: ``local`` (here, in order), ``slurm`` or ``submitit-local`` (jobs, :mod:`xlstm_unet.cluster`;
    ``wait`` until they end); default: the config's. ``time_limit`` (``"3h"``): locally the budget of this call,
    for jobs the budget of each job; a training past it pauses.
    """
    from tqdm.auto import tqdm

    from xlstm_unet.cluster import Executor, run_jobs

    if not isinstance(cfg, BatchConfig):
        cfg = load_config(cfg)
    exps = list(cfg.experiments)
    if only:
        unknown = sorted(set(only) - {e.name for e in exps})
        if unknown:
            raise ValueError(f"{cfg.path}: --only names {unknown} not in the config; have {[e.name for e in exps]}")
        exps = [e for e in exps if e.name in set(only)]
    kind = Executor(executor or cfg.executor)
    limit = parse_duration(time_limit)
    if kind is not Executor.LOCAL:
        with tqdm(desc="run-all jobs", unit="job", disable=None) as bar:
            def progress(done: int, total: int) -> None:
                bar.total, bar.n = total, done
                bar.refresh()

            return run_jobs(cfg, exps, kind, force=force, time_limit=limit, wait=wait, progress=progress)
    deadline = None if limit is None else time.time() + limit
    results = []
    for exp in tqdm(exps, desc="run-all", unit="experiment", disable=None):
        left = None if deadline is None else deadline - time.time()
        if left is not None and left < 1 and (force or not is_done(cfg, exp)):
            res = RunResult(exp.name, Status.PAUSED, f"not started: time limit {format_duration(limit)} reached")
        else:
            res = run_notebook(cfg, exp, force=force, progress_bar=progress_bar, log_output=log_output,
                               time_limit=left)
        log.info("%s: %s %s", res.name, res.status.value, res.error)
        results.append(res)
    return results


def format_summary(results: Sequence[RunResult]) -> str:
    """One line per experiment or job (``ok`` / ``skipped`` / ``failed: <error line>`` / ``paused: ...`` /
    ``submitted`` / ``queued``) and a totals line."""
    width = max((len(r.name) for r in results), default=0)
    lines = []
    for r in results:
        tail = {Status.OK: f"ok ({r.seconds:.1f} s)", Status.SKIPPED: "skipped (results exist; --force to rerun)",
                Status.FAILED: f"FAILED: {r.error}", Status.PAUSED: f"paused: {r.error} (run again to resume)",
                Status.SUBMITTED: f"submitted: {r.error}", Status.QUEUED: f"queued: {r.error}"}[r.status]
        nb = f"  [{r.output_notebook}]" if r.output_notebook is not None and r.status is not Status.SKIPPED else ""
        lines.append(f"{r.name:<{width}}  {tail}{nb}")
    counts = {s: sum(r.status is s for r in results) for s in Status}
    extra = "".join(f", {counts[s]} {s.value}" for s in (Status.PAUSED, Status.SUBMITTED, Status.QUEUED)
                    if counts[s])
    lines.append(f"{counts[Status.OK]} ok, {counts[Status.SKIPPED]} skipped, {counts[Status.FAILED]} failed{extra}")
    return "\n".join(lines)


def _cmd_run_all(args: argparse.Namespace) -> int:
    try:
        results = run_all(args.config, force=args.force, only=args.only, progress_bar=args.progress,
                          log_output=args.log_output, executor=args.executor, time_limit=args.time_limit,
                          wait=args.wait)
    except ValueError as err:
        sys.stderr.write(f"xlstm-unet run-all: {err}\n")
        return 2
    sys.stdout.write(format_summary(results) + "\n")
    if any(r.status is Status.FAILED for r in results):
        return 1
    return PAUSED_EXIT_CODE if any(r.status is Status.PAUSED for r in results) else 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``run-all`` to the ``xlstm-unet`` command."""
    p = subparsers.add_parser(
        "run-all",
        help="run the experiment notebooks of a YAML config with papermill",
        description=(__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("config", help="YAML config listing the experiments (see experiments/*.yaml)")
    p.add_argument("--force", action="store_true", help="re-run experiments whose results already exist")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only this experiment (repeatable)")
    p.add_argument("--progress", action="store_true", help="show papermill's per-cell progress bar")
    p.add_argument("--log-output", action="store_true",
                   help="stream each notebook's output (nnU-Net's epochs, progress bars) while it runs")
    p.add_argument("--executor", choices=["local", "slurm", "submitit-local"], default=None,
                   help="local: run here, in order (default, unless the config says otherwise); slurm: one job "
                        "per experiment, method, fold and seed (docs/cluster.md); submitit-local: those jobs as "
                        "local background processes")
    p.add_argument("--time-limit", metavar="DURATION", default=None,
                   help="wall-clock budget (3h, 90m, 1:30:00): locally for this command, for jobs per job; a "
                        f"training past it pauses (exit status {PAUSED_EXIT_CODE}), the next call resumes it")
    p.add_argument("--wait", action="store_true", help="jobs: wait until none is queued or running")
    p.set_defaults(func=_cmd_run_all)
    return p
