"""Parts shared by the baselines that we write from their papers (:mod:`~xlstm_unet.baselines.uxnet`,
:mod:`~xlstm_unet.baselines.segmamba`, :mod:`~xlstm_unet.baselines.segformer3d`).

- :class:`PaperBaseline`: their common interface (``spatial_dims``, ``in_channels``, ``out_channels``, a
  :meth:`~PaperBaseline.patch_divisor`, the paper's configuration and reported parameter count).
- :class:`ChannelLayerNorm`: LayerNorm over the channels of a ``(B, C, *spatial)`` map.
- :class:`UNETRDecoder`: the convolutional decoder of UNETR (Hatamizadeh et al. 2022) over a 4-stage hierarchical
  encoder with a stride-2 stem, as 3D UX-Net and SegMamba use it; built from MONAI's ``UnetrBasicBlock``,
  ``UnetrUpBlock`` and ``UnetOutBlock``.
- :class:`HierarchicalUNETR`: that encoder layout (stem, stages, downsamplings) with that decoder; 3D UX-Net and
  SegMamba differ in their stage blocks, their downsampling norm and what the skips pass through.

Dims legend: ``B`` batch, ``C`` channels, ``*spatial`` = ``(H, W)`` (2D) or ``(D, H, W)`` (3D), ``K`` output channels.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PaperBaseline", "ChannelLayerNorm", "UNETRDecoder", "HierarchicalUNETR", "conv_nd",
           "check_positive_ints"]


def check_positive_ints(name: str, values: int | Sequence[int], length: int | None = None) -> tuple[int, ...]:
    """``values`` as a tuple of positive ints (a single int is one value); ValueError naming ``name`` otherwise."""
    seq = (values,) if isinstance(values, (int, np.integer)) else tuple(values)
    if (not seq or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in seq)
            or (length is not None and len(seq) != length)):
        size = f"{length} " if length is not None else ""
        raise ValueError(f"{name} must be {size}positive int(s), got {values!r}")
    return tuple(int(v) for v in seq)


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``; ValueError for other ``spatial_dims``."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


class PaperBaseline(nn.Module):
    """Base of the baselines written from their papers: ``(B, in_channels, *spatial) -> (B, out_channels, *spatial)``.

    Subclasses set :attr:`paper_config` (the keyword arguments of the configuration the paper reports, channels
    included) and :attr:`paper_parameters` (the parameter count the paper reports for it, ``None`` if it reports
    none), and implement :meth:`patch_divisor`. Every spatial axis of the input must be divisible by it.
    """

    paper_config: ClassVar[dict[str, Any]] = {}
    paper_parameters: ClassVar[int | None] = None

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv_op = conv_nd(spatial_dims)
        self.spatial_dims = int(spatial_dims)
        self.in_channels, self.out_channels = check_positive_ints("in_channels, out_channels",
                                                                  (in_channels, out_channels))

    @classmethod
    def patch_divisor(cls, **kwargs: Any) -> int:
        """The number every patch axis must be divisible by, for the network built with ``kwargs``."""
        raise NotImplementedError

    @classmethod
    def default_kwargs(cls) -> dict[str, Any]:
        """The constructor's defaults, without ``spatial_dims``, ``in_channels`` and ``out_channels``."""
        params = inspect.signature(cls.__init__).parameters.values()
        return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}

    def check_input(self, x: torch.Tensor, divisor: int) -> None:
        """ValueError unless ``x`` is ``(B, in_channels, *spatial)``, each spatial axis divisible by ``divisor``."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects (B, {self.in_channels}, *{self.spatial_dims} spatial "
                             f"axes), got shape {tuple(x.shape)}")
        if any(s % divisor for s in x.shape[2:]):
            raise ValueError(f"{type(self).__name__} needs every spatial axis divisible by {divisor}, got shape "
                             f"{tuple(x.shape)}")


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of ``(B, C, *spatial)`` (ConvNeXt's "channels first" LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.movedim(1, -1), self.normalized_shape, self.weight, self.bias, self.eps).movedim(-1, 1)


class UNETRDecoder(nn.Module):
    """UNETR's decoder over a hierarchical encoder (as 3D UX-Net and SegMamba use it).

    Inputs: the image ``x`` ``(B, in_channels, *S)`` and ``n`` encoder features, feature ``i`` of
    ``(B, feature_sizes[i], *S / 2**(i + 1))`` (a stride-2 stem, then a stride-2 downsampling per stage).

    - skip ``0``: ``UnetrBasicBlock(in_channels -> f0)`` on the image (full resolution);
    - skip ``i + 1``: ``UnetrBasicBlock(f_i -> f_{i+1})`` on feature ``i`` for ``i < n - 1``;
    - bottleneck: ``UnetrBasicBlock(f_{n-1} -> hidden_size)`` on the last feature;
    - ``n`` ``UnetrUpBlock`` (transposed conv x2, concatenation with the skip, residual block), from the bottleneck
      up to full resolution; then ``UnetrBasicBlock(f0 -> f0)`` and a 1x1 conv to ``out_channels``.

    All residual blocks: two 3x3(x3) convolutions with ``norm_name`` normalisation (instance norm by default) and
    LeakyReLU, and a 1x1 conv on the skip path where the width changes (MONAI's ``UnetResBlock``).

    Returns logits ``(B, out_channels, *S)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, feature_sizes: Sequence[int], hidden_size: int,
                 out_channels: int, norm_name: str | tuple = "instance") -> None:
        super().__init__()
        from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock

        widths = [int(f) for f in feature_sizes]
        common = {"spatial_dims": spatial_dims, "kernel_size": 3, "norm_name": norm_name, "res_block": True}
        self.skips = nn.ModuleList(
            UnetrBasicBlock(in_channels=c_in, out_channels=c_out, stride=1, **common)
            for c_in, c_out in zip([in_channels, *widths[:-1]], widths))
        self.bottleneck = UnetrBasicBlock(in_channels=widths[-1], out_channels=hidden_size, stride=1, **common)
        self.ups = nn.ModuleList(
            UnetrUpBlock(in_channels=c_in, out_channels=c_out, upsample_kernel_size=2, **common)
            for c_in, c_out in zip([hidden_size, *widths[:0:-1]], widths[::-1]))
        self.head = UnetrBasicBlock(in_channels=widths[0], out_channels=widths[0], stride=1, **common)
        self.out = UnetOutBlock(spatial_dims=spatial_dims, in_channels=widths[0], out_channels=out_channels)

    def forward(self, x: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.skips):
            raise ValueError(f"UNETRDecoder expects {len(self.skips)} encoder features, got {len(features)}")
        skips = [block(t) for block, t in zip(self.skips, [x, *features[:-1]])]  # full res .. 1/2**(n-1)
        h = self.bottleneck(features[-1])
        for up, skip in zip(self.ups, reversed(skips)):
            h = up(h, skip)
        return self.out(self.head(h))


class HierarchicalUNETR(PaperBaseline):
    """A hierarchical encoder with UNETR's decoder: the layout that 3D UX-Net and SegMamba share.

    ``stem``: a ``stem_kernel_size`` convolution of stride 2 into ``feature_sizes[0]`` channels; then stage ``i``
    (``make_stage(i, width)``, resolution-preserving) at ``S / 2**(i + 1)``, stages joined by ``downsample_norm(width)``
    followed by a 2x2(x2) convolution of stride 2; each stage's output passes :meth:`skip` and goes to the
    :class:`UNETRDecoder` (bottleneck ``hidden_size``, ``norm_name``). The input must be divisible by
    :meth:`patch_divisor` ``= 2 ** len(feature_sizes)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, feature_sizes: Sequence[int],
                 hidden_size: int, norm_name: str | tuple, stem_kernel_size: int,
                 downsample_norm: Callable[[int], nn.Module], make_stage: Callable[[int, int], nn.Module]) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        widths = check_positive_ints("feature_sizes", feature_sizes)
        hidden_size, stem_kernel_size = check_positive_ints("hidden_size, stem kernel size",
                                                            (hidden_size, stem_kernel_size))
        conv = self.conv_op
        self.stem = conv(in_channels, widths[0], stem_kernel_size, stride=2, padding=stem_kernel_size // 2)
        self.downsamples = nn.ModuleList(nn.Sequential(downsample_norm(c_in), conv(c_in, c_out, 2, stride=2))
                                         for c_in, c_out in zip(widths[:-1], widths[1:]))
        self.stages = nn.ModuleList(make_stage(i, c) for i, c in enumerate(widths))
        self.decoder = UNETRDecoder(spatial_dims, in_channels, widths, hidden_size, out_channels, norm_name)
        self.divisor = 2 ** len(widths)

    @classmethod
    def patch_divisor(cls, **kwargs: Any) -> int:
        """``2 ** len(feature_sizes)``: the stem and each downsampling halve the resolution (16 for 4 stages)."""
        return 2 ** len(kwargs.get("feature_sizes", cls.default_kwargs()["feature_sizes"]))

    def skip(self, h: torch.Tensor) -> torch.Tensor:
        """What a stage output goes through on its way to the decoder (identity here)."""
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x, self.divisor)
        features = []
        h = self.stem(x)  # (B, f0, *S/2)
        for i, stage in enumerate(self.stages):
            if i:
                h = self.downsamples[i - 1](h)  # (B, f_i, *S/2**(i+1))
            h = stage(h)
            features.append(self.skip(h))
        return self.decoder(x, features)
