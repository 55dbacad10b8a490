"""Reports of a results folder: training curves now; the study tables of ``xlstm-unet tables`` build on it.

Reads the layout written by :func:`xlstm_unet.experiment.run_experiment`::

    <results_dir>/<method>/seed<k>/training_curve.csv    epoch, train_loss, val_loss, pseudo_dice, ..., epoch_s
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["load_curves", "plot_training_curves"]


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
        ax.set_title(method, fontsize=9)
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
