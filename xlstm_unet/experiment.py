"""One experiment = one dataset x methods x one fold (or several): convert -> plan -> train -> predict -> evaluate.

    from xlstm_unet.experiment import run_experiment
    res = run_experiment("phantom2d", ["nnunet", "xlstm_bot", "xlstm_enc"], epochs=3, iterations=10,
                         device="cpu", output_dir="results/quickstart")
    res.summary_table()          # one row per method

Results layout (read by :mod:`xlstm_unet.figures` and :mod:`xlstm_unet.viewer`)::

    <output_dir>/<DatasetXXX_Name>/
        split.json                          the converter's seeded split (copied)
        <method>/
            per_case.csv, summary.json      per-case scores averaged over the training seeds, with the seed spread
            seed<k>/                        one training run (training seed k) of the fold ``fold``
            fold<f>_seed<k>/                instead, with ``folds=[...]``: one run per fold and seed
                predictions/<case><ending>  nnU-Net's predictions of the test split
                per_case.csv, summary.json  xlstm_unet.evaluation (the dataset's protocol)
                training_curve.csv          per epoch: losses, pseudo Dice, lr, wall and CPU seconds
                progress.png                nnU-Net's training plot
                run.json                    parameters, budget, recipe, timing, code commit; written last

Every method shares the data, nnU-Net's plans (patch size), the loss, the recipe and the budget. A (method, seed)
run is skipped when its ``run.json`` records the same parameters (so a batch re-run trains only what is missing or
changed), a training with ``checkpoint_latest.pth`` resumes, and ``force=True`` redoes everything.

With ``folds`` (several nnU-Net folds, each evaluated on the same test split), the method's ``per_case.csv`` averages
every fold and seed, and ``<DatasetXXX_Name>/folds.csv`` gives each metric's mean ± std across folds
(:func:`xlstm_unet.folds.fold_table`). A training that pauses (time limit or signal, :mod:`xlstm_unet.pause`) ends
the experiment with :class:`~xlstm_unet.pause.ExperimentPaused`; running it again resumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from xlstm_unet._io import atomic_write
from xlstm_unet.folds import fold_table, run_dir_name
from xlstm_unet.pause import ExperimentPaused, pause_handling, pause_reason
from xlstm_unet.paths import REPO_ROOT

__all__ = ["ExperimentResult", "run_experiment", "validate_experiment_args", "dataset_protocol", "table_metrics",
           "aggregate_seeds", "code_version"]

log = logging.getLogger(__name__)


@dataclass
class ExperimentResult:
    """Where an experiment's outputs are."""

    dataset: str
    raw_dir: Path
    results_dir: Path
    methods: list[str]
    summaries: dict[str, dict] = field(default_factory=dict)

    def method_dir(self, method: str) -> Path:
        return self.results_dir / method

    def table_metrics(self) -> list[str]:
        """The metrics that this dataset's results table reports (see :func:`table_metrics`)."""
        import pandas as pd

        cols: list[str] = []
        for m in self.methods:
            csv = self.results_dir / m / "per_case.csv"
            if csv.is_file():
                cols = list(pd.read_csv(csv, nrows=0).columns)
                break
        return table_metrics(dataset_protocol(self.raw_dir), cols)

    def summary_table(self):
        """A pandas DataFrame: one row per method, the mean ± std of each summary metric and the case count."""
        import pandas as pd

        rows = []
        for m in self.methods:
            s = self.summaries.get(m, {})
            row = {"method": m}
            for k, v in s.get("metrics", s).items():
                if isinstance(v, Mapping) and "mean" in v:
                    row[k] = f"{v['mean']:.4f} ± {v['std']:.4f}"
                    row["n"] = v.get("n")
            rows.append(row)
        return pd.DataFrame(rows).set_index("method")


def dataset_protocol(raw_dir: Path) -> str:
    """The evaluation protocol recorded by our converters in ``dataset.json`` (``generic`` when absent)."""
    meta = json.loads((raw_dir / "dataset.json").read_text()).get("xlstm_unet") or {}
    return meta.get("protocol", "generic")


def table_metrics(protocol: str, per_case_columns: Sequence[str] = ()) -> list[str]:
    """The per-case columns a results table reports for a protocol (as in the paper's tables).

    ``generic``, ``abdomen``, ``endoscopy``: ``dice_mean``, ``nsd_mean``; ``cells``: ``f1``; ``brats``: every
    ``dice_<region>`` then every ``hd95_<region>`` column found in ``per_case_columns``.
    """
    if protocol == "cells":
        return ["f1"]
    if protocol == "brats":
        cols = list(per_case_columns)
        return ([c for c in cols if c.startswith("dice_")] + [c for c in cols if c.startswith("hd95_")]) or \
            ["dice_mean", "hd95_mean"]
    return ["dice_mean", "nsd_mean"]


def validate_experiment_args(dataset: str, methods: Sequence[str], *, source=None, device: str = "cpu",
                             configuration: str = "2d") -> None:
    """Fail early, with a clear message, on an unknown dataset or method, a missing source or a bad device."""
    from xlstm_unet.datasets import DATASETS
    from xlstm_unet.nnunet.methods import get_method

    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(DATASETS))}")
    if not methods:
        raise ValueError("no methods given")
    dim = 3 if configuration.startswith("3d") else 2
    for m in methods:
        meth = get_method(m)
        if dim not in meth.dims:
            raise ValueError(f"method {m!r} is not defined for {dim}D (configuration {configuration!r})")
    if source is not None and not Path(source).exists():
        raise FileNotFoundError(f"data path {source} does not exist (dataset {dataset!r})")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def code_version() -> dict[str, Any]:
    """The code that runs: the git commit of the repository and whether its tracked files differ from it."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True,
                                  check=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", "xlstm_unet", "notebooks")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def _matches(run_file: Path, params: Mapping[str, Any]) -> bool:
    try:
        recorded = json.loads(run_file.read_text()).get("params")
    except (OSError, json.JSONDecodeError):
        return False
    return recorded == json.loads(json.dumps(dict(params)))


def _copy_curves(fold_dir: Path, out_dir: Path) -> None:
    for name in ("training_curve.csv", "progress.png"):
        if (fold_dir / name).is_file():
            shutil.copyfile(fold_dir / name, out_dir / name)


def _write_json(path: Path, obj: Any) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def aggregate_seeds(method_dir: Path, seeds: Sequence[int], folds: Sequence[int | str] | None = None) -> dict:
    """Average ``<method_dir>/seed<k>/per_case.csv`` over the training seeds (with ``folds``: over every
    ``<method_dir>/fold<f>_seed<k>/``) into ``<method_dir>/per_case.csv``.

    Methods are compared on these averaged per-case scores (one number per case). ``summary.json`` gets the
    mean, std, median and n over cases of the averaged scores, and for each metric the per-seed means with their
    spread (``seed_std``: std over seeds, ddof=0; 0 for one seed); with ``folds`` also the per-fold means and
    ``fold_std``. Only cases scored in every run are kept.
    """
    import pandas as pd

    runs = [(f, s) for f in (folds or [None]) for s in seeds]
    frames = [pd.read_csv(method_dir / run_dir_name(s, f) / "per_case.csv") for f, s in runs]
    cases = set(frames[0]["case"].astype(str))
    for f in frames[1:]:
        cases &= set(f["case"].astype(str))
    numeric = [c for c in frames[0].columns if c != "case" and pd.api.types.is_numeric_dtype(frames[0][c])]
    stacked = pd.concat([f.assign(case=f["case"].astype(str)) for f in frames])
    stacked = stacked[stacked["case"].isin(cases)]
    mean = stacked.groupby("case", sort=True)[numeric].mean().reset_index()
    summary: dict[str, Any] = {"seeds": list(seeds), "n_cases": len(mean), "metrics": {}, "per_seed": {}}
    if folds:
        summary.update(folds=list(folds), per_fold={})
    for col in numeric:
        vals = mean[col].to_numpy(dtype=float)
        vals = vals[np.isfinite(vals)]
        run_means = {run: float(np.nanmean(f[f["case"].astype(str).isin(cases)][col])) for run, f in zip(runs, frames)}
        seed_means = [float(np.mean([v for (_, s), v in run_means.items() if s == seed])) for seed in seeds]
        summary["metrics"][col] = {
            "mean": float(np.mean(vals)) if vals.size else None, "std": float(np.std(vals)) if vals.size else None,
            "median": float(np.median(vals)) if vals.size else None, "n": int(vals.size)}
        summary["per_seed"][col] = {"means": seed_means, "seed_std": float(np.std(seed_means))}
        if folds:
            fold_means = [float(np.mean([v for (f, _), v in run_means.items() if f == fold])) for fold in folds]
            summary["per_fold"][col] = {"means": fold_means, "fold_std": float(np.std(fold_means))}
    first = json.loads((method_dir / run_dir_name(seeds[0], runs[0][0]) / "summary.json").read_text())
    summary.update({k: v for k, v in first.items() if k not in ("metrics", "n_cases")})
    with atomic_write(method_dir / "per_case.csv") as tmp:
        mean.to_csv(tmp, index=False)
    _write_json(method_dir / "summary.json", summary)
    return summary


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive POSIX lock on ``lock_file``: jobs of one batch that start together convert and preprocess
    a dataset one after the other (the later ones then find the outputs and skip)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no concurrent jobs to guard against
        yield
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as fh:
        fcntl.lockf(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(fh, fcntl.LOCK_UN)


def run_experiment(dataset: str, methods: Sequence[str], *, source: str | Path | None = None,
                   dataset_id: int | None = None, convert_options: Mapping | None = None,
                   configuration: str = "2d", fold: int | str = 0, folds: Sequence[int | str] | None = None,
                   epochs: int | None = None, iterations: int | None = None, recipe: str = "paper",
                   lr: float | None = None, batch_size: int | None = None, amp: bool = True, device: str = "cpu",
                   num_gpus: int = 1, seed: int = 0, seeds: Sequence[int] | None = None,
                   seeds_by_method: Mapping[str, Sequence[int]] | None = None, output_dir: str | Path = "results",
                   force: bool = False, num_processes: int = 1, validate: bool = False, mirroring: bool = True,
                   time_limit: str | float | None = None) -> ExperimentResult:
    """Run one experiment end to end and return where its results are (see the module docstring).

    Args:
        dataset: a converter name (:data:`xlstm_unet.datasets.DATASETS`), e.g. ``phantom2d`` or ``kvasir_seg``.
        methods: method names (:data:`xlstm_unet.nnunet.methods.METHODS`).
        source: raw data folder (default: the converter's; the shared data for the real sample sets).
        convert_options: converter options (``max_cases``, ``n_train``, ...).
        configuration: nnU-Net configuration (``2d``, ``3d_fullres``) or an override of one
            (``2d_p320x320``, ``2d_sp2x2``; :mod:`xlstm_unet.nnunet.plans`).
        fold: nnU-Net fold (0-4) or ``"all"`` (train on every training case).
        folds: several folds instead of ``fold``, each trained with every seed (``<method>/fold<f>_seed<k>/``).
        epochs, iterations: training budget per method (``None`` = nnU-Net's full 1000 x 250).
        recipe, lr: optimiser recipe (``paper`` or ``official``) and an optional learning-rate override.
        batch_size: instead of the plans' batch size; ``amp``: ``False`` trains in float32 on CUDA.
        device: ``cpu`` or ``cuda``; ``num_gpus``: GPUs for nnU-Net's DDP training (the batch is split across them).
        seed: the conversion split's seed, and the training seed when ``seeds`` is not given.
        seeds: training seeds (each a separate training run; default ``[seed]``).
        seeds_by_method: per-method training seeds, overriding ``seeds``.
        output_dir: results root; relative paths are taken from the repository root.
        force: redo conversion, preprocessing, training and evaluation even where outputs exist.
        num_processes: worker processes for nnU-Net's fingerprinting and preprocessing.
        validate: also run nnU-Net's own final validation on the fold's validation cases (the test split is
            always predicted and evaluated).
        mirroring: nnU-Net's test-time mirroring when predicting (its default; off is 4x (2D) / 8x (3D) faster).
        time_limit: wall-clock budget from now (``"3h"``; default ``$XLSTM_UNET_TIME_LIMIT``). A training past it,
            or one that gets SIGTERM / SIGUSR1 / SIGUSR2, pauses at its next iteration.

    Raises:
        ExperimentPaused: a training paused; its checkpoint is kept and a new call resumes it.
    """
    validate_experiment_args(dataset, methods, source=source, device=device, configuration=configuration)
    fold = "all" if str(fold) == "all" else int(fold)  # notebooks pass it as text
    from xlstm_unet.datasets import DATASETS, convert
    from xlstm_unet.nnunet import prepare
    from xlstm_unet.nnunet.env import apply_env
    from xlstm_unet.nnunet.methods import get_method

    with pause_handling(time_limit):
        dirs = apply_env()
        info = DATASETS[dataset]
        did = dataset_id if dataset_id is not None else info.default_id
        plans = sorted({get_method(m).plans for m in methods})
        with _exclusive(Path(dirs["nnUNet_preprocessed"]) / ".xlstm_unet_prepare.lock"):
            existing = sorted(Path(dirs["nnUNet_raw"]).glob(f"Dataset{did:03d}_*/dataset.json"))  # ids are unique
            if existing and not force:
                raw = existing[0].parent
                log.info("using the converted dataset %s (force=True converts again)", raw)
            else:
                raw = convert(dataset, source=source, dataset_id=did, seed=seed, overwrite=True,
                              **dict(convert_options or {}))
            prepare(raw.name, configurations=(configuration,), plans=plans, num_processes=num_processes,
                    overwrite=force)

        out_root = Path(output_dir)
        if not out_root.is_absolute():
            out_root = REPO_ROOT / out_root
        results = out_root / raw.name
        results.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(raw / "split.json", results / "split.json")
        setting = _Setting(raw=raw, configuration=configuration, fold=fold, device=device, split_seed=seed,
                           mirroring=mirroring, validate=validate, force=force, num_gpus=num_gpus,
                           variant=dict(epochs=epochs, iterations=iterations, recipe=recipe, lr=lr,
                                        batch_size=batch_size, amp=amp))
        res = ExperimentResult(dataset=raw.name, raw_dir=raw, results_dir=results, methods=list(methods))
        method_seeds = {m: list((seeds_by_method or {}).get(m) or seeds or [seed]) for m in methods}
        fold_list = [f if str(f) == "all" else int(f) for f in folds] if folds else None
        # seed-major: every method's first seed before any second one, so that a long study has a complete table early
        for k in range(max(len(v) for v in method_seeds.values())):
            for m in methods:
                if k < len(method_seeds[m]):
                    s = method_seeds[m][k]
                    for f in fold_list or [fold]:
                        _run_seed(replace(setting, fold=f), m, s,
                                  results / m / run_dir_name(s, f if fold_list else None))
                    res.summaries[m] = aggregate_seeds(results / m, method_seeds[m][:k + 1], fold_list)
        if fold_list:
            table = fold_table(results, methods)
            with atomic_write(results / "folds.csv") as tmp:
                table.to_csv(tmp, index=False)
        return res


@dataclass(frozen=True)
class _Setting:
    """What every (method, seed) run of one experiment shares."""

    raw: Path
    configuration: str
    fold: int | str
    device: str
    split_seed: int
    mirroring: bool
    validate: bool
    force: bool
    num_gpus: int
    variant: Mapping[str, Any]


def _run_seed(st: _Setting, method: str, seed: int, out: Path) -> None:
    """Train, predict and evaluate one method with one training seed into ``out`` (skipped when ``out/run.json``
    records the same parameters and the scores exist)."""
    import torch

    from xlstm_unet.evaluation import evaluate_folder
    from xlstm_unet.nnunet import model_folder, predict, train, trainer_name
    from xlstm_unet.nnunet.methods import get_method

    trainer = trainer_name(method, seed=seed, **st.variant)
    params = {"method": method, "dataset": st.raw.name, "trainer": trainer, "plans": get_method(method).plans,
              "configuration": st.configuration, "fold": st.fold, "split_seed": st.split_seed, "seed": seed,
              "device": st.device, "mirroring": st.mirroring}
    if not st.force and _matches(out / "run.json", params) and (out / "per_case.csv").is_file() \
            and (out / "summary.json").is_file():
        log.info("%s seed %d: results exist with the same parameters, skipping (force=True reruns)", method, seed)
        return
    what = f"{method} seed {seed} fold {st.fold}"
    if pause_reason():
        raise ExperimentPaused(f"{what}: not started ({pause_reason()}); run again to continue")
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").unlink(missing_ok=True)  # written last: its presence marks a finished run
    folder = model_folder(st.raw.name, method, configuration=st.configuration, seed=seed, **st.variant)
    fold_dir = folder / f"fold_{st.fold}"
    t0, c0 = time.perf_counter(), time.process_time()
    trained_now = st.force or not (fold_dir / "checkpoint_final.pth").is_file()
    if trained_now:
        fold_dir = train(st.raw.name, method, configuration=st.configuration, fold=st.fold, device=st.device,
                         resume=(fold_dir / "checkpoint_latest.pth").is_file() and not st.force,
                         validate=st.validate, seed=seed, num_gpus=st.num_gpus, **st.variant)
        if not (fold_dir / "checkpoint_final.pth").is_file():
            raise ExperimentPaused(f"{what}: training paused ({pause_reason() or 'stopped before its last epoch'})"
                                   f"; checkpoint_latest.pth kept in {fold_dir}; run again to resume")
    train_wall, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    t1 = time.perf_counter()
    pred = predict(fold_dir, st.raw / "imagesTs", out / "predictions", device=st.device, mirroring=st.mirroring)
    predict_s = time.perf_counter() - t1
    protocol = dataset_protocol(st.raw)
    labels = json.loads((st.raw / "dataset.json").read_text())["labels"]  # {name: id} or {name: [ids]} (BraTS)
    inst = st.raw / "labelsTs_instances"
    evaluate_folder(pred, st.raw / "labelsTs", protocol=protocol, out_dir=out, labels=labels,
                    gt_instances_dir=inst if inst.is_dir() else None, progress=True)
    _copy_curves(fold_dir, out)
    run_config = json.loads((fold_dir / "run_config.json").read_text()) if (fold_dir / "run_config.json").is_file() \
        else {}
    curve = _curve_totals(fold_dir / "training_curve.csv")
    run = {
        "params": params,
        "budget": {"epochs": run_config.get("num_epochs"), "iterations_per_epoch":
                   run_config.get("num_iterations_per_epoch"), "batch_size": run_config.get("batch_size"),
                   "patch_size": run_config.get("patch_size"), "spacing": run_config.get("spacing")},
        "recipe": run_config.get("recipe"),
        "protocol": protocol,
        "num_gpus": st.num_gpus,
        "model_folder": str(folder),
        "timing": {**curve, "this_call_train_wall_s": round(train_wall, 1) if trained_now else 0.0,
                   "this_call_train_cpu_s": round(train_cpu, 1) if trained_now else 0.0,
                   "predict_s": round(predict_s, 1), "torch_threads": torch.get_num_threads()},
        "code": code_version(),
        "versions": run_config.get("versions"),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(out / "run.json", run)


def _curve_totals(curve_csv: Path) -> dict[str, Any]:
    """Training time from the trainer's per-epoch curve (it spans resumed runs): epochs, wall and CPU seconds."""
    import pandas as pd

    if not curve_csv.is_file():
        return {}
    curve = pd.read_csv(curve_csv)
    return {"epochs_run": int(len(curve)), "train_s": round(float(curve["epoch_s"].sum()), 1),
            "train_cpu_s": round(float(curve["epoch_cpu_s"].sum()), 1)}
