"""Efficiency tables and plots from the benchmark JSON: ViL scaling and the per-network training step.

Benchmark JSON read here (contracts of ``benchmarks/vil_scaling.py --json`` and ``benchmarks/train_step.py
--json``)::

    vil_scaling: {"device", "dim", "batch", "rows": [{"backend", "S", "fwd_bwd_s", "peak_mb"}, ...], ...}
    train_step:  {"device", "rows": [{"model", "dim", "size", "batch", "params", "step_s", "peak_mb"}, ...]}
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

__all__ = ["load_benchmark", "vil_scaling_table", "train_step_table", "plot_vil_scaling", "plot_train_step"]


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
    return df[["model", "dim", "size", "batch", "params (M)", "step_s", "peak_mb"]]


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
