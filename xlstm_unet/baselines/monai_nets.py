"""The MONAI baselines of the paper's comparison tables, and the patch-size helpers that every baseline uses.

:class:`MonaiNetwork`, :func:`build_monai_network`: SegResNet (Myronenko 2018), UNETR (Hatamizadeh et al. 2022),
SwinUNETR (Hatamizadeh et al. 2021), SwinUNETR-V2 (He et al. 2023; MONAI's ``use_v2=True``) and MedNeXt (Roy et al.
2023; MONAI's ``create_mednext``). The paper's default size of each is in :data:`MONAI_DEFAULTS`. They need the patch
to be divisible by a network-specific number (:func:`patch_divisor`); :func:`round_up_patch_size` adapts a patch.

Dims legend: ``B`` batch, ``C`` channels, ``*spatial`` = ``(H, W)`` (2D) or ``(D, H, W)`` (3D), ``K`` classes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import numpy as np
from torch import nn

__all__ = [
    "MonaiNetwork",
    "MONAI_DEFAULTS",
    "patch_divisor",
    "round_up_patch_size",
    "build_monai_network",
]


class MonaiNetwork(str, Enum):
    """The MONAI baselines of the paper's tables."""

    SEGRESNET = "segresnet"
    UNETR = "unetr"
    SWINUNETR = "swinunetr"
    SWINUNETR_V2 = "swinunetr_v2"
    MEDNEXT = "mednext"


#: Keyword arguments of each baseline as trained here (the size the original papers report), on top of MONAI's
#: defaults. ``in_channels``, ``out_channels``, ``spatial_dims`` (and UNETR's ``img_size``) come from the data.
MONAI_DEFAULTS: dict[MonaiNetwork, dict[str, Any]] = {
    # SegResNet paper: 32 initial filters, blocks (1, 2, 2, 4) down, (1, 1, 1) up (MONAI's default is 8 filters).
    MonaiNetwork.SEGRESNET: {"init_filters": 32, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1)},
    # UNETR paper: ViT-B/16 encoder (768 hidden, 12 heads, 3072 MLP), feature size 16, instance norm, res blocks.
    MonaiNetwork.UNETR: {"feature_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12,
                         "proj_type": "conv", "norm_name": "instance", "res_block": True},
    # SwinUNETR paper: feature size 48 (MONAI's default is 24), patch 2, window 7, depths (2, 2, 2, 2).
    MonaiNetwork.SWINUNETR: {"feature_size": 48, "patch_size": 2, "window_size": 7, "depths": (2, 2, 2, 2),
                             "num_heads": (3, 6, 12, 24), "use_v2": False},
    MonaiNetwork.SWINUNETR_V2: {"feature_size": 48, "patch_size": 2, "window_size": 7, "depths": (2, 2, 2, 2),
                                "num_heads": (3, 6, 12, 24), "use_v2": True},
    # MedNeXt paper: variant B with 3x3x3 kernels (MONAI's create_mednext preset).
    MonaiNetwork.MEDNEXT: {"variant": "B", "kernel_size": 3},
}


def _as_network(network: MonaiNetwork | str) -> MonaiNetwork:
    try:
        return MonaiNetwork(network)
    except ValueError:
        raise ValueError(
            f"unknown MONAI baseline {network!r}; expected one of {[n.value for n in MonaiNetwork]}") from None


def _merged_kwargs(network: MonaiNetwork, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    kwargs = dict(MONAI_DEFAULTS[network])
    if overrides:
        reserved = sorted({"in_channels", "out_channels", "spatial_dims", "img_size"} & overrides.keys())
        if reserved:
            raise ValueError(f"network kwargs must not set {reserved}: they come from the data and the patch size")
        kwargs.update(overrides)
    return kwargs


def patch_divisor(network: MonaiNetwork | str, overrides: Mapping[str, Any] | None = None) -> int:
    """The number every patch axis must be divisible by for ``network`` (with ``overrides`` of its kwargs).

    SegResNet: ``2 ** (len(blocks_down) - 1)`` (8 by default); UNETR: 16 (its ViT patch); SwinUNETR(-V2):
    ``patch_size ** 5`` (32); MedNeXt: ``2 ** 4`` (16; with explicit ``blocks_down``, ``2 ** len(blocks_down)``).
    """
    net = _as_network(network)
    kwargs = _merged_kwargs(net, overrides)
    if net is MonaiNetwork.SEGRESNET:
        return 2 ** (len(kwargs["blocks_down"]) - 1)
    if net is MonaiNetwork.UNETR:
        return 16
    if net in (MonaiNetwork.SWINUNETR, MonaiNetwork.SWINUNETR_V2):
        return int(kwargs["patch_size"]) ** 5
    if kwargs.get("variant") is not None:  # create_mednext presets: 4 downsamplings
        return 2 ** 4
    return 2 ** len(kwargs.get("blocks_down", (2, 2, 2, 2)))


def round_up_patch_size(patch_size: Sequence[int], divisor: int) -> tuple[int, ...]:
    """Each axis of ``patch_size`` rounded up to the next multiple of ``divisor`` (unchanged if already one).

    >>> round_up_patch_size((40, 224, 192), 32)
    (64, 224, 192)
    """
    if isinstance(divisor, bool) or not isinstance(divisor, (int, np.integer)) or divisor < 1:
        raise ValueError(f"divisor must be a positive int, got {divisor!r}")
    out = []
    for p in patch_size:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 1:
            raise ValueError(f"patch_size must hold positive ints, got {list(patch_size)}")
        out.append(int(math.ceil(int(p) / divisor) * divisor))
    return tuple(out)


def build_monai_network(network: MonaiNetwork | str, *, spatial_dims: int, in_channels: int, out_channels: int,
                        patch_size: Sequence[int], overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """A MONAI baseline for ``(B, in_channels, *patch_size)`` inputs, returning logits ``(B, out_channels, *patch)``.

    Args:
        network: a :class:`MonaiNetwork` (or its value, e.g. ``"unetr"``).
        spatial_dims: 2 or 3.
        in_channels, out_channels: image channels and output channels (classes, or regions).
        patch_size: the training/inference patch, ``spatial_dims`` ints, each divisible by
            :func:`patch_divisor` (UNETR's position embedding is built for exactly this size).
        overrides: keyword arguments replacing :data:`MONAI_DEFAULTS` (e.g. a smaller ``feature_size``). For
            MedNeXt, ``variant`` selects a ``create_mednext`` preset; without ``variant`` (override it with
            ``None``) the remaining kwargs go to ``MedNeXt`` itself.

    Deep supervision is off: the networks return one tensor.

    Raises:
        ValueError: unknown network, ``spatial_dims`` not 2 or 3, a patch of the wrong length or not divisible.

    Examples::

        net = build_monai_network("unetr", spatial_dims=2, in_channels=3, out_channels=2, patch_size=(64, 48))
        logits = net(torch.randn(2, 3, 64, 48))                   # (2, 2, 64, 48)
    """
    net = _as_network(network)
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != spatial_dims:
        raise ValueError(f"patch_size must have {spatial_dims} entries, got {list(patch_size)}")
    divisor = patch_divisor(net, overrides)
    if any(p % divisor for p in patch):
        raise ValueError(
            f"{net.value} needs every patch axis divisible by {divisor}, got patch_size {list(patch)}; "
            f"use round_up_patch_size(patch_size, {divisor}) -> {list(round_up_patch_size(patch, divisor))}")
    kwargs = _merged_kwargs(net, overrides)
    common = {"in_channels": in_channels, "out_channels": out_channels, "spatial_dims": spatial_dims}
    if net is MonaiNetwork.SEGRESNET:
        from monai.networks.nets import SegResNet

        return SegResNet(**common, **kwargs)
    if net is MonaiNetwork.UNETR:
        from monai.networks.nets import UNETR

        return UNETR(**common, img_size=patch, **kwargs)
    if net in (MonaiNetwork.SWINUNETR, MonaiNetwork.SWINUNETR_V2):
        from monai.networks.nets import SwinUNETR

        if all(p == divisor for p in patch):
            warnings.warn(f"{net.value} at patch_size {list(patch)}: its bottleneck is a single voxel, where instance "
                          f"norm cannot train; use at least one axis of {2 * divisor}", stacklevel=2)
        return SwinUNETR(**common, **kwargs)
    from monai.networks.nets.mednext import MedNeXt, create_mednext

    variant = kwargs.pop("variant", None)
    if variant is not None:
        unknown = sorted(kwargs.keys() - {"kernel_size"})
        if unknown:
            raise ValueError(f"MedNeXt preset {variant!r} takes only kernel_size, got also {unknown}; "
                             "set variant=None to pass MedNeXt's own kwargs")
        return create_mednext(variant, deep_supervision=False, **common, **kwargs)
    return MedNeXt(**common, deep_supervision=False, **kwargs)
