"""Results across nnU-Net folds: the run folders' names, and each metric's mean ± std across folds.

Layout (:mod:`xlstm_unet.experiment`): ``<results>/<DatasetXXX_Name>/<method>/seed<k>/`` for an experiment of one
fold (the fold is recorded in the run's ``run.json``), ``<method>/fold<f>_seed<k>/`` for one of several ``folds``.
Every fold's model predicts the same test split, so folds differ in their training cases only.

:func:`fold_table`, per method and metric:

1. each finished run (fold f, seed k; ``run.json`` present): the mean over the test cases in its ``per_case.csv``
   (NaN cases left out);
2. each fold: the mean over its seeds;
3. across folds: the mean and the standard deviation (ddof=0, as the seed spread in ``summary.json``; 0 for one
   fold), with the folds and seeds that went in.

A method folder with ``fold<f>_seed<k>`` runs is read from those only; otherwise from its ``seed<k>`` runs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["run_dir_name", "find_runs", "fold_table"]

_RUN_RE = re.compile(r"^(?:fold(?P<fold>[A-Za-z0-9]+)_)?seed(?P<seed>\d+)$")


def run_dir_name(seed: int, fold: int | str | None = None) -> str:
    """``seed<k>`` (one-fold experiments), or ``fold<f>_seed<k>`` (experiments of several folds)."""
    return f"seed{int(seed)}" if fold is None else f"fold{fold}_seed{int(seed)}"


def find_runs(method_dir: str | os.PathLike) -> list[tuple[str, int, Path]]:
    """``(fold, seed, folder)`` of every finished run of a method, sorted; the fold as text (``"0"``, ``"all"``)."""
    method_dir = Path(method_dir)
    found = []
    for d in sorted(method_dir.iterdir()) if method_dir.is_dir() else []:
        m = _RUN_RE.match(d.name)
        if not (m and d.is_dir() and (d / "run.json").is_file() and (d / "per_case.csv").is_file()):
            continue
        fold = m["fold"]
        if fold is None:
            fold = json.loads((d / "run.json").read_text()).get("params", {}).get("fold")
        found.append((str(fold), int(m["seed"]), d, m["fold"] is not None))
    if any(by_name for *_, by_name in found):
        found = [r for r in found if r[3]]
    return sorted((f, s, d) for f, s, d, _ in found)


def fold_table(results_dir: str | os.PathLike, methods: Sequence[str] | None = None,
               metrics: Sequence[str] | None = None):
    """Mean ± std across folds of each method's metrics (module docstring), as a pandas DataFrame with the columns
    ``method, metric, mean, std, n_folds, folds, seeds`` (one row per method and metric; ``folds`` and ``seeds``
    as text, e.g. ``"0 1 2"``).

    Args:
        results_dir: ``<output_dir>/<DatasetXXX_Name>``, holding one folder per method.
        methods: the methods, in this order (default: every folder with finished runs, sorted).
        metrics: the per-case columns (default: every numeric column of the first run's ``per_case.csv``).
    """
    import pandas as pd

    results_dir = Path(results_dir)
    if methods is None:
        methods = [d.name for d in sorted(results_dir.iterdir()) if d.is_dir() and find_runs(d)]
    rows = []
    for method in methods:
        runs = find_runs(results_dir / method)
        if not runs:
            continue
        frames = {(f, s): pd.read_csv(d / "per_case.csv") for f, s, d in runs}
        first = next(iter(frames.values()))
        cols = list(metrics) if metrics is not None else \
            [c for c in first.columns if c != "case" and pd.api.types.is_numeric_dtype(first[c])]
        folds = sorted({f for f, _ in frames}, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else f))
        for col in cols:
            fold_means = []
            for fold in folds:
                seed_means = [float(np.nanmean(df[col].to_numpy(dtype=float)))
                              for (f, _), df in frames.items() if f == fold]
                fold_means.append(float(np.mean(seed_means)))
            rows.append({"method": method, "metric": col, "mean": float(np.mean(fold_means)),
                         "std": float(np.std(fold_means)), "n_folds": len(folds), "folds": " ".join(folds),
                         "seeds": " ".join(str(s) for s in sorted({s for _, s in frames}))})
    return pd.DataFrame(rows, columns=["method", "metric", "mean", "std", "n_folds", "folds", "seeds"])
