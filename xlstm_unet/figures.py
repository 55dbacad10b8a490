"""Fig. 2-style panels; and the one import place for the results tables, efficiency plots and label colours.

Everything here reads files written by the experiment pipeline and the benchmarks; nothing trains or predicts.
The tables (:mod:`xlstm_unet.tables`), the efficiency tables and plots (:mod:`xlstm_unet.efficiency`), the label
colours (:mod:`xlstm_unet.colors`: label ``k`` has the same colour in every figure and in the slice viewer) and
:func:`save_figure` are defined in their modules and importable from here, as the notebooks do.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xlstm_unet._io import save_figure
from xlstm_unet.colors import label_colormap, label_colors, normalize_intensity, overlay_labels
from xlstm_unet.efficiency import load_benchmark, plot_train_step, plot_vil_scaling, train_step_table, vil_scaling_table
from xlstm_unet.tables import (
    NOT_IN_PAPER,
    NOT_RUN,
    PAPER_TABLES,
    load_per_case,
    paper_table,
    results_numbers,
    results_table,
    save_table,
    table_to_markdown,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from xlstm_unet.viewer_data import ViewerData

__all__ = [
    "NOT_RUN",
    "NOT_IN_PAPER",
    "label_colors",
    "label_colormap",
    "normalize_intensity",
    "overlay_labels",
    "load_per_case",
    "results_numbers",
    "results_table",
    "table_to_markdown",
    "save_table",
    "save_figure",
    "PAPER_TABLES",
    "paper_table",
    "Fig2Result",
    "fig2_panel",
    "load_benchmark",
    "vil_scaling_table",
    "train_step_table",
    "plot_vil_scaling",
    "plot_train_step",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fig2Result:
    """What :func:`fig2_panel` wrote: the figure, its files, and its grid (rows = cases, columns = panels)."""

    figure: Figure
    png: Path
    pdf: Path | None
    rows: int
    columns: tuple[str, ...]


def fig2_panel(
    data: ViewerData,
    out_stem: str | os.PathLike,
    cases: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    axis: str = "axial",
    slice_index: int | Mapping[str, int] | None = None,
    channel: int | None = None,
    opacity: float = 0.6,
    panel_size: float = 2.2,
    dpi: int = 150,
    show_dice: bool = True,
    pdf: bool = True,
    labels: Mapping[str, str] | None = None,
    scores: Mapping[str, Mapping[str, float]] | None = None,
    score_name: str = "Dice",
) -> Fig2Result:
    """A Fig. 2-style panel: one row per case, columns image | ground truth | each method, coloured overlays.

    Args:
        data: cases with images, ground truth and predictions (:class:`xlstm_unet.viewer.ViewerData`).
        out_stem: output path without suffix; ``<stem>.png`` and (with ``pdf``) ``<stem>.pdf`` are written.
        cases: case names (rows), default all cases of ``data``.
        methods: methods (columns after image and ground truth), default all methods of ``data``.
        axis: for 3D cases, ``axial`` / ``coronal`` / ``sagittal`` (array axes 0 / 1 / 2).
        slice_index: for 3D cases, the slice (one int for all, or per case); default the slice with the most
            ground-truth foreground.
        channel: image channel shown; default the one from :meth:`ViewerData.default_channel` (RGB images are
            shown in colour).
        opacity: overlay opacity in [0, 1].
        show_dice: write each prediction's Dice for the case (mean over foreground labels) under its panel.
        pdf: also write ``<stem>.pdf`` (vector text, images embedded at full size).
        labels: column titles for some methods (e.g. ``{"xlstm_enc": "xLSTM-UNet Enc"}``); default the names.
        scores: ``{method: {case: value}}`` written under the panels instead of the computed Dice (e.g. the
            per-case scores of a results table), labelled ``score_name``; a method or case without one shows n/a.
    Returns:
        :class:`Fig2Result` with the figure (closed for drawing; re-open with ``fig.savefig``) and the paths.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    cases = list(cases) if cases is not None else data.case_names
    methods = list(methods) if methods is not None else data.methods
    unknown = [m for m in methods if m not in data.methods]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; data has {data.methods}")
    if not cases:
        raise ValueError("fig2_panel needs at least one case")
    columns = ("image", "ground truth", *methods)
    nrows, ncols = len(cases), len(columns)
    fig = Figure(figsize=(panel_size * ncols, panel_size * nrows + 0.5), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))  # (rows, cols)
    for r, case in enumerate(cases):
        idx = slice_index.get(case) if isinstance(slice_index, Mapping) else slice_index
        view = data.view(case, axis=axis, index=idx, channel=channel)
        panels = data.panels(case, view, methods=methods, opacity=opacity)
        for c, name in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(panels[name], interpolation="nearest", aspect=view.aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title((labels or {}).get(name, name), fontsize=9)
            if c == 0:
                ax.set_ylabel(case if view.index is None else f"{case}\n{axis} {view.index}", fontsize=8)
            if show_dice and c >= 2:
                d = data.dice(case, name) if scores is None else float(scores.get(name, {}).get(case, math.nan))
                ax.set_xlabel(f"{score_name} n/a" if math.isnan(d) else f"{score_name} {d:.3f}", fontsize=8)
    handles = [
        Patch(color=label_colors(data.num_classes)[k], label=data.label_name(k)) for k in range(1, data.num_classes)
    ]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    paths = save_figure(fig, Path(out_stem), dpi, formats=("png", "pdf") if pdf else ("png",))
    log.info("Fig. 2 panel written: %s", ", ".join(str(p) for p in paths.values()))
    return Fig2Result(figure=fig, png=paths["png"], pdf=paths.get("pdf"), rows=nrows, columns=columns)
