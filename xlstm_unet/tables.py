"""Results tables in the paper's format: measured mean ± std, the paper's number, a paired p-value.

Results layout read by :func:`load_per_case` / :func:`results_table` (written by :mod:`xlstm_unet.experiment`)::

    <results_root>/<DatasetName>/<method>/per_case.csv   column "case", then metric columns (dice_mean, nsd_mean, ...)

Number conventions: mean ± std over test cases, ``std`` with ``ddof=0`` (``numpy.std``, as in U-Mamba's evaluation
scripts), NaN per-case values (undefined metrics) left out and counted in ``n`` only when finite. A (dataset,
method) pair without a ``per_case.csv`` is shown as ``"not run"``, never as a number.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xlstm_unet import paper_results
from xlstm_unet._io import atomic_write

__all__ = [
    "NOT_RUN",
    "NOT_IN_PAPER",
    "load_per_case",
    "results_numbers",
    "results_table",
    "table_to_markdown",
    "save_table",
    "PAPER_TABLES",
    "paper_table",
]

#: Cell text for a (dataset, method) pair without results.
NOT_RUN = "not run"
#: Cell text where the paper reports no number.
NOT_IN_PAPER = "—"


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def load_per_case(results_roots: str | os.PathLike | Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Read every ``<root>/<DatasetName>/<method>/per_case.csv`` into one long table.

    Args:
        results_roots: one results root or several (later roots do not override earlier ones: a duplicate
            (dataset, method) raises).
    Returns:
        DataFrame with columns ``dataset, method, case, metric, value`` (value float; NaN kept).
    Raises:
        ValueError: a per_case.csv without a ``case`` column, or the same (dataset, method) in two roots.
    """
    roots = [results_roots] if isinstance(results_roots, (str, os.PathLike)) else list(results_roots)
    frames: list[pd.DataFrame] = []
    seen: dict[tuple[str, str], Path] = {}
    for root in map(Path, roots):
        for csv in sorted(root.glob("*/*/per_case.csv")):
            method, dataset = csv.parent.name, csv.parent.parent.name
            if (dataset, method) in seen:
                raise ValueError(f"{csv}: ({dataset}, {method}) already read from {seen[(dataset, method)]}")
            seen[(dataset, method)] = csv
            df = pd.read_csv(csv)
            if "case" not in df.columns:
                raise ValueError(f"{csv}: expected a 'case' column, got columns {list(df.columns)}")
            long = df.melt(id_vars="case", var_name="metric", value_name="value")
            long["value"] = pd.to_numeric(long["value"], errors="coerce")
            long.insert(0, "method", method)
            long.insert(0, "dataset", dataset)
            frames.append(long)
    if not frames:
        return pd.DataFrame(columns=["dataset", "method", "case", "metric", "value"])
    out = pd.concat(frames, ignore_index=True)
    out["case"] = out["case"].astype(str)
    return out


def _as_records(source: Any) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        required = {"dataset", "method", "case", "metric", "value"}
        if not required <= set(source.columns):
            raise ValueError(f"records need columns {sorted(required)}, got {list(source.columns)}")
        return source
    return load_per_case(source)


def _paired_p(a: np.ndarray, b: np.ndarray) -> float:
    from xlstm_unet.metrics import paired_comparison

    return float(paired_comparison(a, b, n_boot=1000, seed=0)["p_value"])


def results_numbers(
    source: Any,
    datasets: Sequence[str] | Mapping[str, str | None],
    methods: Sequence[str],
    metrics: Sequence[str],
    paper: bool = True,
    reference: str | None = "xlstm_enc",
) -> pd.DataFrame:
    """The numbers behind :func:`results_table`, one row per (dataset, method, metric).

    Args:
        source: a results root, a list of them, or a long records DataFrame (``dataset, method, case, metric,
            value``, as from :func:`load_per_case`).
        datasets: dataset folder names (``Dataset901_Phantom2D``), or a mapping from folder name to the paper's
            dataset key (see :data:`xlstm_unet.paper_results.PAPER_DATASETS`; ``None`` = not in the paper). With a
            plain sequence, the key is guessed by :func:`xlstm_unet.paper_results.match_dataset`.
        methods: method names (rows), in order.
        metrics: per_case.csv column names (``dice_mean``, ``nsd_mean``, ``f1``, ``dice_WT``, ...).
        paper: look up the paper's reported value for each cell.
        reference: method to compare against with :func:`xlstm_unet.metrics.paired_comparison` (paired over the
            cases both methods have a finite value for); None for no comparison.
    Returns:
        DataFrame with columns ``dataset, method, metric, run, n, mean, std, median, paper_mean, paper_std,
        paper_note, p_value, n_paired``. ``run`` is False where the method has no results for the dataset (then
        every number is NaN); ``p_value`` is NaN for the reference row, for missing pairs and for fewer than 2
        paired cases.
    """
    records = _as_records(source)
    ds_map: dict[str, str | None]
    if isinstance(datasets, Mapping):
        ds_map = dict(datasets)
    else:
        ds_map = {d: paper_results.match_dataset(d) for d in datasets}
    rows = []
    for ds, paper_key in ds_map.items():
        ds_rec = records[records["dataset"] == ds]
        for metric in metrics:
            m_rec = ds_rec[ds_rec["metric"] == metric]
            per_method = {
                m: m_rec[m_rec["method"] == m].set_index("case")["value"].astype(float) for m in methods
            }
            ref_vals = None
            if reference is not None:
                ref_rec = m_rec[m_rec["method"] == reference]
                ref_vals = ref_rec.set_index("case")["value"].astype(float) if len(ref_rec) else None
            for method in methods:
                vals = per_method[method]
                run = bool(len(ds_rec[ds_rec["method"] == method]))
                finite = vals[np.isfinite(vals.to_numpy())]
                row: dict[str, Any] = {
                    "dataset": ds,
                    "method": method,
                    "metric": metric,
                    "run": run,
                    "n": int(finite.size),
                    "mean": float(np.mean(finite)) if finite.size else math.nan,
                    "std": float(np.std(finite)) if finite.size else math.nan,
                    "median": float(np.median(finite)) if finite.size else math.nan,
                    "paper_mean": math.nan,
                    "paper_std": math.nan,
                    "paper_note": "",
                    "p_value": math.nan,
                    "n_paired": 0,
                }
                if run and not len(vals):
                    warnings.warn(f"{ds}/{method}: per_case.csv has no column {metric!r}", stacklevel=2)
                if paper and paper_key is not None:
                    pv = paper_results.paper_value(paper_key, method, metric)
                    if pv is not None:
                        row.update(paper_mean=pv.mean_fraction, paper_std=pv.std_fraction, paper_note=pv.note)
                if ref_vals is not None and method != reference and finite.size:
                    joined = pd.concat([finite.rename("a"), ref_vals.rename("b")], axis=1, join="inner").dropna()
                    row["n_paired"] = int(len(joined))
                    if len(joined) >= 2:
                        row["p_value"] = _paired_p(joined["a"].to_numpy(), joined["b"].to_numpy())
                rows.append(row)
    return pd.DataFrame(rows)


def _fmt_ms(mean: float, std: float, digits: int) -> str:
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return NOT_IN_PAPER
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def results_table(
    source: Any,
    datasets: Sequence[str] | Mapping[str, str | None],
    methods: Sequence[str],
    metrics: Sequence[str],
    paper: bool = True,
    reference: str | None = "xlstm_enc",
    digits: int = 4,
    notes: dict[str, int] | None = None,
) -> pd.DataFrame:
    """A results table in the paper's format: rows = methods, columns = (dataset, metric, what).

    For each (dataset, metric) there are columns ``measured`` (``mean ± std`` over test cases), ``paper`` (the
    paper's reported ``mean ± std``, converted to the same scale; ``—`` where the paper has none; a trailing
    ``*`` marks a value the paper reports for "Ours" without naming the variant) and ``p vs <reference>`` (paired
    Wilcoxon p-value from :func:`xlstm_unet.metrics.paired_comparison`; ``ref`` in the reference row). A method
    without results shows ``not run`` in every cell, never a number.

    The paper's notes on a cell (e.g. which variant "Ours" is, whose numbers a row holds) mark it with ``*``,
    ``**``, ...; ``table.attrs["footnotes"]`` lists them (:func:`table_to_markdown` prints them below the table).

    Args: see :func:`results_numbers`; ``digits`` is the number of decimals; ``notes`` (note -> number of stars)
    is shared by tables that are joined side by side, so that their marks agree.
    Returns:
        DataFrame of strings with a 3-level column MultiIndex (dataset, metric, what) and the methods as index.
        Export with :func:`table_to_markdown` or :func:`save_table`.
    """
    nums = results_numbers(source, datasets, methods, metrics, paper=paper, reference=reference)
    p_col = f"p vs {reference}" if reference is not None else None
    notes = {} if notes is None else notes  # the paper's notes, in order of first use; marked *, **, ...
    cols: list[tuple[str, str, str]] = []
    data: dict[tuple[str, str, str], list[str]] = {}
    for ds in (datasets.keys() if isinstance(datasets, Mapping) else datasets):
        for metric in metrics:
            sub = nums[(nums["dataset"] == ds) & (nums["metric"] == metric)].set_index("method")
            whats = ["measured"] + (["paper"] if paper else []) + ([p_col] if p_col else [])
            for what in whats:
                key = (ds, metric, what)
                cols.append(key)
                cells = []
                for method in methods:
                    r = sub.loc[method]
                    if what == "paper":
                        if math.isnan(r["paper_mean"]):
                            cells.append(NOT_IN_PAPER)
                            continue
                        mark = ""
                        if r["paper_note"]:
                            notes.setdefault(r["paper_note"], len(notes) + 1)
                            mark = "*" * notes[r["paper_note"]]
                        cells.append(_fmt_ms(r["paper_mean"], r["paper_std"], digits) + mark)
                    elif not r["run"]:
                        cells.append(NOT_RUN)
                    elif what == "measured":
                        cells.append(NOT_IN_PAPER if r["n"] == 0 else _fmt_ms(r["mean"], r["std"], digits))
                    elif method == reference:
                        cells.append("ref")
                    else:
                        cells.append(_fmt_p(r["p_value"]))
                data[key] = cells
    table = pd.DataFrame(data, index=pd.Index(list(methods), name="method"), columns=pd.MultiIndex.from_tuples(cols))
    table.attrs["footnotes"] = [f"{'*' * k} {note}" for note, k in notes.items()]
    return table


def table_to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table; MultiIndex column levels are joined with `` · ``."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    if isinstance(table.columns, pd.MultiIndex):
        headers = [" · ".join(str(p) for p in c if str(p)) for c in table.columns]
    else:
        headers = [str(c) for c in table.columns]
    index_name = table.index.name or ""
    lines = [
        "| " + " | ".join([cell(index_name)] + [cell(h) for h in headers]) + " |",
        "|" + "---|" * (len(headers) + 1),
    ]
    for idx, row in table.iterrows():
        lines.append("| " + " | ".join([cell(idx)] + [cell(v) for v in row.tolist()]) + " |")
    footnotes = table.attrs.get("footnotes") or []
    if footnotes:
        lines += [""] + [f"{cell(f)}  " for f in footnotes]
    return "\n".join(lines) + "\n"


def save_table(table: pd.DataFrame, path_stem: str | os.PathLike) -> dict[str, Path]:
    """Write ``<stem>.md`` and ``<stem>.csv`` (each atomically: temp file, then rename); returns both paths."""
    stem = Path(path_stem)
    md, csv = stem.with_suffix(".md"), stem.with_suffix(".csv")
    flat = table.copy()
    if isinstance(flat.columns, pd.MultiIndex):
        flat.columns = [" · ".join(str(p) for p in c if str(p)) for c in flat.columns]
    _atomic_write_text(md, table_to_markdown(table))
    _atomic_write_text(csv, flat.to_csv())
    return {"md": md, "csv": csv}


_METHODS_2D = ("nnunet", "resenc_m", "segresnet", "unetr", "swinunetr", "umamba_bot", "umamba_enc", "xlstm_bot",
               "xlstm_enc")
# Table 2 (BraTS) and Table 3 (abdomen 3D): every row of the paper's two tables, and the other 3D methods we have
_METHODS_3D = ("nnunet", "segresnet", "uxnet", "mednext", "unetr", "swinunetr", "swinunetr_v2", "segmamba",
               "segformer3d", "umamba_bot", "xlstm_bot", "xlstm_enc")
_BRATS_METRICS = ("dice_wt", "hd95_wt", "dice_tc", "hd95_tc", "dice_et", "hd95_et", "dice_mean", "hd95_mean")

#: The paper's tables (and ours on the real sample sets): per block, the results sub-folder that the experiment
#: notebook writes (``results/<sub>/<DatasetXXX_Name>/<method>/...``), the paper's dataset key (None: not in the
#: paper) and the metrics; plus the default methods (rows).
PAPER_TABLES: dict[str, dict[str, Any]] = {
    "1": {"title": "Table 1: 2D datasets", "methods": _METHODS_2D, "blocks": (
        ("abdomen_mri_2d", "abdomen_mri_2d", ("dice_mean", "nsd_mean")),
        ("endoscopy", "endoscopy", ("dice_mean", "nsd_mean")),
        ("microscopy_cells", "microscopy_cells", ("f1",)))},
    "2": {"title": "Table 2: BraTS 2023 (3D)", "methods": _METHODS_3D, "blocks": (
        ("brats_3d", "brats2023", _BRATS_METRICS),)},
    "3": {"title": "Table 3: Abdomen MRI (3D)", "methods": _METHODS_3D, "blocks": (
        ("abdomen_mri_3d", "abdomen_mri_3d", ("dice_mean", "nsd_mean")),)},
    "real": {"title": "The real sample sets (not in the paper)",
             "methods": _METHODS_2D, "blocks": (
        ("kvasir_seg", None, ("dice_mean", "nsd_mean")),
        ("ctc_nuclei", None, ("f1",)),
        ("pgbm_brain_mri", None, ("dice_mean", "nsd_mean")))},
}


def paper_table(table: str, results_root: str | os.PathLike = "results", methods: Sequence[str] | None = None,
                reference: str | None = "xlstm_enc", digits: int = 4) -> pd.DataFrame:
    """One of :data:`PAPER_TABLES` from the experiment notebooks' results, in the paper's format.

    Each block reads ``<results_root>/<sub>/``; a block without results shows ``not run`` (never numbers), with the
    sub-folder's name as its dataset label. Blocks are joined side by side (see :func:`results_table`).
    """
    if table not in PAPER_TABLES:
        raise ValueError(f"unknown table {table!r}; expected one of {list(PAPER_TABLES)}")
    spec = PAPER_TABLES[table]
    methods = list(methods) if methods is not None else list(spec["methods"])
    parts = []
    notes: dict[str, int] = {}
    for sub, paper_key, metrics in spec["blocks"]:
        root = Path(results_root) / sub
        found = sorted(p.name for p in root.glob("Dataset*") if p.is_dir()) if root.is_dir() else []
        if len(found) > 1:
            raise ValueError(f"{root}: expected one dataset folder, found {found}")
        part = results_table(root if found else pd.DataFrame(columns=["dataset", "method", "case", "metric",
                                                                      "value"]),
                             {found[0] if found else sub: paper_key}, methods, metrics,
                             paper=paper_key is not None, reference=reference, digits=digits, notes=notes)
        parts.append(part)
    table = pd.concat(parts, axis=1)
    table.attrs["footnotes"] = [f"{'*' * k} {note}" for note, k in notes.items()]
    return table
