"""Reports of a multi-seed study from its committed results: ``xlstm-unet tables RESULTS_ROOT``.

Reads the layout written by :func:`xlstm_unet.experiment.run_experiment`, one sub-folder per experiment::

    <root>/<experiment>/<DatasetXXX_Name>/<method>/seed<k>/per_case.csv        per-case scores of one training run
                                                    /seed<k>/run.json           parameters, budget, timing, commit
                                                    /seed<k>/training_curve.csv per epoch
                                                    /seed<k>/predictions/       masks of the test split

A (method, seed) counts once its ``run.json`` exists (it is written last). Methods are compared on their per-case
scores averaged over seeds (one number per case), with the spread between seeds (std of the per-seed means) beside
each mean, the paired Wilcoxon test against the reference with Holm's correction over the other methods, and a
bootstrap 95% CI of the mean difference (:func:`xlstm_unet.metrics.compare_methods`).

When ``<root>`` holds a train_step benchmark measured at an experiment's own plans and configuration
(``benchmarks/train_step.py --json --plans <nnUNet_preprocessed>/<Dataset>/<plans>.json --configuration C``), the
table shows each method's quiet seconds per step from it, and the score is plotted against the training time that
step cost gives (seconds per step x the run's steps): the study's own wall and CPU times count the pauses and the
other work of a shared machine.

``write_report`` writes, per experiment, ``table.md`` / ``table.csv`` (and for sets of at most 10 test cases
``per_case.md`` / ``per_case.csv``), ``training_curves.png``, ``score_vs_time.png`` and ``fig2_panel.png`` (best,
median and worst case of the reference, every method beside it; needs the raw images), and ``<root>/README.md``
with all of it; with re-runs of some (method, seed) in ``<root>_rerun`` (the same command again, same layout), also
``reproduction.csv``, each re-run beside the study's own run. Every number there comes from the results files;
nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["load_runs", "load_curves", "seed_averaged", "step_cost_file", "study_numbers", "study_table",
           "plot_training_curves", "plot_score_vs_time", "reproduction", "write_report", "register"]

log = logging.getLogger(__name__)

#: The metric each evaluation protocol's study table leads with, and the others it shows.
PROTOCOL_METRICS: dict[str, tuple[str, ...]] = {"cells": ("f1",), "brats": ("dice_mean", "hd95_mean")}
_DEFAULT_METRICS = ("dice_mean", "nsd_mean")
_METRIC_LABELS = {"dice_mean": "DSC", "nsd_mean": "NSD", "f1": "F1", "hd95_mean": "HD95"}
_SMALL = 10  # test sets up to this size also get a per-case table


def _min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p-value an exact Wilcoxon signed-rank test can give with ``n`` paired cases (every
    difference of one sign): below ``alpha`` only from n = 6 on for alpha = 0.05. With fewer cases the table gives
    no p-value and no CI, and its statement ranks nothing."""
    return min(1.0, 2 * 0.5 ** n)


def _min_testable_n(alpha: float = 0.05) -> int:
    return next(n for n in range(1, 64) if _min_wilcoxon_p(n) < alpha)


def _label(method: str) -> str:
    from xlstm_unet.nnunet.methods import METHODS

    return METHODS[method].label if method in METHODS and METHODS[method].label else method


def load_runs(root: str | os.PathLike) -> pd.DataFrame:
    """One row per finished (experiment, dataset, method, seed) below ``root``, from its ``run.json``: the
    parameters, budget, timing (training wall and CPU hours summed over epochs), the code commit and when it
    finished."""
    rows = []
    for run_file in sorted(Path(root).glob("*/Dataset*/*/seed*/run.json")):
        seed_dir = run_file.parent
        if not seed_dir.name[4:].isdigit():
            continue
        run = json.loads(run_file.read_text())
        timing, budget, params = run.get("timing", {}), run.get("budget", {}), run.get("params", {})
        rows.append({
            "experiment": seed_dir.parents[2].name, "dataset": seed_dir.parents[1].name,
            "method": seed_dir.parent.name, "seed": int(seed_dir.name[4:]), "dir": str(seed_dir),
            "protocol": run.get("protocol"), "trainer": params.get("trainer"),
            "configuration": params.get("configuration"), "split_seed": params.get("split_seed"),
            "epochs": budget.get("epochs"), "iterations_per_epoch": budget.get("iterations_per_epoch"),
            "batch_size": budget.get("batch_size"), "patch_size": budget.get("patch_size"),
            "train_h": (timing.get("train_s") or np.nan) / 3600, "train_cpu_h": (timing.get("train_cpu_s") or
                                                                                  np.nan) / 3600,
            "predict_s": timing.get("predict_s"), "commit": (run.get("code") or {}).get("commit"),
            "finished": run.get("finished"),
        })
    return pd.DataFrame(rows)


def seed_averaged(seed_dirs: Sequence[str | os.PathLike]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-case scores averaged over the given seed folders (cases scored by all of them), and the per-seed means
    (one row per seed folder, numeric columns)."""
    frames = [pd.read_csv(Path(d) / "per_case.csv").assign(case=lambda f: f["case"].astype(str))
              for d in seed_dirs]
    cases = set.intersection(*(set(f["case"]) for f in frames))
    numeric = [c for c in frames[0].columns if c != "case" and pd.api.types.is_numeric_dtype(frames[0][c])]
    frames = [f[f["case"].isin(cases)] for f in frames]
    averaged = pd.concat(frames).groupby("case", sort=True)[numeric].mean()
    per_seed = pd.DataFrame([f[numeric].mean() for f in frames])
    return averaged, per_seed


def step_cost_file(root: str | os.PathLike, dataset: str, configuration: str) -> Path | None:
    """The train_step benchmark JSON in ``root`` (not below it) measured at ``dataset``'s plans and
    ``configuration`` (its ``plans``: ``{"file": .../<dataset>/<plans>.json, "configuration": ...}``), if any."""
    for path in sorted(Path(root).glob("*.json")):
        try:
            plans = json.loads(path.read_text()).get("plans")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(plans, dict) and plans.get("configuration") == configuration \
                and Path(str(plans.get("file"))).parent.name == dataset:
            return path
    return None


def study_numbers(root: str | os.PathLike, experiment: str, reference: str = "xlstm_enc",
                  metrics: Sequence[str] | None = None, n_boot: int = 10000) -> pd.DataFrame:
    """The numbers of one experiment's study table: one row per method (in run order), per metric ``<m>_mean,
    <m>_std`` (over cases of the seed-averaged scores), ``<m>_median``, ``<m>_seed_std`` (std of the per-seed
    means, ddof=0), ``<m>_diff``, ``<m>_ci_low``, ``<m>_ci_high`` (method - reference), ``<m>_p``, ``<m>_p_holm``;
    plus ``seeds``, ``n``, the median training hours over seeds (``train_h``, ``train_cpu_h``), and from the
    experiment's step cost file (:func:`step_cost_file`; NaN without one) ``step_s`` and ``step_h`` (``step_s`` x
    the run's steps)."""
    from xlstm_unet.efficiency import method_costs
    from xlstm_unet.metrics import compare_methods

    runs = load_runs(root)
    runs = runs[runs["experiment"] == experiment]
    if runs.empty:
        raise ValueError(f"{Path(root) / experiment}: no finished runs (no <method>/seed<k>/run.json)")
    methods = list(dict.fromkeys(runs["method"]))
    metrics = list(metrics or PROTOCOL_METRICS.get(runs["protocol"].iloc[0], _DEFAULT_METRICS))
    averaged, per_seed = {}, {}
    for m in methods:
        averaged[m], per_seed[m] = seed_averaged(runs[runs["method"] == m]["dir"].tolist())
    ref = reference if reference in methods else methods[0]
    out = pd.DataFrame(index=pd.Index(methods, name="method"))
    out["seeds"] = [len(per_seed[m]) for m in methods]
    out["train_h"] = [runs[runs["method"] == m]["train_h"].median() for m in methods]
    out["train_cpu_h"] = [runs[runs["method"] == m]["train_cpu_h"].median() for m in methods]
    first = runs.iloc[0]
    cost_file = step_cost_file(root, first["dataset"], first["configuration"])
    costs = method_costs(cost_file)["step_s"] if cost_file else pd.Series(dtype=float)
    out["step_s"] = [float(costs.get(m, np.nan)) for m in methods]
    steps = (runs["epochs"] * runs["iterations_per_epoch"]).groupby(runs["method"]).median()
    out["step_h"] = out["step_s"] * steps.reindex(methods).astype(float).to_numpy() / 3600
    for metric in metrics:
        table = compare_methods({m: averaged[m][metric].to_dict() for m in methods}, ref, metric, n_boot=n_boot,
                                higher_is_better=not metric.startswith("hd95"))
        out["n"] = table.loc[methods, "n"]
        for col, src in (("mean", "mean"), ("std", "std"), ("median", "median"), ("diff", "diff"),
                         ("ci_low", "ci_low"), ("ci_high", "ci_high"), ("p", "p_value"), ("p_holm", "p_holm")):
            out[f"{metric}_{col}"] = table.loc[methods, src]
        out[f"{metric}_seed_std"] = [float(np.std(per_seed[m][metric])) for m in methods]
    out.attrs.update(reference=ref, metrics=metrics, experiment=experiment,
                     step_cost_file=cost_file.name if cost_file else None)
    return out


def reproduction(root: str | os.PathLike, rerun_root: str | os.PathLike) -> pd.DataFrame:
    """Each (experiment, method, seed) finished under both ``root`` and ``rerun_root`` (the same command run again,
    same layout): the lead metric's mean over the cases both scored in each, the largest per-case difference, how
    many cases score the same and how many predicted masks are byte-identical, and both runs' commits and training
    CPU hours. One row per re-run; empty when none matches."""
    import filecmp

    study, rerun = load_runs(root), load_runs(rerun_root)
    rows = []
    for _, r in rerun.iterrows():
        match = study[(study["experiment"] == r["experiment"]) & (study["method"] == r["method"])
                      & (study["seed"] == r["seed"])] if len(study) else study
        if match.empty:
            continue
        first, again = Path(match["dir"].iloc[0]), Path(r["dir"])
        metric = PROTOCOL_METRICS.get(r["protocol"], _DEFAULT_METRICS)[0]
        a, b = (pd.read_csv(d / "per_case.csv", dtype={"case": str}).set_index("case")[metric] for d in (first, again))
        cases = a.index.intersection(b.index)
        a, b = a[cases], b[cases]
        same = (a == b) | (a.isna() & b.isna())
        masks = sorted(p.name for p in (first / "predictions").glob("*") if p.suffix != ".json")
        rows.append({"experiment": r["experiment"], "method": r["method"], "seed": r["seed"], "metric": metric,
                     "n": len(cases), "study": a.mean(), "rerun": b.mean(), "max_case_diff": (a - b).abs().max(),
                     "same_cases": int(same.sum()), "masks": len(masks),
                     "identical_masks": len(filecmp.cmpfiles(first / "predictions", again / "predictions", masks,
                                                             shallow=False)[0]),
                     "study_commit": match["commit"].iloc[0], "rerun_commit": r["commit"],
                     "study_cpu_h": match["train_cpu_h"].iloc[0], "rerun_cpu_h": r["train_cpu_h"]})
    return pd.DataFrame(rows)


def _p(p: float) -> str:
    return "" if np.isnan(p) else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


def study_table(numbers: pd.DataFrame, digits: int = 3, alpha: float = 0.05) -> pd.DataFrame:
    """:func:`study_numbers` as strings, one column per quantity (markdown-ready). The training time is the quiet
    step cost x the run's steps when every method has a step cost (one quiet benchmark run), else the runs' median
    CPU time. The runs' own wall-clock and CPU hours stay in ``table.csv``: they count a paused study's pauses, the
    other work of a shared machine, and the speed of whichever machine a sitting ran on. With too few cases for the
    paired test to reach ``alpha`` (:func:`_min_wilcoxon_p`) the table gives the mean difference alone."""
    ref = numbers.attrs["reference"]
    quiet = "step_h" in numbers and bool(numbers["step_h"].notna().all())
    rows = {}
    for m, r in numbers.iterrows():
        row = {"method": _label(m), "seeds": int(r["seeds"]), "n": int(r["n"])}
        for metric in numbers.attrs["metrics"]:
            mean = f"{r[f'{metric}_mean']:.{digits}f}"  # one case has no spread to show
            row[f"{metric} mean ± std"] = mean if r["n"] < 2 else f"{mean} ± {r[f'{metric}_std']:.{digits}f}"
            row[f"{metric} median"] = f"{r[f'{metric}_median']:.{digits}f}"
            row[f"{metric} seed spread"] = (f"± {r[f'{metric}_seed_std']:.{digits}f}" if r["seeds"] > 1 else "—")
            testable = _min_wilcoxon_p(int(r["n"])) < alpha
            row[f"{metric} Δ vs {_label(ref)} [95% CI]"] = "ref" if m == ref else (
                f"{r[f'{metric}_diff']:+.{digits}f}" + (f" [{r[f'{metric}_ci_low']:+.{digits}f}, "
                                                         f"{r[f'{metric}_ci_high']:+.{digits}f}]" if testable else ""))
            row[f"{metric} p (Holm)"] = "ref" if m == ref else (
                f"{_p(r[f'{metric}_p'])} ({_p(r[f'{metric}_p_holm'])})" if testable else "—")
        if quiet:
            row["train h (quiet)"] = f"{r['step_h']:.2f}"
        else:
            row["train h (CPU)"] = f"{r['train_cpu_h']:.2f}"
        if numbers["step_s"].notna().any():
            row["s/step (quiet)"] = "" if np.isnan(r["step_s"]) else f"{r['step_s']:.2f}"
        rows[m] = row
    return pd.DataFrame.from_dict(rows, orient="index").set_index("method")


def _statement(numbers: pd.DataFrame, alpha: float = 0.05) -> str:
    """What the table shows, in words generated from its numbers (the lead metric)."""
    metric, ref = numbers.attrs["metrics"][0], numbers.attrs["reference"]
    lower_better = metric.startswith("hd95")
    others = numbers.drop(index=ref)
    n = int(numbers.loc[ref, "n"])
    if _min_wilcoxon_p(n) >= alpha:
        lines = [f"- {n} test case{'s' if n != 1 else ''}: too few for a paired test (an exact two-sided Wilcoxon "
                 f"test cannot reach p < {alpha} with fewer than {_min_testable_n(alpha)} cases). The numbers show "
                 "that the path runs end to end; they do not rank the methods."]
        others = others.iloc[:0]
    else:
        best = numbers[f"{metric}_mean"].idxmin() if lower_better else numbers[f"{metric}_mean"].idxmax()
        lines = [f"- Best mean {metric}: {_label(best)} ({numbers.loc[best, f'{metric}_mean']:.3f})."]
    if len(others):
        sig = others[others[f"{metric}_p_holm"] < alpha]
        better = [m for m in sig.index if (sig.loc[m, f"{metric}_diff"] > 0) != lower_better]
        worse = [m for m in sig.index if m not in better]
        same = [m for m in others.index if m not in sig.index]
        name = _label(ref)
        for what, group in ((f"significantly better than {name}", better),
                            (f"significantly worse than {name}", worse),
                            (f"not significantly different from {name}", same)):
            if group:
                lines.append(f"- {what[0].upper()}{what[1:]} (paired Wilcoxon, Holm-corrected p < {alpha}): "
                             + ", ".join(_label(m) for m in group) + ".")
    spread = numbers[f"{metric}_seed_std"].where(numbers["seeds"] > 1)  # NaN: one seed, no spread measured
    within = [m for m in others.index
              if abs(numbers.loc[m, f"{metric}_diff"]) < np.nanmax([spread[m], spread[ref], -np.inf])]
    if within:
        lines.append(f"- Mean difference from {_label(ref)} smaller than the spread of the mean between training "
                     "seeds (one more seed could reverse it, whatever the p-value): "
                     + ", ".join(_label(m) for m in within) + ".")
    multi = numbers[numbers["seeds"] > 1]
    if len(multi):
        lines.append(f"- Spread of the mean {metric} between training seeds: "
                     + ", ".join(f"{_label(m)} ± {r[f'{metric}_seed_std']:.3f} ({int(r['seeds'])} seeds)"
                                 for m, r in multi.iterrows()) + ".")
    return "\n".join(lines)


def load_curves(results_dir: str | os.PathLike, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Every ``<method>/seed<k>/training_curve.csv`` below ``results_dir`` as one table with ``method`` and
    ``seed`` columns (empty when there are none)."""
    results_dir = Path(results_dir)
    frames = []
    for csv in sorted(results_dir.glob("*/seed*/training_curve.csv")):
        method, seed = csv.parent.parent.name, csv.parent.name[4:]
        if (methods is not None and method not in methods) or not seed.isdigit():
            continue
        frames.append(pd.read_csv(csv).assign(method=method, seed=int(seed)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["method", "seed", "epoch"])


def plot_training_curves(results_dir: str | os.PathLike, methods: Sequence[str] | None = None,
                         out_stem: str | os.PathLike | None = None, dpi: int = 120) -> Figure:
    """One panel per method: training loss (solid) and validation loss (dashed) per training seed, and nnU-Net's
    pseudo Dice on the validation batches (dotted, right axis). With ``out_stem`` also writes ``.png`` and ``.pdf``.
    """
    from matplotlib.figure import Figure

    from xlstm_unet.figures import save_figure

    curves = load_curves(results_dir, methods)
    names = [m for m in (methods or sorted(curves["method"].unique())) if m in set(curves["method"])]
    cols = min(3, max(len(names), 1))
    rows = max(1, -(-len(names) // cols))
    fig = Figure(figsize=(4.2 * cols, 2.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, method in zip(axes, names):
        dice_ax = ax.twinx()
        for i, (seed, c) in enumerate(curves[curves["method"] == method].groupby("seed")):
            color = f"C{i}"
            ax.plot(c["epoch"], c["train_loss"], color=color, label=f"seed {seed} train")
            ax.plot(c["epoch"], c["val_loss"], color=color, ls="--", label=f"seed {seed} val")
            dice_ax.plot(c["epoch"], c["pseudo_dice"], color=color, ls=":")
        ax.set_title(_label(method), fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        dice_ax.set_ylabel("pseudo Dice")
        dice_ax.set_ylim(0, 1)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if not names:
        axes[0].set_visible(True)
        axes[0].text(0.5, 0.5, "no training curves", ha="center", va="center")
        axes[0].set_axis_off()
    if out_stem is not None:
        save_figure(fig, Path(out_stem), dpi)
    return fig


def plot_score_vs_time(numbers: pd.DataFrame, out_stem: str | os.PathLike | None = None, dpi: int = 120) -> Figure:
    """Mean score (error bar: spread between seeds) against training time per run: the quiet step cost x the
    run's steps (``step_h``) when every method has one, else the training CPU time (median over seeds).

    Not wall-clock time: a long study is paused and resumed, and the pauses count in the wall clock only."""
    from matplotlib.figure import Figure

    from xlstm_unet.figures import save_figure

    metric = numbers.attrs["metrics"][0]
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.subplots()
    quiet = bool(numbers["step_h"].notna().all()) if "step_h" in numbers else False
    x = "step_h" if quiet else "train_cpu_h"
    for i, (m, r) in enumerate(numbers.iterrows()):
        ax.errorbar(r[x], r[f"{metric}_mean"], yerr=r[f"{metric}_seed_std"] if r["seeds"] > 1 else None,
                    fmt="o", color=f"C{i % 10}", capsize=3, label=f"{_label(m)} ({int(r['seeds'])} seed"
                    + ("s)" if r["seeds"] > 1 else ")"))
    ax.set_xlabel(f"training time per run (h): quiet s/step x steps ({numbers.attrs.get('step_cost_file')})"
                  if quiet else "training CPU time per run (h, all threads, median over seeds)")
    ax.set_ylabel(f"mean {metric} (test cases)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    if out_stem is not None:
        save_figure(fig, Path(out_stem), dpi)
    return fig


def _raw_dataset(runs: pd.DataFrame, raw_root: Path | None, tmp: Path) -> Path | None:
    """The nnU-Net raw folder the experiment was scored against: under ``raw_root``, or converted again (the
    converters are deterministic) into ``tmp`` from the dataset's default source."""
    name = runs["dataset"].iloc[0]
    if raw_root is not None and (raw_root / name / "dataset.json").is_file():
        return raw_root / name
    from xlstm_unet.datasets import DATASETS, convert

    for key, info in DATASETS.items():
        if f"Dataset{info.default_id:03d}_{info.folder_name}" == name and info.needs_source:
            try:
                return convert(key, out_root=tmp, seed=int(runs["split_seed"].iloc[0]), progress=False)
            except (FileNotFoundError, ValueError) as err:
                log.warning("%s: no raw data for the Fig. 2 panel (%s)", name, err)
                return None
    log.warning("%s: no raw data for the Fig. 2 panel (pass raw_root)", name)
    return None


def _fig2(exp_dir: Path, numbers: pd.DataFrame, runs: pd.DataFrame, raw: Path) -> Path:
    from xlstm_unet.figures import fig2_panel
    from xlstm_unet.viewer import ViewerData
    from xlstm_unet.viewer_data import prediction_dir

    ref, metric = numbers.attrs["reference"], numbers.attrs["metrics"][0]
    scores, _ = seed_averaged(runs[runs["method"] == ref]["dir"].tolist())
    order = scores[metric].dropna().sort_values(ascending=metric.startswith("hd95"))
    picks = list(dict.fromkeys([order.index[0], order.index[len(order) // 2], order.index[-1]]))
    results_dir = Path(runs["dir"].iloc[0]).parents[1]
    methods = list(numbers.index)
    data = ViewerData.from_results(results_dir, raw, methods=methods, cases=picks)
    # each panel is one run's prediction (the lowest seed's): write that run's score of the table's metric under it
    shown = {m: pd.read_csv(prediction_dir(results_dir / m).parent / "per_case.csv") for m in methods}
    shown = {m: dict(zip(f["case"].astype(str), f[metric])) for m, f in shown.items()}
    # PNG only: the PDF embeds every image panel at full size, and the report is committed each time it changes
    fig2_panel(data, exp_dir / "fig2_panel", cases=picks, methods=methods, pdf=False,
               labels={m: _label(m) for m in methods}, scores=shown, score_name=_METRIC_LABELS.get(metric, metric))
    return exp_dir / "fig2_panel.png"


def _write(path: Path, text: str) -> None:
    from xlstm_unet._io import atomic_write

    with atomic_write(path) as tmp:
        tmp.write_text(text)


def write_report(root: str | os.PathLike, *, reference: str = "xlstm_enc", figures: bool = True,
                 raw_root: str | os.PathLike | None = None, n_boot: int = 10000,
                 rerun_root: str | os.PathLike | None = None) -> Path:
    """Write every experiment's tables and figures and ``<root>/README.md`` (see the module docstring); with re-runs
    under ``rerun_root`` (default ``<root>_rerun`` beside ``root``, when it exists) also ``reproduction.csv``
    (:func:`reproduction`)."""
    from xlstm_unet.figures import table_to_markdown

    root = Path(root)
    runs = load_runs(root)
    if runs.empty:
        raise ValueError(f"{root}: no finished runs (<experiment>/<Dataset>/<method>/seed<k>/run.json)")
    sections = []
    with tempfile.TemporaryDirectory(prefix="xlstm_unet_tables_") as tmp:
        # in the order the study ran them (the config's order): its first experiment is the main comparison
        first_done = pd.to_datetime(runs["finished"], utc=True, errors="coerce").groupby(runs["experiment"]).min()
        for experiment in first_done.sort_values(kind="stable", na_position="last").index:
            exp_runs = runs[runs["experiment"] == experiment]
            exp_dir = root / experiment
            numbers = study_numbers(root, experiment, reference, n_boot=n_boot)
            table = study_table(numbers)
            _write(exp_dir / "table.md", table_to_markdown(table))
            numbers.to_csv(exp_dir / "table.csv")
            first = exp_runs.iloc[0]
            commits = ", ".join(sorted(set(exp_runs["commit"].dropna())))
            lines = [f"## {experiment} ({first['dataset']})", "",
                     f"Configuration `{first['configuration']}`, patch {first['patch_size']}, batch "
                     f"{first['batch_size']}, {first['epochs']} epochs x {first['iterations_per_epoch']} iterations "
                     f"per run, split seed {first['split_seed']}, code {commits}.",
                     "", table_to_markdown(table), _statement(numbers), ""]
            n_cases = int(numbers["n"].max())
            if n_cases <= _SMALL:
                metric = numbers.attrs["metrics"][0]
                per_case = pd.DataFrame({_label(m): seed_averaged(exp_runs[exp_runs["method"] == m]["dir"]
                                                                   .tolist())[0][metric] for m in numbers.index})
                per_case.index.name = "case"
                per_case.to_csv(exp_dir / "per_case.csv")
                per_case_md = table_to_markdown(per_case.map(lambda v: f"{v:.3f}"))
                _write(exp_dir / "per_case.md", per_case_md)
                lines += [f"Per case ({metric}, averaged over seeds):", "", per_case_md]
            if figures:
                results_dir = Path(exp_runs["dir"].iloc[0]).parents[1]
                plot_training_curves(results_dir, list(numbers.index), exp_dir / "training_curves")
                plot_score_vs_time(numbers, exp_dir / "score_vs_time")
                lines += [f"![training curves]({experiment}/training_curves.png)",
                          f"![score vs training time]({experiment}/score_vs_time.png)"]
                raw = _raw_dataset(exp_runs, Path(raw_root) if raw_root else None, Path(tmp) / experiment)
                if raw is not None:
                    _fig2(exp_dir, numbers, exp_runs, raw)
                    lines.append(f"![Fig. 2 panel: best, median and worst case of {_label(numbers.attrs['reference'])}]"
                                 f"({experiment}/fig2_panel.png)")
            sections.append("\n".join(lines))
    rerun_root = Path(rerun_root) if rerun_root is not None else root.parent / f"{root.name}_rerun"
    again = reproduction(root, rerun_root) if rerun_root.is_dir() else pd.DataFrame()
    if len(again):
        again.round(4).to_csv(root / "reproduction.csv", index=False)
        shown = again.round(4)
        for col in ("study_commit", "rerun_commit"):
            shown[col] = shown[col].fillna("").astype(str).str[:7]
        same = (again["study_commit"] == again["rerun_commit"]).all()
        sections.append("\n".join([
            "## Reproduction", "",
            "The same command run again, " + ("at the commit of the run it repeats" if same else
                                              "each at the commit in its `rerun_commit` column")
            + f", results in `{rerun_root.name}/`: each re-run's scores beside the study's (`reproduction.csv`).", "",
            table_to_markdown(shown.set_index("experiment"))]))
    readme = ["# Results (generated)", "",
              f"Generated by `xlstm-unet tables {root}` from the results files below this folder; see "
              "`docs/results.md` for what they show and what they do not.", "", "\n\n".join(sections)]
    _write(root / "README.md", "\n".join(readme) + "\n")
    return root / "README.md"


def _cmd_tables(args: argparse.Namespace) -> int:
    out = write_report(args.results_root, reference=args.reference, figures=not args.no_figures,
                       raw_root=args.raw_root, n_boot=args.n_boot, rerun_root=args.rerun_root)
    print(out)
    return 0


def register(subparsers: Any) -> None:
    """Add ``tables`` to the ``xlstm-unet`` command."""
    p = subparsers.add_parser(
        "tables", help="regenerate a study's tables and figures from its results (e.g. results/cpu_real)",
        description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("results_root", help="folder with <experiment>/<Dataset>/<method>/seed<k>/ results")
    p.add_argument("--reference", default="xlstm_enc", help="method the others are compared with")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.add_argument("--raw-root", default=None, help="an nnUNet_raw folder with the datasets (default: convert "
                                                    "them again from $XLSTM_UNET_SHARED_DATA for the Fig. 2 panels)")
    p.add_argument("--n-boot", type=int, default=10000, help="bootstrap resamples (default 10000)")
    p.add_argument("--rerun-root", default=None, help="re-runs of some (method, seed) of the study, same layout, "
                                                      "compared with the study's own (default: <root>_rerun)")
    p.set_defaults(func=_cmd_tables)
