"""Efficiency tables and plots from the benchmark JSON: ViL scaling and the per-network training step.

Benchmark JSON read here (contracts of ``benchmarks/vil_scaling.py --json`` and ``benchmarks/train_step.py
--json``)::

    vil_scaling: {"device", "dim", "batch", "rows": [{"backend", "S", "fwd_bwd_s", "peak_mb"}, ...], ...}
    train_step:  {"device", "rows": [{"model", "dim", "size", "batch", "params", "step_s", "peak_mb"}, ...]}
                 (optional per row: "flops", "infer_s", "not_run", "error")

Accuracy against cost: :func:`accuracy_vs_cost` joins a study's numbers (:func:`xlstm_unet.study.study_numbers`)
with the train_step rows of the same methods (rows named after registry methods) at the study's dimension.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from xlstm_unet._io import save_figure

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["load_benchmark", "vil_scaling_table", "train_step_table", "plot_vil_scaling", "plot_train_step",
           "method_costs", "accuracy_vs_cost", "plot_accuracy_vs_cost", "accuracy_cost_report", "COSTS"]


_VIL_ROW = {"backend": str, "S": int, "fwd_bwd_s": float, "peak_mb": float}
_STEP_ROW = {"model": str, "dim": int, "size": list, "batch": int, "params": int, "step_s": float, "peak_mb": float}


def _check_rows(obj: Any, schema: dict[str, type], where: str) -> list[dict[str, Any]]:
    if not isinstance(obj, dict) or not isinstance(obj.get("rows"), list):
        raise ValueError(f"{where}: expected a JSON object with a 'rows' list, got {type(obj).__name__}")
    for i, row in enumerate(obj["rows"]):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: rows[{i}] must be an object, got {type(row).__name__}")
        missing = [k for k in schema if k not in row]
        if missing:
            raise ValueError(f"{where}: rows[{i}] lacks {missing}; expected keys {list(schema)}")
        for key, typ in schema.items():
            val = row[key]
            ok = isinstance(val, (int, float)) and not isinstance(val, bool) if typ is float else isinstance(val, typ)
            if typ is int and isinstance(val, bool):
                ok = False
            if not ok and val is not None:
                raise ValueError(f"{where}: rows[{i}][{key!r}] should be {typ.__name__}, got {val!r}")
    return obj["rows"]


def load_benchmark(path_or_obj: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Read a benchmark JSON (file or parsed object) and check its schema; kind is detected from the rows.

    Returns:
        The object, with ``"kind"`` added: ``"vil_scaling"`` or ``"train_step"``.
    Raises:
        ValueError: naming the file and the first schema problem. ``None`` values are allowed (a row that did
        not finish, e.g. out of memory) and are drawn as gaps.
    """
    where = str(path_or_obj) if not isinstance(path_or_obj, Mapping) else "benchmark object"
    if isinstance(path_or_obj, Mapping):
        obj = dict(path_or_obj)
    else:
        try:
            obj = json.loads(Path(path_or_obj).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err})") from err
    rows = obj.get("rows") if isinstance(obj, dict) else None
    first = rows[0] if isinstance(rows, list) and rows and isinstance(rows[0], dict) else {}
    if "backend" in first:
        _check_rows(obj, _VIL_ROW, where)
        obj["kind"] = "vil_scaling"
    elif "model" in first:
        _check_rows(obj, _STEP_ROW, where)
        obj["kind"] = "train_step"
    else:
        raise ValueError(
            f"{where}: rows must be vil_scaling rows {list(_VIL_ROW)} or train_step rows {list(_STEP_ROW)}"
        )
    return obj


def vil_scaling_table(bench: str | os.PathLike | Mapping[str, Any]) -> pd.DataFrame:
    """ViL scaling as a table: rows = S, columns = (quantity, backend) with quantity ``fwd_bwd_s`` / ``peak_mb``."""
    obj = load_benchmark(bench)
    if obj["kind"] != "vil_scaling":
        raise ValueError(f"expected vil_scaling rows, got {obj['kind']}")
    df = pd.DataFrame(obj["rows"])
    return df.pivot_table(index="S", columns="backend", values=["fwd_bwd_s", "peak_mb"], aggfunc="first")


def train_step_table(bench: str | os.PathLike | Mapping[str, Any]) -> pd.DataFrame:
    """Per-model train step: columns ``model, dim, size, batch, params (M), step_s, peak_mb`` (NaN where a row
    did not finish)."""
    obj = load_benchmark(bench)
    if obj["kind"] != "train_step":
        raise ValueError(f"expected train_step rows, got {obj['kind']}")
    df = pd.DataFrame(obj["rows"])
    df["size"] = df["size"].map(lambda s: "×".join(str(v) for v in s))
    for col in ("params", "step_s", "peak_mb"):  # None (a row that did not finish) -> NaN
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["params (M)"] = df.pop("params") / 1e6
    extra = []
    if "flops" in df:
        df["GFLOP"] = pd.to_numeric(df.pop("flops"), errors="coerce") / 1e9
        extra.append("GFLOP")
    if "infer_s" in df:
        df["infer_s"] = pd.to_numeric(df["infer_s"], errors="coerce")
        extra.append("infer_s")
    if "not_run" in df:
        reason = df["error"] if "error" in df else pd.Series(None, index=df.index)
        df["not_run"] = [(str(e) if isinstance(e, str) else n) if isinstance(n, str) else ""
                         for n, e in zip(df["not_run"], reason)]
        extra.append("not_run")
    return df[["model", "dim", "size", "batch", "params (M)", "step_s", "peak_mb", *extra]]


#: The cost axes of :func:`plot_accuracy_vs_cost`: column -> axis label.
COSTS: dict[str, str] = {"params (M)": "parameters (M)", "GFLOP": "forward GFLOP / sample",
                         "step_s": "train step (s)", "train_h": "training time per run (h, measured)"}


def method_costs(bench: str | os.PathLike | Mapping[str, Any], dim: int | None = None) -> pd.DataFrame:
    """The rows of a train_step benchmark that are registry methods (``--methods``), indexed by method; with
    ``dim`` only that dimension's rows. Rows that did not run keep their place with NaN costs and ``not_run``."""
    from xlstm_unet.nnunet.methods import METHODS

    df = train_step_table(bench)
    df = df[df["model"].isin(list(METHODS))]
    if dim is not None:
        df = df[df["dim"] == dim]
    return df.drop_duplicates("model").set_index("model").rename_axis("method")


def accuracy_vs_cost(numbers: pd.DataFrame, bench: str | os.PathLike | Mapping[str, Any], dim: int,
                     ) -> pd.DataFrame:
    """A study's score per method beside its cost: ``numbers`` from :func:`xlstm_unet.study.study_numbers` (one row
    per method; its first metric is the score), the costs from a train_step benchmark at ``dim``. One row per
    method of either: ``score`` and ``score_seed_std`` (NaN for a method without results), ``seeds``, ``train_h``,
    and the cost columns (NaN for a method the benchmark did not run)."""
    metric = numbers.attrs["metrics"][0]
    acc = pd.DataFrame({"score": numbers[f"{metric}_mean"], "score_seed_std": numbers[f"{metric}_seed_std"],
                        "seeds": numbers["seeds"], "train_h": numbers["train_h"]})
    costs = method_costs(bench, dim).drop(columns=["dim"])
    out = acc.join(costs, how="outer")
    order = [m for m in numbers.index] + [m for m in costs.index if m not in numbers.index]
    out = out.loc[order]
    out.attrs.update(metric=metric, experiment=numbers.attrs.get("experiment"), dim=dim)
    return out


def plot_accuracy_vs_cost(table: pd.DataFrame, out_stem: str | os.PathLike | None = None, dpi: int = 120,
                          costs: Mapping[str, str] | None = None) -> Figure:
    """One panel per cost (:data:`COSTS` that the table has): the score of each method with results (error bar:
    spread between seeds) against its cost; log scale for the model costs. Methods without results are left out
    (their costs are in the table)."""
    from matplotlib.figure import Figure

    from xlstm_unet.study import _label

    costs = {c: lab for c, lab in (costs or COSTS).items() if c in table and table[c].notna().any()}
    if not costs:
        raise ValueError("accuracy_vs_cost table has no cost column with numbers")
    fig = Figure(figsize=(3.2 * len(costs) + 1.6, 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(costs), sharey=True))
    done = table[table["score"].notna()]
    for ax, (col, label) in zip(axes, costs.items()):
        for i, (m, r) in enumerate(done.iterrows()):
            if np.isnan(r[col]):
                continue
            ax.errorbar(r[col], r["score"], yerr=r["score_seed_std"] if r["seeds"] > 1 else None, fmt="o",
                        color=f"C{i % 10}", capsize=3, label=_label(m))
        if col != "train_h":
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"mean {table.attrs.get('metric', 'score')} (test cases)")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=7)
    fig.suptitle(f"{table.attrs.get('experiment') or ''} accuracy against cost ({table.attrs.get('dim')}D)",
                 fontsize=10)
    if out_stem is not None:
        save_figure(fig, Path(out_stem), dpi)
    return fig


def plot_vil_scaling(bench: str | os.PathLike | Mapping[str, Any], out_stem: str | os.PathLike | None = None,
                     dpi: int = 150) -> Figure:
    """Time and peak memory vs sequence length S (log-log), one line per backend (chunkwise vs parallel).

    Returns the figure (two axes: time, memory); with ``out_stem`` also writes ``<stem>.png`` and ``.pdf``.
    """
    from matplotlib.figure import Figure

    obj = load_benchmark(bench)
    table = vil_scaling_table(obj)
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    ax_t, ax_m = fig.subplots(1, 2)
    for qty, ax, ylabel in (("fwd_bwd_s", ax_t, "forward + backward (s)"), ("peak_mb", ax_m, "peak memory (MB)")):
        for backend in table[qty].columns:
            series = table[qty][backend].dropna()
            ax.plot(series.index, series.to_numpy(dtype=float), marker="o", label=backend)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length S")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"ViL block scaling ({obj.get('device', '?')}, C={obj.get('dim', '?')}, batch {obj.get('batch', '?')})",
        fontsize=10,
    )
    if out_stem is not None:
        save_figure(fig, Path(out_stem), dpi)
    return fig


def plot_train_step(bench: str | os.PathLike | Mapping[str, Any], out_stem: str | os.PathLike | None = None,
                    dpi: int = 150) -> Figure:
    """Bar charts of train step time, peak memory and parameters per model, grouped by 2D / 3D configuration.

    Returns the figure (three axes); with ``out_stem`` also writes ``<stem>.png`` and ``.pdf``.
    """
    from matplotlib.figure import Figure

    obj = load_benchmark(bench)
    df = train_step_table(obj)
    df["config"] = df["dim"].astype(str) + "D " + df["size"]
    configs = list(dict.fromkeys(df["config"]))
    models = list(dict.fromkeys(df["model"]))
    fig = Figure(figsize=(10, 3.2), layout="constrained")
    axes = fig.subplots(1, 3)
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(configs))
    for ax, qty, ylabel in zip(axes, ("step_s", "peak_mb", "params (M)"),
                               ("train step (s)", "peak memory (MB)", "parameters (M)")):
        for i, model in enumerate(models):
            sub = df[df["model"] == model].set_index("config")
            vals = [float(sub.loc[c, qty]) if c in sub.index else np.nan for c in configs]
            ax.bar(x + (i - (len(models) - 1) / 2) * width, vals, width, label=model)
        ax.set_xticks(x, configs, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"one training step, batch {df['batch'].iloc[0] if len(df) else '?'} ({obj.get('device', '?')})",
                 fontsize=10)
    if out_stem is not None:
        save_figure(fig, Path(out_stem), dpi)
    return fig


def accuracy_cost_report(results_root: str | os.PathLike, step_json: str | os.PathLike,
                         cost_jsons: Mapping[str, str | os.PathLike] | None = None,
                         out_dir: str | os.PathLike | None = None, n_boot: int = 1000) -> dict[str, pd.DataFrame]:
    """:func:`accuracy_vs_cost` for every experiment with finished runs under ``results_root`` (the layout of
    ``xlstm-unet run-all``: ``<experiment>/<DatasetXXX>/<method>/seed<k>/run.json``).

    The costs of an experiment come from ``cost_jsons[experiment]`` (a train_step JSON of its own plans, e.g.
    ``train_step.py --plans ... --configuration ...``) or else from ``step_json``'s rows at its dimension. With
    ``out_dir``: ``accuracy_vs_cost_<experiment>.{md,csv,png,pdf}``. Returns ``{experiment: table}``, empty when
    nothing has finished (the cost tables alone then say what each method costs).
    """
    from xlstm_unet.study import load_runs, study_numbers
    from xlstm_unet.tables import save_table

    root = Path(results_root)
    runs = load_runs(root) if root.is_dir() else pd.DataFrame()
    out: dict[str, pd.DataFrame] = {}
    for experiment in dict.fromkeys(runs.get("experiment", [])):
        configuration = str(runs[runs["experiment"] == experiment]["configuration"].iloc[0])
        dim = 3 if configuration.startswith("3d") else 2
        bench = Path((cost_jsons or {}).get(experiment, step_json))
        table = accuracy_vs_cost(study_numbers(root, experiment, n_boot=n_boot), bench, dim)
        table.attrs["costs_from"] = str(bench)
        out[experiment] = table
        if out_dir is not None:
            stem = Path(out_dir) / f"accuracy_vs_cost_{experiment}"
            save_table(table.round(4), stem)
            plot_accuracy_vs_cost(table, stem)
    return out
