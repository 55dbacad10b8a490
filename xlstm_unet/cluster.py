"""``xlstm-unet run-all --executor slurm``: one cluster job per (experiment, method, fold, seed), with submitit.

An experiment notebook (one with a ``methods`` parameter) becomes one **training job** per method, fold and
training seed: the same notebook with ``methods=[m]``, ``seeds=[k]``, ``seeds_by_method={}`` and, when the
experiment lists several ``folds``, ``folds=[f]`` (otherwise its ``fold`` stays). Each writes the results of its
own (method, fold, seed) into the experiment's results folder (:mod:`xlstm_unet.experiment`). Once every training
job of an experiment has finished, one **final job** runs the notebook with the experiment's own parameters: every
(method, fold, seed) is then skipped, so it only averages the seeds and folds and renders the tables and figures,
writing ``<output_dir>/<name>.ipynb`` and ``<name>.done.json`` as a local run does. Notebooks without ``methods``
(tables, reports) are a final job only.

Files below the batch's ``output_dir``::

    jobs.csv                                   the job table: one row per job (see JOB_TABLE_COLUMNS)
    jobs/<name>/<method>_fold<f>_seed<k>.ipynb executed notebook of a training job (and its .done.json marker)
    jobs/submitit/<job id>_0_log.out, ...      submitit's files: the job's output (.out) and log (.err), pickles

Every call advances every job by one step and returns at once (``--wait``: until no job is queued or running):
a job whose marker records the same notebook and parameters is ``skipped``; one never submitted, or whose last
job failed or paused, is ``submitted``; one still in the queue is ``queued``; a finished one is collected as
``ok``, ``failed`` or ``paused`` (a job that SLURM ended by its time limit or a preemption counts as paused: its
training resumes from ``checkpoint_latest.pth`` when it is submitted again).

Job resources come from the config's ``slurm:`` section, merged with an experiment's own ``slurm:`` entry
(:data:`SLURM_KEYS`). ``--executor submitit-local`` runs the same jobs as background processes on this machine
(submitit's LocalExecutor, all at once; for tests and for trying a config), waiting for them.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import Any

from xlstm_unet._io import atomic_write
from xlstm_unet.batch import (BatchConfig, Experiment, RunResult, Status, _error_line, is_done,
                              run_notebook)
from xlstm_unet.folds import run_dir_name
from xlstm_unet.pause import PAUSE_SIGNALS, parse_duration

__all__ = ["Executor", "SLURM_KEYS", "JOB_TABLE_COLUMNS", "JobSpec", "check_slurm", "expand_jobs",
           "read_job_table", "forwarding_signals", "run_jobs"]

log = logging.getLogger(__name__)


class Executor(str, Enum):
    LOCAL = "local"                    # in this process, one experiment after the other
    SLURM = "slurm"                    # one SLURM job per (experiment, method, fold, seed)
    SUBMITIT_LOCAL = "submitit-local"  # the same jobs as local background processes


#: The ``slurm:`` keys and their types; ``time`` is a duration (``4h``, ``1-00:00:00``, minutes as a number).
SLURM_KEYS: dict[str, type | tuple[type, ...]] = {
    "partition": str, "time": (str, int, float), "gpus_per_node": int, "cpus_per_task": int, "mem": (str, int),
    "account": str, "qos": str, "constraint": str, "exclude": str, "setup": list, "signal_delay_s": int,
    "additional_parameters": dict,
}
JOB_TABLE_COLUMNS = ("key", "experiment", "method", "fold", "seed", "job_id", "state", "scheduler_state", "error",
                     "seconds", "notebook", "stdout", "stderr", "updated")
_ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "RESIZING", "SUSPENDED", "READY",
           "UNKNOWN")
_ENDED_BY_SCHEDULER = ("TIMEOUT", "PREEMPTED", "DEADLINE")
_DEFAULT_TIME_MIN = 7 * 24 * 60  # submitit-local without a time: submitit's own default would be 2 minutes


def check_slurm(path: Path, section: Any, where: str = "slurm") -> dict[str, Any]:
    """Check a ``slurm:`` mapping (:data:`SLURM_KEYS`) and return it with ``time`` in whole minutes; errors name
    the config file and the entry."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ValueError(f"{path}: '{where}' must be a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - set(SLURM_KEYS))
    if unknown:
        raise ValueError(f"{path}: {where}: unknown keys {unknown}; allowed: {sorted(SLURM_KEYS)}")
    out = dict(section)
    for key, value in section.items():
        if not isinstance(value, SLURM_KEYS[key]) or isinstance(value, bool):
            raise ValueError(f"{path}: {where}.{key} has the wrong type ({type(value).__name__}: {value!r})")
    if "time" in out:
        t = out["time"]
        seconds = parse_duration(t * 60 if isinstance(t, (int, float)) else t, what=f"{path}: {where}.time")
        out["time"] = int(math.ceil(seconds / 60))
    for key in ("gpus_per_node", "cpus_per_task", "signal_delay_s"):
        if key in out and out[key] < (0 if key == "gpus_per_node" else 1):
            raise ValueError(f"{path}: {where}.{key} must be positive, got {out[key]}")
    if "setup" in out and not all(isinstance(line, str) for line in out["setup"]):
        raise ValueError(f"{path}: {where}.setup must be a list of shell lines")
    if "mem" in out and isinstance(out["mem"], int):
        out["mem"] = f"{out['mem']}G"
    return out


@dataclass(frozen=True)
class JobSpec:
    """One job: a notebook run (``run``, written below ``cfg.output_dir``) for one experiment and, for a training
    job, one method, fold and seed (``None`` for an experiment's final job)."""

    experiment: str
    cfg: BatchConfig
    run: Experiment
    slurm: Mapping[str, Any]
    method: str | None = None
    fold: str | None = None
    seed: int | None = None

    @property
    def key(self) -> str:
        return self.experiment if self.method is None else f"{self.experiment}/{self.run.name}"


def _notebook_parameters(notebook: Path) -> tuple[set[str], dict[str, Any]]:
    """The names of a notebook's parameters, and the defaults that are Python literals."""
    import papermill as pm

    params = pm.inspect_notebook(str(notebook))
    defaults = {}
    for name, p in params.items():
        with contextlib.suppress(ValueError, SyntaxError, TypeError):
            defaults[name] = ast.literal_eval(str(p["default"]))
    return set(params), defaults


def expand_jobs(cfg: BatchConfig, exp: Experiment) -> tuple[list[JobSpec], JobSpec]:
    """The training jobs of an experiment (none for a notebook without ``methods``) and its final job."""
    slurm = {**cfg.slurm, **exp.slurm}
    final = JobSpec(exp.name, cfg, exp, slurm)
    if not exp.notebook.is_file():
        return [], final
    names, defaults = _notebook_parameters(exp.notebook)
    params = {**defaults, **exp.parameters}
    if "methods" not in names:
        return [], final
    if "methods" not in params:
        raise ValueError(f"{cfg.path}: {exp.name}: the default of 'methods' in {exp.notebook} is not a literal list; "
                         "give 'methods' in the experiment's parameters")
    jobs_cfg = replace(cfg, output_dir=cfg.output_dir / "jobs" / exp.name)
    folds = list(params.get("folds") or [])
    extra: dict[str, Any] = {}
    if slurm.get("gpus_per_node", 0) > 1 and "num_gpus" in names and "num_gpus" not in exp.parameters:
        extra["num_gpus"] = slurm["gpus_per_node"]  # DDP over the job's GPUs; a laptop run keeps the default
    jobs = []
    for m in params["methods"]:
        seeds = list((params.get("seeds_by_method") or {}).get(m) or params.get("seeds") or [params.get("seed", 0)])
        for f in folds or [params.get("fold", 0)]:
            for s in seeds:
                p = {**exp.parameters, **extra, "methods": [m], "seeds": [s], "seeds_by_method": {}}
                if folds:
                    p["folds"] = [f]
                run = Experiment(name=f"{m}_{run_dir_name(s, f)}", notebook=exp.notebook, parameters=p)
                jobs.append(JobSpec(exp.name, jobs_cfg, run, slurm, m, str(f), int(s)))
    return jobs, final


def read_job_table(cfg: BatchConfig) -> dict[str, dict[str, str]]:
    """The job table of a batch (``<output_dir>/jobs.csv``) by job key; empty when there is none."""
    path = cfg.output_dir / "jobs.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["key"]: row for row in csv.DictReader(fh)}


def _write_job_table(cfg: BatchConfig, rows: Mapping[str, Mapping[str, Any]]) -> None:
    path = cfg.output_dir / "jobs.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(JOB_TABLE_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows.values())


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux ``/proc``; none elsewhere)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
    return kids


@contextlib.contextmanager
def forwarding_signals() -> Iterator[None]:
    """Pass the pause signals on to this process's children (the notebook's kernel, whose training pauses on
    them) instead of acting on them here; submitit's own handlers would end the job before the kernel saved."""
    def forward(signum: int, frame: FrameType | None) -> None:
        for pid in _children(os.getpid()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    previous = {s: signal.signal(s, forward) for s in PAUSE_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _job_main(spec: JobSpec, force: bool, time_limit: float | None) -> RunResult:
    """What a job runs: the notebook, its output streamed to the job's log, pause signals passed to the kernel."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with forwarding_signals():
        return run_notebook(spec.cfg, spec.run, force=force, log_output=True, time_limit=time_limit)


def _make_executor(kind: Executor, folder: Path, slurm: Mapping[str, Any], name: str):
    import submitit

    if kind is Executor.SLURM:
        ex = submitit.SlurmExecutor(folder=folder)
        ex.update_parameters(job_name=f"xlstm-unet-{name}", **slurm)
    else:
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=slurm.get("time", _DEFAULT_TIME_MIN),
                             gpus_per_node=slurm.get("gpus_per_node", 0))
    return ex


def _collect(job: Any) -> tuple[Status, str, str, float]:
    """(status, error line, scheduler state, seconds) of a submitted job; ``QUEUED`` while it is pending or
    running."""
    if job.paths.result_pickle.exists():
        try:
            res = job.result()
        except Exception as err:  # noqa: BLE001 - the job's own exception, reported as its error line
            return Status.FAILED, _error_line(err), "COMPLETED", 0.0
        return res.status, res.error, "COMPLETED", res.seconds
    state = str(job.state).strip() or "UNKNOWN"  # sacct's (e.g. "CANCELLED by 123"), or LocalJob's
    if state.split()[0] in _ACTIVE:
        return Status.QUEUED, "", state, 0.0
    if state.split()[0] in _ENDED_BY_SCHEDULER:
        return Status.PAUSED, f"job {job.job_id} ended in state {state}; submitting it again resumes", state, 0.0
    return (Status.FAILED, f"job {job.job_id} ended in state {state} without a result (log: {job.paths.stdout})",
            state, 0.0)


def run_jobs(cfg: BatchConfig, exps: Sequence[Experiment], kind: Executor = Executor.SLURM, force: bool = False,
             time_limit: float | None = None, wait: bool = False, poll_s: float | None = None,
             progress: Callable[[int, int], None] | None = None) -> list[RunResult]:
    """Submit, collect and report the jobs of ``exps`` (module docstring); one result per job, in config order.

    ``time_limit``: each job's wall-clock budget (``XLSTM_UNET_TIME_LIMIT`` in the job). ``poll_s``: seconds
    between passes while waiting (default 30 for SLURM, 2 locally). ``progress(done, total)`` is called after
    every pass.
    """
    import submitit

    missing = [c for c in ("sbatch", "srun", "sacct") if shutil.which(c) is None] if kind is Executor.SLURM else []
    if missing:
        raise ValueError(f"{cfg.path}: --executor slurm needs SLURM's {', '.join(missing)} on PATH (a login node); "
                         "elsewhere use --executor local")
    poll_s = poll_s if poll_s is not None else (30.0 if kind is Executor.SLURM else 2.0)
    wait = wait or kind is Executor.SUBMITIT_LOCAL  # local background jobs end with this process's session
    folder = cfg.output_dir / "jobs" / "submitit"
    table = read_job_table(cfg)
    job_class = submitit.SlurmJob if kind is Executor.SLURM else submitit.LocalJob
    live: dict[str, Any] = {}  # jobs submitted by this call (LocalJob needs its process handle)
    settled: set[str] = set()  # collected by this call: reported as collected, not submitted again before the next
    plan = [expand_jobs(cfg, e) for e in exps]
    while True:
        results: list[RunResult] = []
        for (training, final), exp in zip(plan, exps):
            touched = any(s.key in live or s.key in settled for s in [*training, final])
            if not force and not touched and is_done(cfg, exp):
                results.append(RunResult(exp.name, Status.SKIPPED,
                                         output_notebook=cfg.output_dir / f"{exp.name}.ipynb"))
                continue
            steps = [_advance(s, table, live, settled, kind, folder, job_class, force, time_limit) for s in training]
            results += steps
            if all(r.status in (Status.OK, Status.SKIPPED) for r in steps):
                results.append(_advance(final, table, live, settled, kind, folder, job_class, force, time_limit))
        _write_job_table(cfg, table)
        busy = sum(r.status in (Status.QUEUED, Status.SUBMITTED) for r in results)
        if progress is not None:
            progress(len(results) - busy, len(results))
        if not wait or not busy:
            return results
        time.sleep(poll_s)


def _advance(spec: JobSpec, table: dict[str, dict[str, Any]], live: dict[str, Any], settled: set[str],
             kind: Executor, folder: Path, job_class: Any, force: bool, time_limit: float | None) -> RunResult:
    """One step of one job: skip, collect or submit it, and update its row of the job table."""
    key, out_nb = spec.key, spec.cfg.output_dir / f"{spec.run.name}.ipynb"
    row = table.setdefault(key, {"key": key, "experiment": spec.experiment, "method": spec.method or "",
                                 "fold": spec.fold or "", "seed": "" if spec.seed is None else spec.seed,
                                 "notebook": str(out_nb)})
    row["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    previous = ""
    if row.get("job_id") and row.get("state") in (Status.SUBMITTED.value, Status.QUEUED.value):
        job = live.get(key) or job_class(folder=folder, job_id=row["job_id"])
        status, error, sched, seconds = _collect(job)
        row.update(state=status.value, scheduler_state=sched, error=error, seconds=f"{seconds:.1f}")
        if status is not Status.QUEUED:
            settled.add(key)
            return RunResult(key, status, error, out_nb if out_nb.is_file() else None, seconds)
        return RunResult(key, Status.QUEUED, f"job {row['job_id']} {sched}", None)
    if key in settled:
        return RunResult(key, Status(row["state"]), row.get("error", ""), out_nb if out_nb.is_file() else None,
                         float(row.get("seconds") or 0.0))
    if not force and is_done(spec.cfg, spec.run):
        row.update(state=Status.SKIPPED.value, error="")
        return RunResult(key, Status.SKIPPED, output_notebook=out_nb)
    if row.get("state") in (Status.FAILED.value, Status.PAUSED.value):
        previous = f"after job {row.get('job_id')}: {row['state']} {row.get('error', '')}".rstrip()
    ex = _make_executor(kind, folder, spec.slurm, spec.experiment)
    job = ex.submit(_job_main, spec, force, time_limit)
    live[key] = job
    row.update(job_id=str(job.job_id), state=Status.SUBMITTED.value, scheduler_state="", error=previous,
               seconds="", stdout=str(job.paths.stdout), stderr=str(job.paths.stderr))
    log.info("%s: submitted job %s (log %s)", key, job.job_id, job.paths.stdout)
    return RunResult(key, Status.SUBMITTED, f"job {job.job_id}" + (f" ({previous})" if previous else ""), None)
