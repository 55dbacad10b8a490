"""3D UX-Net (Lee, Bao, Huo, Landman: "3D UX-Net: A Large Kernel Volumetric ConvNet Modernizing Hierarchical
Transformer for Medical Image Segmentation", ICLR 2023, arXiv 2209.15076), written from the paper.

A hierarchical encoder of large-kernel depth-wise convolution blocks in the layout of a Swin Transformer, and
UNETR's convolutional decoder (:class:`~xlstm_unet.baselines.blocks.UNETRDecoder`).

What we follow from the paper:

- a stem that extracts patch-wise features with a large-kernel (7x7x7) convolution of stride 2 into ``C = 48``
  channels; four stages of widths ``(48, 96, 192, 384)`` with two blocks each; a 2x2x2 stride-2 convolution
  between stages (patch merging);
- the block (:class:`UXBlock`) is Swin's block with window self-attention replaced by a 7x7x7 depth-wise
  convolution (DWC) and the MLP replaced by depth-wise convolution scaling (DCS): two point-wise (1x1x1) convolutions
  grouped per channel, widening each channel 4x and back, with GELU; each after a LayerNorm, each with a residual:
  ``h = x + DWC(LN(x)); out = h + DCS(LN(h))``;
- the decoder: a residual conv block on the image and on each stage's output, a bottleneck of width 768 on the last
  stage, transposed-conv upsampling and residual blocks with instance norm back to full resolution, a 1x1x1 output
  conv.

What the paper leaves open and what we chose: the stem is an ordinary (dense) convolution, since it changes the
number of channels from the image's; a channel LayerNorm precedes each downsampling convolution; no LayerScale, no
stochastic depth; the stage outputs go to the decoder without an extra normalisation.

Parameter count at the paper's configuration (3D, ``feature_sizes=(48, 96, 192, 384)``, ``hidden_size=768``; one
input channel, five output channels as for FLARE 2021; the channels change the count by a few hundred): the paper
reports 53.0 M (its Table 1); ours is 53.0 M (53,005,973; ``tests/test_baselines_3d.py`` checks it is within 10 %).

Input ``(B, in_channels, *spatial)``, every spatial axis divisible by ``2 ** len(feature_sizes)`` (16), output logits
``(B, out_channels, *spatial)``. 2D (``spatial_dims=2``) uses 7x7 kernels and 2D convolutions throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
import torch
from torch import nn

from xlstm_unet.baselines.blocks import ChannelLayerNorm, HierarchicalUNETR, check_positive_ints

__all__ = ["UXBlock", "UXNet"]


class UXBlock(nn.Module):
    """3D UX-Net's block on ``(B, dim, *spatial)``: ``h = x + DWC(LN(x)); out = h + DCS(LN(h))`` (see the module).

    DWC: ``kernel_size`` depth-wise convolution; DCS: 1x1 convolutions grouped per channel, ``dim -> expansion * dim``,
    GELU, ``-> dim``; LN: LayerNorm over the channels.
    """

    def __init__(self, dim: int, conv_op: type[nn.Module], kernel_size: int = 7, expansion: int = 4) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.dwconv = conv_op(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm2 = ChannelLayerNorm(dim)
        self.dcs = nn.Sequential(conv_op(dim, expansion * dim, 1, groups=dim), nn.GELU(),
                                 conv_op(expansion * dim, dim, 1, groups=dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dwconv(self.norm1(x))
        return x + self.dcs(self.norm2(x))


class UXNet(HierarchicalUNETR):
    """3D UX-Net for 2D or 3D inputs (see the module docstring for what follows the paper and what we chose).

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: image channels and output channels (classes or regions).
        feature_sizes: stage widths (48, 96, 192, 384).
        depths: blocks per stage (2, 2, 2, 2).
        hidden_size: width of the decoder's bottleneck block (768).
        kernel_size: the depth-wise (and stem) kernel size, odd (7).
        expansion: DCS channel expansion (4).
        norm_name: the decoder's normalisation, a MONAI norm name (``"instance"``).

    Raises:
        ValueError: ``spatial_dims`` not 2 or 3, bad sizes; in ``forward``, an input of the wrong shape.

    Examples::

        net = UXNet(3, 4, 3, feature_sizes=(8, 16, 32, 64), hidden_size=64)
        logits = net(torch.randn(1, 4, 32, 32, 32))              # (1, 3, 32, 32, 32)
    """

    paper_config = {"spatial_dims": 3, "in_channels": 1, "out_channels": 5}
    paper_parameters = 53_000_000

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *,
                 feature_sizes: Sequence[int] = (48, 96, 192, 384), depths: Sequence[int] = (2, 2, 2, 2),
                 hidden_size: int = 768, kernel_size: int = 7, expansion: int = 4,
                 norm_name: str | tuple = "instance") -> None:
        depths = check_positive_ints("depths", depths, len(check_positive_ints("feature_sizes", feature_sizes)))
        kernel_size, expansion = check_positive_ints("kernel_size, expansion", (kernel_size, expansion))
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")

        def make_stage(i: int, width: int) -> nn.Module:
            return nn.Sequential(*(UXBlock(width, self.conv_op, kernel_size, expansion) for _ in range(depths[i])))

        super().__init__(spatial_dims, in_channels, out_channels, feature_sizes, hidden_size, norm_name,
                         stem_kernel_size=kernel_size, downsample_norm=ChannelLayerNorm, make_stage=make_stage)
