"""xLSTM-UNet: a residual U-Net whose encoder stages end in ViL (Vision-LSTM) modules, for 2D and 3D.

Chen et al., "xLSTM-UNet can be an Effective 2D & 3D Medical Image Segmentation Backbone with Vision-LSTM (ViL)
better than its Mamba Counterpart", arXiv 2407.01530, section 2.

One dimension-generic class, :class:`XLSTMUNet`: ``conv_op`` (``nn.Conv2d`` or ``nn.Conv3d``) decides 2D or 3D, as
in dynamic-network-architectures, whose building blocks it reuses. It is a preset of :class:`ResidualMixerUNet`, the
residual U-Net with token mixers that U-Mamba (:class:`xlstm_unet.baselines.UMambaUNet`) shares:

- encoder (``ResidualEncoder``): a conv stem, then per stage ``n_conv_per_stage[s]`` residual blocks (``BasicBlockD``:
  conv, norm, nonlin; the first block carries the stage's stride) followed, at the stages chosen by
  ``vil_placement``, by a :class:`xlstm_unet.vil.ViLStage` (flatten to tokens, LayerNorm, ViL, reshape back; the stage
  is a :class:`ResidualViLStage`);
- decoder (``UNetResDecoder``): transposed-conv upsampling, concatenation with the encoder skip at EVERY resolution
  (the official 2D code drops the full-resolution skip; this one does not), residual blocks, and a 1x1 segmentation
  head per resolution for deep supervision.

Dims legend: ``B`` batch, ``C`` channels, ``*spatial`` = ``(H, W)`` in 2D or ``(D, H, W)`` in 3D, ``K`` classes,
``s`` encoder stage index (0 = full resolution, ``n_stages - 1`` = bottleneck).

ViL placement presets (:class:`VilPlacement`, :func:`vil_stage_indices`):

- ``bot``: the bottleneck only (the paper's "Bot");
- ``enc``: every encoder stage (the paper's "Enc"; feasible because the ViL uses the linear-time chunkwise mLSTM);
- ``enc_official``: the official code's Enc placement (3D: stages ``s >= 3``; 2D: stages with
  ``bool(s % 2) ^ bool(n_stages % 2)`` and ``s > 1``), for ablation and reproduction. Only the placement is
  reproduced: the official code also inserts an extra residual block at some stages without ViL, which here is a
  matter of ``n_conv_per_stage``;
- an explicit sequence of stage indices.

nnU-Net v2 (2.8) builds the network from a plans file (``"network_class_name": "xlstm_unet.networks.XLSTMUNet"``)
with ``nnunetv2.utilities.get_network_from_plans.get_network_from_plans``; the keyword names are those of
dynamic-network-architectures' ``PlainConvUNet``/``ResidualEncoderUNet`` plus ``vil_placement``, ``vil_kwargs`` and
``patch_size``. nnU-Net does not pass the patch size to the network, so put it into ``arch_kwargs`` when the ViL
stages need their feature-map sizes (channel-token mode).
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any, ClassVar

import numpy as np
import torch
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from dynamic_network_architectures.building_blocks.residual import BasicBlockD, StackedResidualBlocks
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.unet_residual_decoder import UNetResDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He, init_last_bn_before_add_to_0
from torch import nn

from xlstm_unet.vil import ViLStage

__all__ = [
    "VilPlacement",
    "vil_stage_indices",
    "ResidualMixerStage",
    "ResidualViLStage",
    "ResidualMixerUNet",
    "XLSTMUNet",
]

IntOrSeq = int | Sequence[int]
"""A scalar (same value for every stage / every axis) or one entry per stage / per axis."""


class VilPlacement(str, Enum):
    """Named ViL placements; see :func:`vil_stage_indices`."""

    BOT = "bot"
    """Bottleneck only (the paper's Bot variant)."""
    ENC = "enc"
    """Every encoder stage (the paper's Enc variant, as described in its section 2)."""
    ENC_OFFICIAL = "enc_official"
    """The official code's Enc placement: 3D stages >= 3; 2D alternate stages above stage 1."""


def vil_stage_indices(placement: str | VilPlacement | Sequence[int], n_stages: int, dim: int) -> list[int]:
    """Encoder stage indices that carry a ViL module, sorted ascending.

    Args:
        placement: a :class:`VilPlacement` (or its string value: ``"bot"``, ``"enc"``, ``"enc_official"``), or an
            explicit sequence of stage indices in ``[0, n_stages)`` without duplicates (may be empty: no ViL at all,
            which warns, since that is a plain residual U-Net).
        n_stages: number of encoder stages (resolutions), at least 1.
        dim: spatial dimensionality, 2 or 3 (``enc_official`` differs between them).

    Returns:
        The stage indices, e.g. ``vil_stage_indices("enc_official", 7, 2) == [2, 4, 6]`` and
        ``vil_stage_indices("enc_official", 5, 3) == [3, 4]``.

    Raises:
        ValueError: unknown preset name, indices out of range, duplicates, non-integers, bad ``n_stages``/``dim``.
    """
    if isinstance(n_stages, bool) or not isinstance(n_stages, int) or n_stages < 1:
        raise ValueError(f"n_stages must be an int >= 1, got {n_stages!r}")
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    if isinstance(placement, str):
        try:
            preset = VilPlacement(placement)
        except ValueError:
            raise ValueError(
                f"unknown vil_placement {placement!r}; expected one of {[p.value for p in VilPlacement]} "
                "or a sequence of stage indices"
            ) from None
        if preset is VilPlacement.BOT:
            indices = [n_stages - 1]
        elif preset is VilPlacement.ENC:
            indices = list(range(n_stages))
        elif dim == 3:
            indices = [s for s in range(n_stages) if s >= 3]
        else:
            indices = [s for s in range(n_stages) if (bool(s % 2) ^ bool(n_stages % 2)) and s > 1]
        if not indices:
            warnings.warn(
                f"vil_placement {preset.value!r} puts no ViL module into a {dim}D network with {n_stages} stages; "
                "the network is a plain residual U-Net",
                stacklevel=2,
            )
        return indices
    if not isinstance(placement, Sequence):
        raise ValueError(
            f"vil_placement must be a preset name or a sequence of stage indices, got {type(placement).__name__}"
        )
    indices = []
    for entry in placement:
        if isinstance(entry, bool):
            raise ValueError(f"vil_placement entries must be stage indices (int), got {entry!r}")
        try:
            index = operator.index(entry)
        except TypeError:
            raise ValueError(f"vil_placement entries must be stage indices (int), got {entry!r}") from None
        if not 0 <= index < n_stages:
            raise ValueError(f"vil_placement index {index} out of range: expected 0 <= index < n_stages={n_stages}")
        indices.append(index)
    if len(set(indices)) != len(indices):
        raise ValueError(f"vil_placement has duplicate stage indices: {list(placement)}")
    if not indices:
        warnings.warn("vil_placement is empty: the network is a plain residual U-Net", stacklevel=2)
    return sorted(indices)


class ResidualMixerStage(nn.Module):
    """One encoder stage with a token mixer: residual conv blocks, then a sequence model over the blocks' output.

    ``(B, C_in, *spatial) -> blocks -> (B, C, *spatial / stride) -> mixer -> (B, C, *spatial / stride)``.

    Subclasses name the mixer attribute (``mixer_name``), so state-dict keys say what it is: ``vil`` here,
    ``mamba`` for U-Mamba (:mod:`xlstm_unet.baselines`).

    Args:
        blocks: the stage's residual blocks (the first one carries the stage stride).
        mixer: a shape-preserving module over the blocks' output, with ``channels == blocks.output_channels``.
    """

    mixer_name: str = "mixer"

    def __init__(self, blocks: StackedResidualBlocks, mixer: nn.Module) -> None:
        super().__init__()
        self.blocks = blocks
        self.add_module(self.mixer_name, mixer)

    @property
    def mixer(self) -> nn.Module:
        """The mixer module (registered as ``self.<mixer_name>``)."""
        return getattr(self, self.mixer_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(self.blocks(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Voxel count of the stored feature maps, for nnU-Net's VRAM estimate.

        The mixer is counted as its output map only, so this is a lower bound for its share (a ViL's
        up-projection and mLSTM states are not counted).
        """
        output_size = [i // j for i, j in zip(input_size, self.blocks.initial_stride)]
        return self.blocks.compute_conv_feature_map_size(input_size) + np.prod(
            [self.blocks.output_channels, *output_size], dtype=np.int64
        )


class ResidualViLStage(ResidualMixerStage):
    """One encoder stage with ViL: residual conv blocks, then a :class:`~xlstm_unet.vil.ViLStage` (``.vil``)."""

    mixer_name = "vil"


def _expand(name: str, value: Any, n: int, per: str) -> list:
    """Expand a scalar to ``n`` entries or check that a sequence has ``n`` entries (one ``per`` stage / axis);
    returns a new list."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return [int(value)] * n
    if not isinstance(value, (Sequence, np.ndarray)) or isinstance(value, str):
        raise ValueError(f"{name} must be an int or a sequence of {n} entries (one per {per}), got {value!r}")
    if len(value) != n:
        raise ValueError(f"{name} must have {n} entries (one per {per}), got {len(value)}: {list(value)}")
    return list(value)


def _per_stage(name: str, value: Any, n_stages: int) -> list:
    return _expand(name, value, n_stages, "stage")


def _per_axis(name: str, value: Any, dim: int) -> list[int]:
    """Expand a scalar to ``dim`` axes or check a per-axis sequence; returns a new list of positive ints."""
    return _positive_ints(name, _expand(name, value, dim, "spatial axis"))


def _positive_ints(name: str, values: list) -> list[int]:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must hold positive ints, got {values}")
    return [int(v) for v in values]


class ResidualMixerUNet(AbstractDynamicNetworkArchitectures):
    """Residual U-Net for 2D or 3D (``conv_op`` decides) whose chosen encoder stages end in a token mixer.

    The shared base of :class:`XLSTMUNet` (ViL) and :class:`xlstm_unet.baselines.UMambaUNet` (Mamba). It checks and
    expands nnU-Net's architecture kwargs (the keys of dynamic-network-architectures' ``ResidualEncoderUNet``), builds
    the encoder (``ResidualEncoder`` with ``BasicBlockD``, skips returned: a conv stem, then per stage
    ``n_conv_per_stage[s]`` residual blocks, the first carrying the stage's stride), wraps the stages that
    :meth:`_mixer_stage_indices` chooses into a :attr:`stage_class` around the module of :meth:`_make_mixer`, and builds
    the ``UNetResDecoder`` (transposed conv, concatenation with the skip at every resolution, residual blocks, a 1x1
    head per resolution for deep supervision).

    A preset subclass sets :attr:`stage_class` (its ``mixer_name`` names the mixer in the state-dict keys, e.g.
    ``encoder.stages.3.vil...``), implements :meth:`_mixer_stage_indices` and :meth:`_make_mixer`, may override
    :meth:`_stage_block_counts`, and passes its own placement and mixer kwargs (named ``<mixer_name>_placement`` and
    ``<mixer_name>_kwargs`` in its signature) as ``mixer_placement`` and ``mixer_kwargs``.

    ``forward(x)``: ``x`` is ``(B, input_channels, *spatial)``, each spatial size divisible by the total stride
    ``prod(strides[s][axis] for s)``. Returns logits (no softmax):

    - ``decoder.deep_supervision`` False: one tensor ``(B, K, *spatial)``;
    - True: a list of ``n_stages - 1`` tensors, highest resolution first, entry ``i`` of shape
      ``(B, K, *spatial / prod(strides[:i + 1]))`` (nnU-Net's convention; its trainer toggles the attribute
      with ``set_deep_supervision_enabled``).

    Args:
        input_channels: image channels ``C_in``.
        n_stages: number of encoder resolutions (>= 2); the last is the bottleneck.
        features_per_stage: channels per stage (int or ``n_stages`` entries).
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``.
        kernel_sizes: conv kernel per stage (int, or ``n_stages`` entries each an int or ``dim`` ints).
        strides: downsampling per stage (same form; ``strides[0]`` is usually 1).
        num_classes: output channels ``K`` of the segmentation heads.
        n_conv_per_stage: residual blocks per encoder stage (int or ``n_stages`` entries).
        n_blocks_per_stage: alias of ``n_conv_per_stage`` (the ResEnc plans' name); give either, or both if equal.
        n_conv_per_stage_decoder: residual blocks per decoder stage (int or ``n_stages - 1`` entries, bottleneck
            side first, as in nnU-Net).
        conv_bias: bias in the convs. Default False.
        norm_op, norm_op_kwargs: normalisation after each conv, e.g. ``nn.InstanceNorm3d`` with
            ``{"eps": 1e-5, "affine": True}`` (nnU-Net's). Default ``None``: no normalisation.
        dropout_op, dropout_op_kwargs: dropout in the first conv of each block. Default ``None``: none.
        nonlin, nonlin_kwargs: activation, e.g. ``nn.LeakyReLU`` with ``{"inplace": True}``. Default ``None``: none.
        deep_supervision: initial value of ``decoder.deep_supervision``. Default False.
        patch_size: the training patch size (``dim`` ints, divisible by the total stride), or ``None``. When given,
            :meth:`_make_mixer` gets each stage's feature-map size (``patch_size / cumulative stride``).
        mixer_placement: the preset's placement, kept as :attr:`mixer_placement` for :meth:`_mixer_stage_indices`.
        mixer_kwargs: the preset's extra mixer kwargs, copied to :attr:`mixer_kwargs`; must not hold a key of
            :attr:`reserved_mixer_kwargs`.

    Attributes:
        mixer_stages: the encoder stage indices that end in a mixer, ascending.
        total_stride: the product of the strides per spatial axis.
        patch_size: ``patch_size`` as a tuple, or ``None``.

    Raises:
        ValueError: per-stage lists of the wrong length, a ``conv_op`` other than Conv2d/Conv3d, conflicting
            ``n_conv_per_stage``/``n_blocks_per_stage``, a patch size not divisible by the total stride, reserved
            keys in ``mixer_kwargs``, or what the preset's hooks reject (e.g. its placement).
    """

    stage_class: ClassVar[type[ResidualMixerStage]] = ResidualMixerStage
    """The wrapper of a stage with a mixer."""
    reserved_mixer_kwargs: ClassVar[frozenset[str]] = frozenset()
    """Mixer kwargs that :meth:`_make_mixer` derives from the stage, so ``mixer_kwargs`` must not set them."""

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: IntOrSeq,
        conv_op: type[nn.Module],
        kernel_sizes: int | Sequence[IntOrSeq],
        strides: int | Sequence[IntOrSeq],
        *,
        num_classes: int,
        n_conv_per_stage: IntOrSeq | None = None,
        n_blocks_per_stage: IntOrSeq | None = None,
        n_conv_per_stage_decoder: IntOrSeq,
        conv_bias: bool = False,
        norm_op: type[nn.Module] | None = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: type[nn.Module] | None = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: dict | None = None,
        deep_supervision: bool = False,
        patch_size: Sequence[int] | None = None,
        mixer_placement: Any = None,
        mixer_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(conv_op, type) or not issubclass(conv_op, (nn.Conv2d, nn.Conv3d)):
            raise ValueError(f"conv_op must be nn.Conv2d or nn.Conv3d (or a subclass), got {conv_op!r}")
        dim = convert_conv_op_to_dim(conv_op)
        if isinstance(n_stages, bool) or not isinstance(n_stages, int) or n_stages < 2:
            raise ValueError(f"n_stages must be an int >= 2 (a bottleneck and one skip resolution), got {n_stages!r}")
        for name, value in (("input_channels", input_channels), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

        if n_conv_per_stage is None and n_blocks_per_stage is None:
            raise ValueError("give n_conv_per_stage (or its alias n_blocks_per_stage), got neither")
        blocks_lists = [
            _positive_ints(name, _per_stage(name, value, n_stages))
            for name, value in (("n_conv_per_stage", n_conv_per_stage), ("n_blocks_per_stage", n_blocks_per_stage))
            if value is not None
        ]
        if len(blocks_lists) == 2 and blocks_lists[0] != blocks_lists[1]:
            raise ValueError(
                "n_conv_per_stage and its alias n_blocks_per_stage differ: "
                f"{blocks_lists[0]} vs {blocks_lists[1]}; give only one"
            )
        features = _positive_ints(
            "features_per_stage", _per_stage("features_per_stage", features_per_stage, n_stages)
        )
        kernels = [
            _per_axis(f"kernel_sizes[{s}]", k, dim)
            for s, k in enumerate(_per_stage("kernel_sizes", kernel_sizes, n_stages))
        ]
        stride_list = [
            _per_axis(f"strides[{s}]", k, dim) for s, k in enumerate(_per_stage("strides", strides, n_stages))
        ]
        decoder_blocks = _positive_ints(
            "n_conv_per_stage_decoder", _per_stage("n_conv_per_stage_decoder", n_conv_per_stage_decoder, n_stages - 1)
        )
        options = dict(mixer_kwargs or {})
        reserved = sorted(self.reserved_mixer_kwargs & options.keys())
        if reserved:
            raise ValueError(f"{self.stage_class.mixer_name}_kwargs must not set {reserved}: they come from each stage")

        self.input_channels = input_channels
        self.num_classes = num_classes
        self.total_stride: tuple[int, ...] = tuple(math.prod(s[a] for s in stride_list) for a in range(dim))
        self.patch_size: tuple[int, ...] | None = None
        feature_sizes: list[tuple[int, ...]] | None = None
        if patch_size is not None:
            patch = _per_axis("patch_size", patch_size, dim)
            if any(p % t for p, t in zip(patch, self.total_stride)):
                raise ValueError(f"patch_size {patch} must be divisible by the total stride {list(self.total_stride)}")
            self.patch_size = tuple(patch)
            feature_sizes, current = [], self.patch_size
            for stride in stride_list:
                current = tuple(c // st for c, st in zip(current, stride))
                feature_sizes.append(current)
        self.mixer_placement = mixer_placement
        self.mixer_kwargs: dict[str, Any] = options
        self.mixer_stages: tuple[int, ...] = tuple(self._mixer_stage_indices(n_stages, dim))
        encoder_blocks, decoder_blocks = self._stage_block_counts(blocks_lists[0], decoder_blocks)

        # dynamic-network-architectures bookkeeping (used by pretraining / fine-tuning tools)
        self.key_to_encoder = "encoder.stages"
        self.key_to_stem = "encoder.stem"
        self.keys_to_in_proj = ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0")

        self.encoder = ResidualEncoder(
            input_channels,
            n_stages,
            features,
            conv_op,
            kernels,
            stride_list,
            encoder_blocks,
            conv_bias,
            norm_op,
            dict(norm_op_kwargs or {}),
            dropout_op,
            dict(dropout_op_kwargs or {}),
            nonlin,
            dict(nonlin_kwargs or {}),
            block=BasicBlockD,
            return_skips=True,
        )
        for s in self.mixer_stages:
            feature_size = None if feature_sizes is None else feature_sizes[s]
            mixer = self._make_mixer(s, features[s], feature_size, dim)
            self.encoder.stages[s] = self.stage_class(self.encoder.stages[s], mixer)
        self.decoder = UNetResDecoder(self.encoder, num_classes, decoder_blocks, bool(deep_supervision))

    def _mixer_stage_indices(self, n_stages: int, dim: int) -> list[int]:
        """The encoder stages (ascending, in ``[0, n_stages)``) that get a mixer, from :attr:`mixer_placement`."""
        raise NotImplementedError(f"{type(self).__name__} must implement _mixer_stage_indices")

    def _stage_block_counts(self, encoder_blocks: list[int], decoder_blocks: list[int]) -> tuple[list[int], list[int]]:
        """Residual blocks per encoder stage and per decoder stage (bottleneck side first), from the checked plans'
        counts (the arguments are new lists; may be changed in place). Default: unchanged."""
        return encoder_blocks, decoder_blocks

    def _make_mixer(
        self, stage: int, channels: int, feature_size: tuple[int, ...] | None, spatial_dims: int
    ) -> nn.Module:
        """The mixer of encoder stage ``stage``: a shape-preserving module ``(B, C, *spatial) -> (B, C, *spatial)``
        with ``C = channels``; ``feature_size`` is the stage's spatial size when ``patch_size`` is known, else
        ``None``. Called once per mixer stage, ascending, after the residual encoder is built."""
        raise NotImplementedError(f"{type(self).__name__} must implement _make_mixer")

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``(B, C_in, *spatial)`` -> logits ``(B, K, *spatial)``, or a list of them under deep supervision."""
        dim = len(self.total_stride)
        if x.ndim != dim + 2 or x.shape[1] != self.input_channels:
            raise ValueError(f"expected input (B, {self.input_channels}, {dim} spatial dims), got {tuple(x.shape)}")
        if any(n % t for n, t in zip(x.shape[2:], self.total_stride)):
            raise ValueError(
                f"input spatial shape {tuple(x.shape[2:])} must be divisible by the total stride {self.total_stride}"
            )
        return self.decoder(self.encoder(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Voxel count of the stored feature maps for an input of spatial size ``input_size`` (nnU-Net's planner
        uses it to estimate memory). Mixer stages count their output map only (a lower bound)."""
        if len(input_size) != len(self.total_stride):
            raise ValueError(
                f"input_size must be the {len(self.total_stride)} spatial sizes (no batch/channel), got {input_size}"
            )
        return self.encoder.compute_conv_feature_map_size(input_size) + self.decoder.compute_conv_feature_map_size(
            input_size
        )

    def initialize(self, module: nn.Module) -> None:
        """nnU-Net's init hook (``network.apply(network.initialize)``): He init for convs and zero-init of the last
        norm in each residual block, as for ``ResidualEncoderUNet``. Modules inside a mixer are left alone: they keep
        the mixer's own init (ViL's ``reset_parameters()``, Mamba's dt bias and S4D-real ``A_log``)."""
        if any(module is m for mixer in self._mixers() for m in mixer.modules()):
            return
        InitWeights_He(1e-2)(module)
        init_last_bn_before_add_to_0(module)

    def _mixers(self) -> list[nn.Module]:
        return [stage.mixer for stage in self.encoder.stages if isinstance(stage, ResidualMixerStage)]

    def extra_repr(self) -> str:
        return f"{self.stage_class.mixer_name}_stages={list(self.mixer_stages)}, patch_size={self.patch_size}"


class XLSTMUNet(ResidualMixerUNet):
    """xLSTM-UNet for 2D or 3D segmentation (``conv_op`` decides), buildable from nnU-Net v2 plans.

    A :class:`ResidualMixerUNet` whose mixers are :class:`~xlstm_unet.vil.ViLStage` modules (state-dict keys
    ``encoder.stages.<s>.vil...``, stages :class:`ResidualViLStage`); ``forward`` and the shared arguments (the keys of
    nnU-Net's plans) are documented there.

    Args:
        vil_placement: ``"bot"``, ``"enc"`` (default; the paper), ``"enc_official"``, or stage indices
            (see :func:`vil_stage_indices`).
        vil_kwargs: extra keyword arguments for every :class:`~xlstm_unet.vil.ViLStage` (``directions``,
            ``backend``, ``num_heads``, ``expansion``, ``chunk_size``, ``channel_tokens``, ``fast_path``, ...); not
            ``channels``, ``feature_size`` or ``spatial_dims``, which come from the stage. Default ``None``:
            ViLStage's defaults.
        patch_size: the training patch size (``dim`` ints), or ``None``. When given, every ViL stage learns its
            feature-map size (``patch_size / cumulative stride``), which ViLStage's channel-token mode needs
            (tokens = channels where the voxel count is at most C, as in the official code); the network then
            only accepts inputs of that spatial size at those stages.
        The others: see :class:`ResidualMixerUNet`.

    Raises:
        ValueError: as :class:`ResidualMixerUNet`, plus a bad placement or reserved keys in ``vil_kwargs``.

    Examples::

        net = XLSTMUNet(input_channels=1, n_stages=4, features_per_stage=[8, 16, 32, 32], conv_op=nn.Conv2d,
                        kernel_sizes=3, strides=[1, 2, 2, 2], num_classes=3, n_conv_per_stage=2,
                        n_conv_per_stage_decoder=1, norm_op=nn.InstanceNorm2d, norm_op_kwargs={"affine": True},
                        nonlin=nn.LeakyReLU, vil_placement="enc", patch_size=(64, 64))
        logits = net(torch.randn(2, 1, 64, 64))                  # (2, 3, 64, 64)

        net3d = XLSTMUNet(input_channels=4, n_stages=5, features_per_stage=[8, 16, 32, 64, 64], conv_op=nn.Conv3d,
                          kernel_sizes=3, strides=[1, [1, 2, 2], 2, 2, 2], num_classes=4, n_conv_per_stage=1,
                          n_conv_per_stage_decoder=1, norm_op=nn.InstanceNorm3d, nonlin=nn.LeakyReLU,
                          deep_supervision=True, vil_placement="bot")
        outputs = net3d(torch.randn(1, 4, 16, 64, 64))          # [(1, 4, 16, 64, 64), (1, 4, 16, 32, 32), ...]
    """

    stage_class = ResidualViLStage
    reserved_mixer_kwargs = frozenset({"channels", "feature_size", "spatial_dims"})

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: IntOrSeq,
        conv_op: type[nn.Module],
        kernel_sizes: int | Sequence[IntOrSeq],
        strides: int | Sequence[IntOrSeq],
        *,
        num_classes: int,
        n_conv_per_stage: IntOrSeq | None = None,
        n_blocks_per_stage: IntOrSeq | None = None,
        n_conv_per_stage_decoder: IntOrSeq,
        conv_bias: bool = False,
        norm_op: type[nn.Module] | None = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: type[nn.Module] | None = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: dict | None = None,
        deep_supervision: bool = False,
        vil_placement: str | VilPlacement | Sequence[int] = VilPlacement.ENC,
        vil_kwargs: dict[str, Any] | None = None,
        patch_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides, num_classes=num_classes,
            n_conv_per_stage=n_conv_per_stage, n_blocks_per_stage=n_blocks_per_stage,
            n_conv_per_stage_decoder=n_conv_per_stage_decoder, conv_bias=conv_bias, norm_op=norm_op,
            norm_op_kwargs=norm_op_kwargs, dropout_op=dropout_op, dropout_op_kwargs=dropout_op_kwargs, nonlin=nonlin,
            nonlin_kwargs=nonlin_kwargs, deep_supervision=deep_supervision, patch_size=patch_size,
            mixer_placement=vil_placement, mixer_kwargs=vil_kwargs,
        )
        if patch_size is None and vil_placement == VilPlacement.ENC_OFFICIAL:
            warnings.warn(
                "vil_placement='enc_official' without patch_size: the official code uses channel tokens at the "
                "stages whose voxel count is at most C, which needs the patch size; all stages use spatial tokens",
                stacklevel=2,
            )

    @property
    def vil_stages(self) -> tuple[int, ...]:
        """Encoder stage indices that carry a ViL module."""
        return self.mixer_stages

    def _mixer_stage_indices(self, n_stages: int, dim: int) -> list[int]:
        return vil_stage_indices(self.mixer_placement, n_stages, dim)

    def _make_mixer(
        self, stage: int, channels: int, feature_size: tuple[int, ...] | None, spatial_dims: int
    ) -> ViLStage:
        return ViLStage(channels, feature_size=feature_size, spatial_dims=spatial_dims, **self.mixer_kwargs)
