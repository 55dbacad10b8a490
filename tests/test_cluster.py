"""Scaling out: run-all's jobs (submitit's LocalExecutor standing in for SLURM), the job table, the paused status,
the slurm config section, multi-GPU training reaching nnU-Net, and mean ± std across folds."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml

from xlstm_unet.batch import Status, format_summary, load_config, run_all
from xlstm_unet.cli import main
from xlstm_unet.cluster import _collect, expand_jobs, forwarding_signals, read_job_table
from xlstm_unet.folds import fold_table
from xlstm_unet.pause import PAUSED_EXIT_CODE

# A stand-in for an experiment notebook: the parameters the real ones have, one "training" per (method, seed) that
# is skipped when done (as run.json does); "bad" always fails, "slow" pauses on its first attempt.
EXPERIMENT = '''
import json, os, pathlib
from xlstm_unet.pause import ExperimentPaused
out = pathlib.Path("results")
for m in methods:
    for s in (seeds_by_method.get(m) or seeds or [seed]):
        run = out / m / f"fold{fold}_seed{s}"
        if (run / "done.json").exists():
            continue
        if m == "bad":
            raise ValueError(f"boom {m}")
        if m == "slow":
            tries = out / "slow_tries.txt"
            n = int(tries.read_text()) if tries.exists() else 0
            tries.parent.mkdir(parents=True, exist_ok=True)
            tries.write_text(str(n + 1))
            if n == 0:
                raise ExperimentPaused(f"{m} seed {s}: training paused (time limit)")
        run.mkdir(parents=True, exist_ok=True)
        (run / "done.json").write_text(json.dumps({"num_gpus": num_gpus,
                                                   "time_limit": os.environ.get("XLSTM_UNET_TIME_LIMIT")}))
        print(f"trained {m} seed {s}")
(out / ("summary_" + "_".join(methods) + ".txt")).write_text("aggregated")
'''
PARAMS = ('methods: list = ["a"]\nseeds: list = []\nseeds_by_method: dict = {}\nseed: int = 0\nfold: int = 0\n'
          'folds: list = []\nnum_gpus: int = 1')


def _notebook(path: Path, params: str, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


def _config(tmp_path: Path, methods: list[str], **top) -> Path:
    (tmp_path / "nbs").mkdir(exist_ok=True)
    _notebook(tmp_path / "nbs" / "exp.ipynb", PARAMS, EXPERIMENT)
    _notebook(tmp_path / "nbs" / "tables.ipynb", 'tag: str = "t"',
              'import pathlib\npathlib.Path("tables.txt").write_text(tag)')
    cfg = {"base_dir": ".", "output_dir": "executed", "slurm": {"partition": "gpu", "time": "2h", "gpus_per_node": 2},
           "experiments": [
               {"name": "exp", "notebook": "nbs/exp.ipynb",
                "parameters": {"methods": methods, "seeds": [0], "seeds_by_method": {"a": [0, 1]}}},
               {"name": "tables", "notebook": "nbs/tables.ipynb"}],
           **top}
    path = tmp_path / "batch.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _summary(out: str) -> dict[str, str]:
    return {ln.split()[0]: ln for ln in out.strip().splitlines()[:-1]}


# ----------------------------------------------------------------------------------------------- config, jobs

def test_slurm_section_is_checked_and_jobs_map_onto_notebook_runs(tmp_path):
    cfg = load_config(_config(tmp_path, ["a", "slow"]))
    assert cfg.executor == "local" and cfg.slurm == {"partition": "gpu", "time": 120, "gpus_per_node": 2}
    training, final = expand_jobs(cfg, cfg.experiments[0])
    assert [j.key for j in training] == ["exp/a_fold0_seed0", "exp/a_fold0_seed1", "exp/slow_fold0_seed0"]
    assert training[1].run.parameters == {"methods": ["a"], "seeds": [1], "seeds_by_method": {}, "num_gpus": 2}
    assert training[1].cfg.output_dir == cfg.output_dir / "jobs" / "exp"
    assert final.run is cfg.experiments[0] and final.key == "exp"
    assert expand_jobs(cfg, cfg.experiments[1])[0] == []  # no methods: the final job only

    raw = yaml.safe_load((tmp_path / "batch.yaml").read_text())
    raw["experiments"][0]["parameters"].update(folds=[0, "all"], num_gpus=1)
    raw["experiments"][0]["slurm"] = {"time": "1-00:00:00"}
    (tmp_path / "batch.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "batch.yaml")
    training, _ = expand_jobs(cfg, cfg.experiments[0])
    assert [j.key for j in training][:4] == ["exp/a_fold0_seed0", "exp/a_fold0_seed1", "exp/a_foldall_seed0",
                                              "exp/a_foldall_seed1"]
    assert training[2].run.parameters["folds"] == ["all"] and training[2].run.parameters["num_gpus"] == 1
    assert training[0].slurm == {"partition": "gpu", "time": 1440, "gpus_per_node": 2}


def test_slurm_resources_reach_sbatch(tmp_path, monkeypatch, capsys):
    from xlstm_unet.cluster import Executor, _make_executor

    path = _config(tmp_path, ["a"])
    raw = yaml.safe_load(path.read_text())
    raw["slurm"].update(mem=64, cpus_per_task=8, setup=["module load cuda"], additional_parameters={"qos": "high"})
    raw["experiments"][0]["slurm"] = {"time": "1-00:00:00"}
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    assert main(["run-all", str(path), "--executor", "slurm"]) == 2  # not a SLURM machine: a clear error
    assert "--executor slurm needs SLURM's sbatch, srun, sacct on PATH" in capsys.readouterr().err
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # submitit looks for srun; nothing is submitted here
    cfg = load_config(path)
    training, _ = expand_jobs(cfg, cfg.experiments[0])
    text = _make_executor(Executor.SLURM, tmp_path / "jobs", training[0].slurm, "exp")._make_submission_file_text(
        "python -m submitit.core._submit x", "uid")
    for flag in ("--partition=gpu", "--time=1440", "--gpus-per-node=2", "--mem=64G", "--cpus-per-task=8",
                 "--qos=high", "--job-name=xlstm-unet-exp", f"--output={tmp_path / 'jobs'}/%j_0_log.out"):
        assert f"#SBATCH {flag}\n" in text
    assert "\nmodule load cuda\n" in text


@pytest.mark.parametrize(("section", "match"), [
    ("executor: pbs\n", "'executor' must be one of"),
    ("slurm: {partitions: gpu}\n", "slurm: unknown keys \\['partitions'\\]"),
    ("slurm: {time: soon}\n", "slurm.time: expected a duration"),
    ("slurm: {gpus_per_node: two}\n", "slurm.gpus_per_node has the wrong type"),
    ("slurm: [gpu]\n", "'slurm' must be a mapping"),
])
def test_bad_slurm_config_names_the_file(tmp_path, section, match):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"output_dir: o\n{section}experiments:\n  - {{name: a, notebook: n.ipynb}}\n")
    with pytest.raises(ValueError, match=match) as err:
        load_config(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(("state", "status"), [
    ("PENDING", Status.QUEUED), ("RUNNING", Status.QUEUED), ("TIMEOUT", Status.PAUSED),
    ("PREEMPTED", Status.PAUSED), ("CANCELLED by 0", Status.FAILED), ("OUT_OF_MEMORY", Status.FAILED),
    ("NO PROCESS AND NO RESULT", Status.FAILED)])
def test_scheduler_states_without_a_result(tmp_path, state, status):
    job = SimpleNamespace(job_id="17", state=state, paths=SimpleNamespace(result_pickle=tmp_path / "none.pkl",
                                                                          stdout=tmp_path / "17.out"))
    got, error, sched, _ = _collect(job)
    assert (got, sched) == (status, state)
    assert ("17" in error) == (status is not Status.QUEUED)


# ----------------------------------------------------------------------------------------------- jobs end to end

def _rows(tmp_path: Path) -> dict[str, dict[str, str]]:
    with open(tmp_path / "executed" / "jobs.csv", newline="") as fh:
        return {r["key"]: r for r in csv.DictReader(fh)}


@pytest.mark.slow
def test_jobs_submit_collect_resubmit_and_finish(tmp_path, capsys):
    path = _config(tmp_path, ["a", "bad", "slow"])
    # 1) every training job and the tables notebook run; "bad" fails, "slow" pauses, the final job waits for them
    assert main(["run-all", str(path), "--executor", "submitit-local", "--time-limit", "1h"]) == 1
    lines = _summary(capsys.readouterr().out)
    assert list(lines) == ["exp/a_fold0_seed0", "exp/a_fold0_seed1", "exp/bad_fold0_seed0", "exp/slow_fold0_seed0",
                           "tables"]
    assert " ok (" in lines["exp/a_fold0_seed0"] and " ok (" in lines["tables"]
    assert "FAILED: ValueError: boom bad" in lines["exp/bad_fold0_seed0"]
    assert "paused: ExperimentPaused: slow seed 0: training paused (time limit)" in lines["exp/slow_fold0_seed0"]
    rows = _rows(tmp_path)
    assert {k: r["state"] for k, r in rows.items()} == {
        "exp/a_fold0_seed0": "ok", "exp/a_fold0_seed1": "ok", "exp/bad_fold0_seed0": "failed",
        "exp/slow_fold0_seed0": "paused", "tables": "ok"}
    log = Path(rows["exp/a_fold0_seed1"]["stdout"])
    assert log.is_file() and "trained a seed 1" in log.read_text()  # the notebook's output is in the job's log
    assert rows["exp/a_fold0_seed1"]["job_id"] and Path(rows["exp/a_fold0_seed1"]["notebook"]).is_file()
    done = json.loads((tmp_path / "results" / "a" / "fold0_seed1" / "done.json").read_text())
    assert done == {"num_gpus": 2, "time_limit": "3600"}  # gpus_per_node -> num_gpus; --time-limit per job
    assert not (tmp_path / "executed" / "exp.done.json").exists()

    # 2) the failed and the paused job are submitted again: "slow" resumes and finishes, "bad" fails again
    assert main(["run-all", str(path), "--executor", "submitit-local"]) == 1
    lines = _summary(capsys.readouterr().out)
    assert "skipped" in lines["exp/a_fold0_seed0"] and "skipped" in lines["tables"]
    assert " ok (" in lines["exp/slow_fold0_seed0"] and "FAILED: ValueError: boom bad" in lines["exp/bad_fold0_seed0"]
    assert (tmp_path / "results" / "slow_tries.txt").read_text() == "2"

    # 3) without "bad" every training job is done: the final job runs the whole experiment (aggregation only)
    raw = yaml.safe_load(path.read_text())
    raw["experiments"][0]["parameters"]["methods"] = ["a", "slow"]
    path.write_text(yaml.safe_dump(raw))
    assert main(["run-all", str(path), "--executor", "submitit-local"]) == 0
    lines = _summary(capsys.readouterr().out)
    assert list(lines) == ["exp/a_fold0_seed0", "exp/a_fold0_seed1", "exp/slow_fold0_seed0", "exp", "tables"]
    assert " ok (" in lines["exp"] and all("skipped" in lines[k] for k in lines if k != "exp")
    assert (tmp_path / "results" / "summary_a_slow.txt").is_file()
    assert (tmp_path / "executed" / "exp.done.json").is_file() and read_job_table(load_config(path))["exp"]

    # 4) a done experiment is one line, as with the local executor
    assert main(["run-all", str(path), "--executor", "submitit-local"]) == 0
    out = capsys.readouterr().out
    assert list(_summary(out)) == ["exp", "tables"] and out.strip().endswith("0 ok, 2 skipped, 0 failed")


def test_pause_signals_reach_the_kernel(tmp_path):
    flag = tmp_path / "got"
    child = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys, time, pathlib\n"
        f"signal.signal(signal.SIGUSR1, lambda s, f: (pathlib.Path({str(flag)!r}).write_text('USR1'), sys.exit()))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with forwarding_signals():
            os.kill(os.getpid(), signal.SIGUSR1)  # to this process: passed on, not acted on
            child.wait(timeout=20)
        assert flag.read_text() == "USR1"
    finally:
        child.kill()
        child.wait()


# ----------------------------------------------------------------------------------------------- local executor

def test_local_run_reports_paused_and_passes_the_time_limit(tmp_path, capsys):
    path = _config(tmp_path, ["a", "slow"])
    assert main(["run-all", str(path), "--only", "exp", "--time-limit", "2h"]) == PAUSED_EXIT_CODE
    out = capsys.readouterr().out
    assert "exp  paused: ExperimentPaused: slow seed 0: training paused (time limit) (run again to resume)" in out
    assert out.strip().endswith("0 ok, 0 skipped, 0 failed, 1 paused")
    limit = int(json.loads((tmp_path / "results" / "a" / "fold0_seed0" / "done.json").read_text())["time_limit"])
    assert 7100 < limit <= 7200  # what was left of the command's budget
    res = run_all(path, only=["exp"])  # the next call resumes
    assert [r.status for r in res] == [Status.OK] and (tmp_path / "results" / "summary_a_slow.txt").is_file()
    res = run_all(path, time_limit="0.5")  # no time left: nothing starts
    assert [(r.name, r.status) for r in res] == [("exp", Status.SKIPPED), ("tables", Status.PAUSED)]
    assert "time limit 0:00:00 reached" in format_summary(res)


# ----------------------------------------------------------------------------------------------- multi-GPU

def test_num_gpus_reaches_nnunet_ddp(monkeypatch):
    import torch
    import torch.multiprocessing as mp
    from nnunetv2.run import run_training as rt

    from xlstm_unet.nnunet import train
    from xlstm_unet.pause import TIME_LIMIT_ENV

    calls = []

    def fake_run_training(*args, **kwargs):
        calls.append((args, kwargs, os.environ.get(TIME_LIMIT_ENV)))
        if len(calls) == 2:
            raise mp.ProcessExitedException("paused", error_index=1, error_pid=1, exit_code=PAUSED_EXIT_CODE)
        if len(calls) == 3:
            raise mp.ProcessExitedException("crashed", error_index=0, error_pid=1, exit_code=1)

    monkeypatch.setattr(rt, "run_training", fake_run_training)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fold = train("Dataset999_Fake", "xlstm_bot", epochs=2, iterations=3, device="cuda", num_gpus=2, fold=1,
                 time_limit="1h")
    (args, kwargs, limit), = calls
    assert args == ("Dataset999_Fake", "2d", 1, "nnUNetTrainerXLSTMBot_2ep_3it", "nnUNetPlans")
    assert kwargs["num_gpus"] == 2 and kwargs["device"].type == "cuda" and not kwargs["continue_training"]
    assert 3590 < int(limit) <= 3600  # the ranks get what is left of the budget
    assert fold.parts[-3:] == ("Dataset999_Fake", "nnUNetTrainerXLSTMBot_2ep_3it__nnUNetPlans__2d", "fold_1")
    train("Dataset999_Fake", "xlstm_bot", device="cuda", num_gpus=4, resume=True)  # paused: returns
    assert calls[1][1]["num_gpus"] == 4 and calls[1][1]["continue_training"]
    with pytest.raises(mp.ProcessExitedException, match="crashed"):
        train("Dataset999_Fake", "xlstm_bot", device="cuda", num_gpus=2)
    with pytest.raises(ValueError, match="batch_size 1 < num_gpus 2"):
        train("Dataset999_Fake", "xlstm_bot", device="cuda", num_gpus=2, batch_size=1)
    with pytest.raises(ValueError, match="needs device='cuda'"):
        train("Dataset999_Fake", "xlstm_bot", device="cpu", num_gpus=2)


# ----------------------------------------------------------------------------------------------- folds

def test_fold_table_matches_pandas(tmp_path):
    rng = np.random.default_rng(0)
    cases = [f"case{i}" for i in range(6)]
    frames = []
    for method in ("nnunet", "xlstm_enc"):
        for fold in (0, 1, 2):
            for seed in (0, 1):
                df = pd.DataFrame({"case": cases, "dice_mean": rng.uniform(0.5, 0.9, 6),
                                   "nsd_mean": rng.uniform(0.4, 1.0, 6)})
                df.loc[fold + seed, "nsd_mean"] = np.nan  # an empty-mask case: left out
                run = tmp_path / method / f"fold{fold}_seed{seed}"
                run.mkdir(parents=True)
                df.to_csv(run / "per_case.csv", index=False)
                (run / "run.json").write_text("{}")
                frames.append(df.assign(method=method, fold=fold, seed=seed))
    unfinished = tmp_path / "nnunet" / "fold3_seed0"  # no run.json: not counted
    unfinished.mkdir()
    frames[0].to_csv(unfinished / "per_case.csv", index=False)

    got = fold_table(tmp_path).set_index(["method", "metric"])
    long = pd.concat(frames).melt(id_vars=["method", "fold", "seed", "case"], var_name="metric")
    per_run = long.groupby(["method", "metric", "fold", "seed"])["value"].mean()
    per_fold = per_run.groupby(["method", "metric", "fold"]).mean()
    want = per_fold.groupby(["method", "metric"]).agg(mean="mean", std=lambda v: v.std(ddof=0))
    assert list(got.index) == list(want.index)
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-12)
    np.testing.assert_allclose(got["std"], want["std"], rtol=1e-12)
    assert set(got["n_folds"]) == {3} and set(got["folds"]) == {"0 1 2"} and set(got["seeds"]) == {"0 1"}
    one = fold_table(tmp_path, methods=["xlstm_enc"], metrics=["dice_mean"])
    assert one[["method", "metric"]].values.tolist() == [["xlstm_enc", "dice_mean"]]


def test_fold_table_reads_one_fold_runs_from_run_json(tmp_path):
    for seed, dice in ((0, [0.2, 0.4]), (1, [0.6, 0.8])):
        run = tmp_path / "nnunet" / f"seed{seed}"
        run.mkdir(parents=True)
        pd.DataFrame({"case": ["a", "b"], "dice_mean": dice}).to_csv(run / "per_case.csv", index=False)
        (run / "run.json").write_text(json.dumps({"params": {"fold": "all"}}))
    row = fold_table(tmp_path).iloc[0]
    assert (row["folds"], row["n_folds"], row["std"]) == ("all", 1, 0.0)
    assert row["mean"] == pytest.approx(0.5)


@pytest.mark.slow
def test_experiment_folds_layout_and_pause(phantom2d_prepared, tmp_path):
    from xlstm_unet.experiment import run_experiment
    from xlstm_unet.pause import ExperimentPaused

    kw = dict(dataset_id=901, folds=[0, 1], epochs=1, iterations=1, output_dir=tmp_path, mirroring=False)
    with pytest.raises(ExperimentPaused, match="nnunet seed 0 fold 0: not started \\(time limit"):
        run_experiment("phantom2d", ["nnunet"], time_limit="0.001", **kw)
    res = run_experiment("phantom2d", ["nnunet"], **kw)
    method_dir = res.results_dir / "nnunet"
    assert sorted(p.name for p in method_dir.iterdir() if p.is_dir()) == ["fold0_seed0", "fold1_seed0"]
    assert json.loads((method_dir / "fold1_seed0" / "run.json").read_text())["params"]["fold"] == 1
    table = pd.read_csv(res.results_dir / "folds.csv")
    fold_means = [pd.read_csv(method_dir / f"fold{f}_seed0" / "per_case.csv")["dice_mean"].mean() for f in (0, 1)]
    row = table[(table["method"] == "nnunet") & (table["metric"] == "dice_mean")].iloc[0]
    assert row["mean"] == pytest.approx(np.mean(fold_means)) and row["std"] == pytest.approx(np.std(fold_means))
    summary = json.loads((method_dir / "summary.json").read_text())
    assert summary["folds"] == [0, 1] and summary["per_fold"]["dice_mean"]["means"] == pytest.approx(fold_means)
