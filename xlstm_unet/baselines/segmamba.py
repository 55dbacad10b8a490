"""SegMamba (Xing, Ye, Yang, Liu, Zhu: "SegMamba: Long-range Sequential Modeling Mamba for 3D Medical Image
Segmentation", MICCAI 2024, arXiv 2401.13560), written from the paper.

A hierarchical encoder of tri-orientated spatial Mamba (TSMamba) blocks, a feature-level uncertainty estimation (FUE)
on the encoder's multi-scale features, and UNETR's convolutional decoder
(:class:`~xlstm_unet.baselines.blocks.UNETRDecoder`).

What we follow from the paper:

- a stem convolution with a 7x7x7 kernel, padding 3 and stride 2, into 48 channels; four stages of widths
  ``(48, 96, 192, 384)``, a stride-2 downsampling between stages;
- the TSMamba block (:class:`TSMambaBlock`): ``z = GSC(z); z = z + ToM(LN(z)); z = z + MLP(LN(z))``;
- gated spatial convolution (:class:`GatedSpatialConv`): ``GSC(z) = z + C1(C3(C3(z)) * C1(z))``, ``Ck`` a kxkxk
  convolution with normalisation and a non-linearity, ``*`` element-wise (the gate);
- tri-orientated Mamba (:class:`TriOrientedMamba`): ``ToM(z) = Mamba(z_f) + Mamba(z_r) + Mamba(z_s)``, the feature
  map flattened in the forward order, the reverse order, and the inter-slice order (slice axis fastest);
- FUE (:class:`FeatureUncertainty`): the channel mean of a feature ``z`` through a sigmoid, ``p``; its uncertainty
  ``u = -p log p``; the decoder gets ``z + z * (1 - u)`` (features of low uncertainty enhanced);
- the decoder: a residual conv block on the image and on each (FUE-weighted) stage output, a bottleneck of width 768,
  transposed-conv upsampling and residual blocks with instance norm back to full resolution, a 1x1x1 output conv.

What the paper leaves open and what we chose: one TSMamba block per stage (``depths=(1, 1, 1, 1)``; the paper gives
no depth); the three orientations are three separate Mamba mixers, each a project
:class:`~xlstm_unet.baselines.umamba.MambaLayer` (its LayerNorm is the block's ``LN`` before ToM, one per
orientation; Mamba's d_state 16, d_conv 4, expand 2; ``mamba_ssm`` on CUDA when installed, else ``mambapy``); the
paper calls the stem depth-wise, we use an ordinary (dense) convolution, since a depth-wise one needs the width (48)
to be a multiple of the image's channels; the downsampling is instance norm then a 2x2x2 stride-2 convolution; GSC's ``Ck`` use instance norm (affine) and ReLU; the MLP is two
1x1x1 convolutions ``C -> 2C -> C`` with GELU; LN is a LayerNorm over the channels.

Parameter count at the paper's configuration (3D, four input channels and three output regions as for BraTS 2023):
the paper reports none; ours is 68.2 M (68,216,019).

Input ``(B, in_channels, *spatial)``, every spatial axis divisible by ``2 ** len(feature_sizes)`` (16), output logits
``(B, out_channels, *spatial)``. 2D (``spatial_dims=2``) works the same way: the inter-slice order scans columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from xlstm_unet.baselines.blocks import ChannelLayerNorm, HierarchicalUNETR, check_positive_ints
from xlstm_unet.baselines.umamba import MambaLayer

__all__ = ["GatedSpatialConv", "TriOrientedMamba", "TSMambaBlock", "FeatureUncertainty", "SegMamba"]


def _instance_norm(spatial_dims: int, dim: int) -> nn.Module:
    return (nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d)(dim, affine=True)


class GatedSpatialConv(nn.Module):
    """GSC on ``(B, dim, *spatial)``: ``z + C1(C3(C3(z)) * C1(z))``, ``Ck`` = kxk(xk) conv, instance norm, ReLU."""

    def __init__(self, dim: int, spatial_dims: int, conv_op: type[nn.Module]) -> None:
        super().__init__()

        def conv_norm_act(k: int) -> nn.Sequential:
            return nn.Sequential(conv_op(dim, dim, k, padding=k // 2), _instance_norm(spatial_dims, dim), nn.ReLU())

        self.spatial = nn.Sequential(conv_norm_act(3), conv_norm_act(3))
        self.gate = conv_norm_act(1)
        self.out = conv_norm_act(1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.out(self.spatial(z) * self.gate(z))


class TriOrientedMamba(nn.Module):
    """ToM on ``(B, dim, *spatial)``: the sum of three :class:`MambaLayer` scans (each LayerNorm, then Mamba).

    - forward: the row-major (C-order) raster order of ``*spatial``;
    - reverse: that order backwards (all spatial axes flipped);
    - inter-slice: the first spatial axis (slices) fastest, i.e. the raster order of ``(*spatial[1:], spatial[0])``.

    ``mamba_kwargs``: :class:`MambaLayer` kwargs (``d_state``, ``d_conv``, ``expand``, ``backend``).
    """

    def __init__(self, dim: int, mamba_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        kwargs = dict(mamba_kwargs or {})
        reserved = sorted({"dim", "channel_tokens"} & kwargs.keys())
        if reserved:
            raise ValueError(f"mamba_kwargs must not set {reserved}: they come from the stage")
        self.forward_scan = MambaLayer(dim, **kwargs)
        self.reverse_scan = MambaLayer(dim, **kwargs)
        self.slice_scan = MambaLayer(dim, **kwargs)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        axes = tuple(range(2, z.ndim))
        forward = self.forward_scan(z)
        reverse = self.reverse_scan(z.flip(axes)).flip(axes)
        inter_slice = self.slice_scan(z.movedim(2, -1)).movedim(-1, 2)
        return forward + reverse + inter_slice


class TSMambaBlock(nn.Module):
    """TSMamba block on ``(B, dim, *spatial)``: ``z = GSC(z); z = z + ToM(LN(z)); z = z + MLP(LN(z))``."""

    def __init__(self, dim: int, spatial_dims: int, conv_op: type[nn.Module], mlp_ratio: int = 2,
                 mamba_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.gsc = GatedSpatialConv(dim, spatial_dims, conv_op)
        self.tom = TriOrientedMamba(dim, mamba_kwargs)
        self.norm = ChannelLayerNorm(dim)
        self.mlp = nn.Sequential(conv_op(dim, mlp_ratio * dim, 1), nn.GELU(), conv_op(mlp_ratio * dim, dim, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.gsc(z)
        z = z + self.tom(z)
        return z + self.mlp(self.norm(z))


class FeatureUncertainty(nn.Module):
    """FUE on ``(B, C, *spatial)``: ``p = sigmoid(mean_C(z))``, ``u = -p log p``, returns ``z + z * (1 - u)``.

    No parameters; ``u`` is in ``[0, 1/e]``, so each voxel's features are scaled by a factor in ``[2 - 1/e, 2]``.
    """

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = torch.special.entr(torch.sigmoid(z.mean(dim=1, keepdim=True)))  # (B, 1, *spatial)
        return z + z * (1 - u)


class SegMamba(HierarchicalUNETR):
    """SegMamba for 2D or 3D inputs (see the module docstring for what follows the paper and what we chose).

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: image channels and output channels (classes or regions).
        feature_sizes: stage widths (48, 96, 192, 384).
        depths: TSMamba blocks per stage (1, 1, 1, 1).
        hidden_size: width of the decoder's bottleneck block (768).
        mlp_ratio: the TSMamba MLP's expansion (2).
        norm_name: the decoder's normalisation, a MONAI norm name (``"instance"``).
        mamba_kwargs: :class:`~xlstm_unet.baselines.umamba.MambaLayer` kwargs (``d_state``, ``d_conv``,
            ``expand``, ``backend``); not ``dim`` or ``channel_tokens``.

    Raises:
        ValueError: ``spatial_dims`` not 2 or 3, bad sizes, reserved ``mamba_kwargs``; in ``forward``, an input of
            the wrong shape.

    Examples::

        net = SegMamba(3, 4, 3, feature_sizes=(8, 16, 32, 64), hidden_size=64, mamba_kwargs={"d_state": 4})
        logits = net(torch.randn(1, 4, 32, 32, 32))              # (1, 3, 32, 32, 32)
    """

    paper_config = {"spatial_dims": 3, "in_channels": 4, "out_channels": 3}
    paper_parameters = None

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *,
                 feature_sizes: Sequence[int] = (48, 96, 192, 384), depths: Sequence[int] = (1, 1, 1, 1),
                 hidden_size: int = 768, mlp_ratio: int = 2, norm_name: str | tuple = "instance",
                 mamba_kwargs: Mapping[str, Any] | None = None) -> None:
        depths = check_positive_ints("depths", depths, len(check_positive_ints("feature_sizes", feature_sizes)))
        (mlp_ratio,) = check_positive_ints("mlp_ratio", mlp_ratio)

        def make_stage(i: int, width: int) -> nn.Module:
            return nn.Sequential(*(TSMambaBlock(width, spatial_dims, self.conv_op, mlp_ratio, mamba_kwargs)
                                   for _ in range(depths[i])))

        super().__init__(spatial_dims, in_channels, out_channels, feature_sizes, hidden_size, norm_name,
                         stem_kernel_size=7, downsample_norm=partial(_instance_norm, spatial_dims),
                         make_stage=make_stage)
        self.uncertainty = FeatureUncertainty()

    def skip(self, h: torch.Tensor) -> torch.Tensor:
        """FUE (:class:`FeatureUncertainty`) on each stage output before the decoder."""
        return self.uncertainty(h)
