"""SegFormer3D (Perera, Navard, Yilmaz: "SegFormer3D: an Efficient Transformer for 3D Medical Image Segmentation",
CVPR Workshops (DEF-AI-MIA) 2024, arXiv 2404.10156), written from the paper.

SegFormer's Mix Transformer encoder and all-MLP decoder (Xie et al. 2021), in 3D.

What we follow from the paper:

- four encoder stages of widths ``(32, 64, 160, 256)``, two transformer blocks each, ``(1, 2, 5, 8)`` heads;
- overlapping patch merging (:class:`OverlapPatchMerging`) before each stage: a convolution of kernel 7, stride 4
  (padding 3) before the first stage and of kernel 3, stride 2 (padding 1) before the others, then a LayerNorm;
- efficient self-attention (:class:`EfficientSelfAttention`): keys and values from the token map reduced by a
  convolution of kernel and stride ``r`` (then a LayerNorm), ``r = (4, 2, 1, 1)`` per stage (``r**3`` fewer keys);
- Mix-FFN (:class:`MixFFN`): ``Linear(C, 4C)``, a 3x3x3 depth-wise convolution on the token map, GELU,
  ``Linear(4C, C)``, so that no positional encoding is needed; pre-norm residual blocks
  (``x = x + Attn(LN(x)); x = x + MixFFN(LN(x))``) and a LayerNorm after each stage;
- the all-MLP decoder (:class:`AllMLPDecoder`): each stage's features linearly projected to 256 channels,
  upsampled to the first stage's resolution (1/4), concatenated, fused by a linear layer ``4 * 256 -> 256``, a linear
  layer to the classes, and upsampled (x4) to the input resolution.

What the paper leaves open and what we chose: the fuse layer is followed by batch norm and ReLU (SegFormer's fuse
module); upsampling is trilinear (bilinear in 2D) without corner alignment; dropout before the classifier is 0; no
stochastic depth; linear layers start from a truncated normal (std 0.02, biases zero) as in SegFormer.

Parameter count at the paper's configuration (3D, four input channels and three output regions, BraTS): the paper
reports 4.51 M (its parameter/GFLOPs comparison); ours is 4.52 M (4,515,011; ``tests/test_baselines_3d.py`` checks
it is within 10 %).

Input ``(B, in_channels, *spatial)``, every spatial axis divisible by :meth:`SegFormer3D.patch_divisor` (32: the total
stride, and each stage's resolution divisible by its ``r``), output logits ``(B, out_channels, *spatial)``.
2D (``spatial_dims=2``) is SegFormer's own 2D layout with these sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xlstm_unet.baselines.blocks import PaperBaseline, check_positive_ints

__all__ = ["OverlapPatchMerging", "EfficientSelfAttention", "MixFFN", "MixTransformerBlock", "AllMLPDecoder",
           "SegFormer3D"]


def _to_map(tokens: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """``(B, S, C)`` -> ``(B, C, *spatial)``."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *spatial)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial)`` -> ``(B, S, C)``."""
    return x.flatten(2).transpose(1, 2)


class OverlapPatchMerging(nn.Module):
    """``(B, C_in, *spatial) -> (B, S', C_out)`` tokens: a ``kernel_size`` conv of ``stride`` (padding ``k // 2``),
    flattened, LayerNorm. Also returns the new spatial shape."""

    def __init__(self, conv_op: type[nn.Module], in_channels: int, out_channels: int, kernel_size: int,
                 stride: int) -> None:
        super().__init__()
        self.proj = conv_op(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        x = self.proj(x)
        return self.norm(_to_tokens(x)), tuple(x.shape[2:])


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention on ``(B, S, dim)`` tokens whose keys and values come from the token map reduced by
    a convolution of kernel and stride ``sr_ratio`` (and a LayerNorm); ``sr_ratio = 1``: plain self-attention."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, conv_op: type[nn.Module]) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = conv_op(dim, dim, sr_ratio, stride=sr_ratio)
            self.sr_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
        b, s, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, s, heads, c // heads).transpose(1, 2)  # (B, NH, S, DH)
        kv_in = self.sr_norm(_to_tokens(self.sr(_to_map(x, spatial)))) if self.sr_ratio > 1 else x  # (B, S/r^d, C)
        k, v = self.kv(kv_in).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)  # 2 x (B, NH, S', DH)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, NH, S, DH)
        return self.proj(out.transpose(1, 2).reshape(b, s, c))


class MixFFN(nn.Module):
    """``(B, S, dim)``: ``Linear(dim, hidden)``, 3x3(x3) depth-wise conv on the token map, GELU, then
    ``Linear(hidden, dim)``."""

    def __init__(self, dim: int, hidden: int, conv_op: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = conv_op(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
        h = _to_tokens(self.dwconv(_to_map(self.fc1(x), spatial)))
        return self.fc2(self.act(h))


class MixTransformerBlock(nn.Module):
    """``x = x + Attn(LN(x)); x = x + MixFFN(LN(x))`` on ``(B, S, dim)`` tokens of a ``spatial`` map."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int, conv_op: type[nn.Module]) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, conv_op)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = MixFFN(dim, mlp_ratio * dim, conv_op)

    def forward(self, x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), spatial)
        return x + self.ffn(self.norm2(x), spatial)


class AllMLPDecoder(nn.Module):
    """SegFormer's decoder: stage maps ``(B, C_i, *S_i)`` -> logits ``(B, out_channels, *S_0)``.

    Each map is projected to ``dim`` channels (a linear layer on every voxel, i.e. a 1x1 conv) and upsampled to
    ``S_0``; the concatenation (deepest first) is fused to ``dim`` channels (1x1 conv, batch norm, ReLU), dropped out
    with ``dropout`` and classified (1x1 conv).
    """

    def __init__(self, conv_op: type[nn.Module], in_widths: Sequence[int], dim: int, out_channels: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.ModuleList(conv_op(c, dim, 1) for c in in_widths)
        norm = nn.BatchNorm2d if conv_op is nn.Conv2d else nn.BatchNorm3d
        self.fuse = nn.Sequential(conv_op(len(in_widths) * dim, dim, 1, bias=False), norm(dim), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.classifier = conv_op(dim, out_channels, 1)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        size = maps[0].shape[2:]
        mode = "bilinear" if maps[0].ndim == 4 else "trilinear"
        projected = [F.interpolate(lin(m), size=size, mode=mode, align_corners=False) if m.shape[2:] != size
                     else lin(m) for lin, m in zip(self.linear, maps)]
        return self.classifier(self.dropout(self.fuse(torch.cat(projected[::-1], dim=1))))


class SegFormer3D(PaperBaseline):
    """SegFormer3D for 2D or 3D inputs (see the module docstring for what follows the paper and what we chose).

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: image channels and output channels (classes or regions).
        embed_dims: stage widths (32, 64, 160, 256).
        depths: transformer blocks per stage (2, 2, 2, 2).
        num_heads: attention heads per stage (1, 2, 5, 8); each width must be divisible by its heads.
        sr_ratios: key/value reduction ratio per stage (4, 2, 1, 1).
        patch_kernel_sizes, patch_strides: the overlapping patch merging per stage ((7, 3, 3, 3), (4, 2, 2, 2)).
        mlp_ratio: Mix-FFN expansion (4).
        decoder_dim: the all-MLP decoder's width (256).
        decoder_dropout: dropout before the classifier (0).

    Raises:
        ValueError: ``spatial_dims`` not 2 or 3, bad or inconsistent sizes; in ``forward``, an input of the wrong
            shape.

    Examples::

        net = SegFormer3D(3, 4, 3, embed_dims=(8, 16, 24, 32), num_heads=(1, 1, 2, 2), decoder_dim=16)
        logits = net(torch.randn(1, 4, 32, 32, 32))              # (1, 3, 32, 32, 32)
    """

    paper_config = {"spatial_dims": 3, "in_channels": 4, "out_channels": 3}
    paper_parameters = 4_510_000

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *,
                 embed_dims: Sequence[int] = (32, 64, 160, 256), depths: Sequence[int] = (2, 2, 2, 2),
                 num_heads: Sequence[int] = (1, 2, 5, 8), sr_ratios: Sequence[int] = (4, 2, 1, 1),
                 patch_kernel_sizes: Sequence[int] = (7, 3, 3, 3), patch_strides: Sequence[int] = (4, 2, 2, 2),
                 mlp_ratio: int = 4, decoder_dim: int = 256, decoder_dropout: float = 0.0) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        widths = check_positive_ints("embed_dims", embed_dims)
        n = len(widths)
        depths, num_heads, sr_ratios, kernels, strides = (
            check_positive_ints(name, value, n) for name, value in (
                ("depths", depths), ("num_heads", num_heads), ("sr_ratios", sr_ratios),
                ("patch_kernel_sizes", patch_kernel_sizes), ("patch_strides", patch_strides)))
        mlp_ratio, decoder_dim = check_positive_ints("mlp_ratio, decoder_dim", (mlp_ratio, decoder_dim))
        if not 0.0 <= decoder_dropout < 1.0:
            raise ValueError(f"decoder_dropout must be in [0, 1), got {decoder_dropout!r}")
        conv = self.conv_op
        self.patch_merging = nn.ModuleList(
            OverlapPatchMerging(conv, c_in, c_out, k, s)
            for c_in, c_out, k, s in zip([in_channels, *widths[:-1]], widths, kernels, strides))
        self.stages = nn.ModuleList(
            nn.ModuleList(MixTransformerBlock(c, h, r, mlp_ratio, conv) for _ in range(d))
            for c, h, r, d in zip(widths, num_heads, sr_ratios, depths))
        self.stage_norms = nn.ModuleList(nn.LayerNorm(c) for c in widths)
        self.decoder = AllMLPDecoder(conv, widths, decoder_dim, out_channels, decoder_dropout)
        self.divisor = self._divisor(strides, sr_ratios)
        self.apply(self._init_linear)

    @staticmethod
    def _divisor(strides: Sequence[int], sr_ratios: Sequence[int]) -> int:
        cumulative = [math.prod(strides[:i + 1]) for i in range(len(strides))]
        return math.lcm(cumulative[-1], *(c * r for c, r in zip(cumulative, sr_ratios)))

    @staticmethod
    def _init_linear(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    @classmethod
    def patch_divisor(cls, **kwargs: Any) -> int:
        """The lcm of the total stride and of each stage's cumulative stride times its ``sr_ratio`` (32)."""
        merged = {**cls.default_kwargs(), **kwargs}
        return cls._divisor(tuple(merged["patch_strides"]), tuple(merged["sr_ratios"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x, self.divisor)
        maps = []
        h = x
        for merge, blocks, norm in zip(self.patch_merging, self.stages, self.stage_norms):
            tokens, spatial = merge(h)  # (B, S_i, C_i)
            for block in blocks:
                tokens = block(tokens, spatial)
            h = _to_map(norm(tokens), spatial)  # (B, C_i, *S_i)
            maps.append(h)
        logits = self.decoder(maps)  # (B, K, *S_0)
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        return F.interpolate(logits, size=x.shape[2:], mode=mode, align_corners=False)
