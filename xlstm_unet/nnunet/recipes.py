"""Optimiser recipes shared by every trainer (ours and the baselines).

``paper`` (default)
    AdamW, weight decay 0.05, poly schedule (exponent 0.9, nnU-Net's), with the paper's learning rate per dataset
    (xLSTM-UNet paper §3; reference.md):

    ============== ======================
    protocol       lr
    ============== ======================
    abdomen        0.005
    endoscopy      0.01
    cells          0.007 (Bot), 0.0015 (Enc and every other network)
    other          0.005 (the paper's abdomen value; the paper gives none for BraTS or for new datasets)
    ============== ======================

    The dataset's protocol is read from ``dataset.json["xlstm_unet"]["protocol"]``, which our converters write.

``official``
    What the official code actually trains with: SGD, Nesterov momentum 0.99, weight decay 3e-5, lr 5e-3, poly.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Literal

import torch

__all__ = ["RECIPES", "PAPER_LR", "Recipe", "RecipeName", "resolve_recipe", "build_optimizer"]

RecipeName = Literal["paper", "official"]
RECIPES: tuple[str, ...] = ("paper", "official")

#: The paper's AdamW learning rates by evaluation protocol; "cells" depends on the variant.
PAPER_LR: dict[str, float | dict[str, float]] = {
    "abdomen": 0.005,
    "endoscopy": 0.01,
    "cells": {"bot": 0.007, "enc": 0.0015},
}
_FALLBACK_LR = 0.005


@dataclass(frozen=True)
class Recipe:
    """A resolved optimiser recipe: everything needed to rebuild the optimiser, recorded with each run."""

    name: str
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float | None
    nesterov: bool
    schedule: str = "poly(0.9)"
    lr_source: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_recipe(name: str, *, protocol: str | None = None, variant: str | None = None,
                   lr: float | None = None) -> Recipe:
    """Resolve a recipe name into concrete hyper-parameters.

    Args:
        name: ``"paper"`` or ``"official"``.
        protocol: the dataset's evaluation protocol (``abdomen``, ``endoscopy``, ``cells``, ...), used by ``paper``
            to pick the learning rate.
        variant: ``"bot"`` or ``"enc"``; only the ``cells`` learning rate depends on it (Bot 0.007, else 0.0015).
        lr: an explicit learning rate that overrides the recipe's.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {RECIPES}")
    if lr is not None and not lr > 0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    if name == "official":
        return Recipe("official", "SGD", lr if lr is not None else 5e-3, 3e-5, 0.99, True,
                      lr_source="explicit" if lr is not None else "official code")
    if lr is not None:
        return Recipe("paper", "AdamW", lr, 0.05, None, False, lr_source="explicit")
    entry = PAPER_LR.get(protocol or "")
    if isinstance(entry, dict):
        key = "bot" if variant == "bot" else "enc"
        return Recipe("paper", "AdamW", entry[key], 0.05, None, False, lr_source=f"paper ({protocol}, {key})")
    if entry is not None:
        return Recipe("paper", "AdamW", float(entry), 0.05, None, False, lr_source=f"paper ({protocol})")
    warnings.warn(f"the paper gives no learning rate for protocol {protocol!r}; using {_FALLBACK_LR} "
                  "(its abdomen value). Pass lr= to choose another.", stacklevel=2)
    return Recipe("paper", "AdamW", _FALLBACK_LR, 0.05, None, False, lr_source=f"fallback ({protocol})")


def build_optimizer(recipe: Recipe, params) -> torch.optim.Optimizer:
    """The optimiser for ``recipe`` over ``params``."""
    if recipe.optimizer == "SGD":
        return torch.optim.SGD(params, recipe.lr, weight_decay=recipe.weight_decay, momentum=recipe.momentum,
                               nesterov=recipe.nesterov)
    return torch.optim.AdamW(params, recipe.lr, weight_decay=recipe.weight_decay)
