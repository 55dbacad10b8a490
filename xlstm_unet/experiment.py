"""One experiment = one dataset x a list of methods x one fold: convert -> plan -> train -> predict -> evaluate.

    from xlstm_unet.experiment import run_experiment
    res = run_experiment("phantom2d", ["nnunet", "xlstm_bot", "xlstm_enc"], epochs=3, iterations=10,
                         device="cpu", output_dir="results/quickstart")
    res.summary_table()          # one row per method

Results layout (read by :mod:`xlstm_unet.figures` and :mod:`xlstm_unet.viewer`)::

    <output_dir>/<DatasetXXX_Name>/
        split.json                      the converter's seeded split (copied)
        <method>/
            predictions/<case><ending>  nnU-Net's predictions of the test split
            per_case.csv, summary.json  xlstm_unet.evaluation (the dataset's protocol)
            run.json                    method, trainer, recipe, budget, model folder, seed, device

Every method shares the data, nnU-Net's plans (patch size), the loss, the recipe and the budget. Steps whose
outputs exist are reused unless ``force=True``: a re-run after a crash continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xlstm_unet.paths import REPO_ROOT

__all__ = ["ExperimentResult", "run_experiment", "validate_experiment_args", "dataset_protocol", "table_metrics"]

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


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_experiment(dataset: str, methods: Sequence[str], *, source: str | Path | None = None,
                   dataset_id: int | None = None, convert_options: Mapping | None = None,
                   configuration: str = "2d", fold: int | str = 0, epochs: int | None = None,
                   iterations: int | None = None, recipe: str = "paper", lr: float | None = None,
                   device: str = "cpu", seed: int = 0, output_dir: str | Path = "results",
                   force: bool = False, num_processes: int = 1, validate: bool = False,
                   mirroring: bool = True) -> ExperimentResult:
    """Run one experiment end to end and return where its results are (see the module docstring).

    Args:
        dataset: a converter name (:data:`xlstm_unet.datasets.DATASETS`), e.g. ``phantom2d`` or ``kvasir_seg``.
        methods: method names (:data:`xlstm_unet.nnunet.methods.METHODS`).
        source: raw data folder (default: the converter's; the shared data for the real sample sets).
        convert_options: converter options (``max_cases``, ``n_train``, ...).
        configuration: nnU-Net configuration (``2d`` or ``3d_fullres``).
        epochs, iterations: training budget per method (``None`` = nnU-Net's full 1000 x 250).
        recipe, lr: optimiser recipe (``paper`` or ``official``) and an optional learning-rate override.
        device: ``cpu`` or ``cuda``.
        seed: conversion split seed and torch/numpy seed before each training.
        output_dir: results root; relative paths are taken from the repository root.
        force: redo conversion, preprocessing, training and evaluation even where outputs exist.
        num_processes: worker processes for nnU-Net's fingerprinting and preprocessing.
        validate: also run nnU-Net's own final validation on the fold's validation cases (the test split is
            always predicted and evaluated).
        mirroring: nnU-Net's test-time mirroring when predicting (its default; off is 4x (2D) / 8x (3D) faster).
    """
    validate_experiment_args(dataset, methods, source=source, device=device, configuration=configuration)
    from xlstm_unet.datasets import DATASETS, convert
    from xlstm_unet.evaluation import evaluate_folder
    from xlstm_unet.nnunet import model_folder, predict, prepare, train, trainer_name
    from xlstm_unet.nnunet.env import apply_env
    from xlstm_unet.nnunet.methods import get_method

    dirs = apply_env()
    info = DATASETS[dataset]
    did = dataset_id if dataset_id is not None else info.default_id
    existing = sorted(Path(dirs["nnUNet_raw"]).glob(f"Dataset{did:03d}_*/dataset.json"))  # ids are unique
    if existing and not force:
        raw = existing[0].parent
        log.info("using the converted dataset %s (force=True converts again)", raw)
    else:
        raw = convert(dataset, source=source, dataset_id=did, seed=seed, overwrite=True,
                      **dict(convert_options or {}))
    plans = sorted({get_method(m).plans for m in methods})
    prepare(raw.name, configurations=(configuration,), plans=plans, num_processes=num_processes, overwrite=force)

    out_root = Path(output_dir)
    if not out_root.is_absolute():
        out_root = REPO_ROOT / out_root
    results = out_root / raw.name
    results.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(raw / "split.json", results / "split.json")
    protocol = dataset_protocol(raw)
    ds_json = json.loads((raw / "dataset.json").read_text())
    labels = ds_json["labels"]  # {name: id}, or {name: [ids]} regions (BraTS)
    inst = raw / "labelsTs_instances"

    res = ExperimentResult(dataset=raw.name, raw_dir=raw, results_dir=results, methods=list(methods))
    for m in methods:
        mdir = results / m
        summary_file = mdir / "summary.json"
        if summary_file.is_file() and not force:
            log.info("%s: results exist, skipping (force=True reruns)", m)
            res.summaries[m] = json.loads(summary_file.read_text())
            continue
        budget = dict(epochs=epochs, iterations=iterations, recipe=recipe, lr=lr)
        folder = model_folder(raw.name, m, configuration=configuration, **budget)
        fold_dir = folder / f"fold_{fold}"
        if force or not (fold_dir / "checkpoint_final.pth").is_file():
            _seed_everything(seed)
            fold_dir = train(raw.name, m, configuration=configuration, fold=fold, device=device,
                             resume=(fold_dir / "checkpoint_latest.pth").is_file() and not force,
                             validate=validate, **budget)
        pred = predict(fold_dir, raw / "imagesTs", mdir / "predictions", device=device, mirroring=mirroring)
        summary = evaluate_folder(pred, raw / "labelsTs", protocol=protocol, out_dir=mdir, labels=labels,
                                  gt_instances_dir=inst if inst.is_dir() else None, progress=False)
        run = {"method": m, "dataset": raw.name, "trainer": trainer_name(m, **budget), "plans": get_method(m).plans,
               "configuration": configuration, "fold": fold, "recipe": recipe, "lr": lr, "epochs": epochs,
               "iterations_per_epoch": iterations, "seed": seed, "device": device, "mirroring": mirroring, "model_folder": str(folder),
               "protocol": protocol}
        (mdir / "run.json").write_text(json.dumps(run, indent=2))
        res.summaries[m] = summary
    return res
