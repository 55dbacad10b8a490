"""U-Mamba (Ma et al. 2024, arXiv 2401.04722) and the Mamba layer that the Mamba baselines share.

- :class:`UMambaUNet`: a residual U-Net (dynamic-network-architectures' ``ResidualEncoder`` and ``UNetResDecoder``)
  whose chosen encoder stages end in a :class:`MambaLayer` (LayerNorm, then Mamba with d_state 16, d_conv 4,
  expand 2, on the flattened feature map, in float32). ``bot``: the bottleneck only; ``enc``: every encoder stage.
- :class:`MambaLayer`: also the scan of :class:`~xlstm_unet.baselines.segmamba.SegMamba`'s tri-orientated Mamba.

Dims legend: ``B`` batch, ``C`` channels, ``*spatial`` = ``(H, W)`` (2D) or ``(D, H, W)`` (3D), ``S = prod(spatial)``;
Mamba: ``L`` sequence length, ``D`` model dim, ``ED = expand * D``, ``N = d_state``.

Mamba backends (:class:`MambaBackend`): ``mamba_ssm`` (the official CUDA kernels; used when CUDA and the package are
available) and ``mambapy`` (pure PyTorch, runs on CPU). Both modules use the same parameter names
(:data:`MAMBA_PARAMETER_NAMES`: ``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``) and
shapes, so a state dict saved with one backend loads into the other (:func:`convert_mamba_state_dict` checks it).
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import numpy as np
import torch
from torch import nn

from xlstm_unet.networks import ResidualMixerStage, ResidualMixerUNet

__all__ = [
    "MambaBackend",
    "MAMBA_PARAMETER_NAMES",
    "mamba_parameter_shapes",
    "mamba_ssm_available",
    "resolve_mamba_backend",
    "convert_mamba_state_dict",
    "MambaLayer",
    "MambaPlacement",
    "mamba_stage_indices",
    "ResidualMambaStage",
    "UMambaUNet",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------- Mamba

class MambaBackend(str, Enum):
    """Which Mamba implementation a :class:`MambaLayer` uses."""

    AUTO = "auto"
    """``mamba_ssm`` when CUDA and the package are available, else ``mambapy``."""
    MAMBA_SSM = "mamba_ssm"
    """The official package (CUDA kernels; ``mamba_ssm.Mamba``)."""
    MAMBAPY = "mambapy"
    """Pure PyTorch (``mambapy.mamba.MambaBlock``, parallel scan); runs on CPU."""


#: Parameter names of one Mamba mixer, identical in ``mamba_ssm.Mamba`` and ``mambapy.mamba.MambaBlock`` (with
#: ``bias=False``, ``conv_bias=True``, the defaults of both).
MAMBA_PARAMETER_NAMES: tuple[str, ...] = (
    "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log",
    "D", "out_proj.weight",
)

# Key mapping between the two backends: the same names (mamba.py follows mamba_ssm's mamba_simple.py).
_MAMBAPY_TO_MAMBA_SSM: dict[str, str] = {name: name for name in MAMBA_PARAMETER_NAMES}


def mamba_parameter_shapes(d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2) -> dict[str, tuple]:
    """Shapes of the parameters of one Mamba mixer (``dt_rank = ceil(d_model / 16)``, ``ED = expand * d_model``)."""
    d_inner = expand * d_model
    dt_rank = math.ceil(d_model / 16)
    return {
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }


def mamba_ssm_available() -> bool:
    """True when CUDA is available and ``mamba_ssm`` is installed."""
    return torch.cuda.is_available() and importlib.util.find_spec("mamba_ssm") is not None


def resolve_mamba_backend(backend: MambaBackend | str = MambaBackend.AUTO) -> MambaBackend:
    """``auto`` -> ``mamba_ssm`` if :func:`mamba_ssm_available` else ``mambapy``; explicit choices are checked.

    Raises:
        ValueError: unknown name, or ``mamba_ssm`` requested without CUDA or without the package.
    """
    try:
        choice = MambaBackend(backend)
    except ValueError:
        raise ValueError(f"unknown Mamba backend {backend!r}; expected one of {[b.value for b in MambaBackend]}") \
            from None
    if choice is MambaBackend.AUTO:
        choice = MambaBackend.MAMBA_SSM if mamba_ssm_available() else MambaBackend.MAMBAPY
        log.debug("Mamba backend 'auto' -> %r", choice.value)
        return choice
    if choice is MambaBackend.MAMBA_SSM and not mamba_ssm_available():
        raise ValueError("Mamba backend 'mamba_ssm' needs CUDA and the mamba_ssm package "
                         f"(cuda available: {torch.cuda.is_available()}, "
                         f"mamba_ssm installed: {importlib.util.find_spec('mamba_ssm') is not None}); "
                         "use 'mambapy' or 'auto'")
    return choice


def convert_mamba_state_dict(state_dict: Mapping[str, torch.Tensor], *, to: MambaBackend | str,
                             prefix: str = "") -> dict[str, torch.Tensor]:
    """A new state dict with the Mamba mixer keys under ``prefix`` renamed for backend ``to``.

    The two backends share parameter names and shapes, so the mapping is the identity; this function documents
    that and checks it: every Mamba key (``prefix + name``, ``name`` in :data:`MAMBA_PARAMETER_NAMES`) must be
    present. Other keys are copied unchanged.

    Raises:
        ValueError: a Mamba parameter is missing under ``prefix``, or an unknown backend.
    """
    target = MambaBackend(to)
    if target is MambaBackend.AUTO:
        target = resolve_mamba_backend(target)
    missing = [prefix + n for n in MAMBA_PARAMETER_NAMES if prefix + n not in state_dict]
    if missing:
        raise ValueError(f"state dict has no Mamba parameters {missing} (prefix {prefix!r})")
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        if name in _MAMBAPY_TO_MAMBA_SSM:
            mapped = _MAMBAPY_TO_MAMBA_SSM[name] if target is MambaBackend.MAMBA_SSM else name
            out[prefix + mapped] = value
        else:
            out[key] = value
    return out


def _build_mamba(d_model: int, d_state: int, d_conv: int, expand: int, backend: MambaBackend) -> nn.Module:
    if backend is MambaBackend.MAMBA_SSM:
        from mamba_ssm import Mamba

        return Mamba(d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand)
    from mambapy.mamba import MambaBlock, MambaConfig

    return MambaBlock(MambaConfig(d_model=d_model, n_layers=1, d_state=d_state, d_conv=d_conv, expand_factor=expand))


class MambaLayer(nn.Module):
    """U-Mamba's layer: flatten a feature map to tokens, LayerNorm, Mamba, reshape back (no residual).

    ``(B, C, *spatial) -> (B, C, *spatial)``. Spatial tokens (default): ``L = S`` tokens of dimension ``C``, in
    row-major (C-order) raster order of ``*spatial``. Channel tokens (``channel_tokens=True``, U-Mamba Enc at stages
    whose voxel count is at most C): ``L = C`` tokens of dimension ``S``; then ``dim`` must be ``S``.

    Runs in float32 with autocast off (U-Mamba trains Mamba without AMP); float64 inputs stay float64. The output
    has the input's dtype.

    Args:
        dim: the token dimension ``D`` (``C``, or ``S`` with channel tokens).
        d_state, d_conv, expand: Mamba's state size ``N``, causal conv width and expansion (16, 4, 2: U-Mamba's).
        channel_tokens: use channels as tokens (see above).
        backend: :class:`MambaBackend`; ``auto`` picks ``mamba_ssm`` on a CUDA machine that has it.

    Raises:
        ValueError: bad sizes, unknown backend; in ``forward``, an input whose token dimension is not ``dim``.
    """

    def __init__(self, dim: int, *, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 channel_tokens: bool = False, backend: MambaBackend | str = MambaBackend.AUTO) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.dim = int(dim)
        self.channel_tokens = bool(channel_tokens)
        self.backend = resolve_mamba_backend(backend)
        self.norm = nn.LayerNorm(self.dim)
        self.mamba = _build_mamba(self.dim, int(d_state), int(d_conv), int(expand), self.backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3:
            raise ValueError(f"expected (B, C, *spatial), got shape {tuple(x.shape)}")
        b, c, spatial = x.shape[0], x.shape[1], x.shape[2:]
        token_dim = math.prod(spatial) if self.channel_tokens else c
        if token_dim != self.dim:
            kind = "voxel count S" if self.channel_tokens else "channels C"
            raise ValueError(f"MambaLayer(dim={self.dim}, channel_tokens={self.channel_tokens}) got {kind} = "
                             f"{token_dim} (input shape {tuple(x.shape)})")
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = x.to(torch.promote_types(x.dtype, torch.float32)).flatten(2)  # (B, C, S)
            if not self.channel_tokens:
                h = h.transpose(1, 2)  # (B, S, C)
            h = self.mamba(self.norm(h))  # (B, L, D)
            if not self.channel_tokens:
                h = h.transpose(1, 2)  # (B, C, S)
            out = h.reshape(b, c, *spatial)  # (B, C, *spatial)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, channel_tokens={self.channel_tokens}, backend={self.backend.value}"


class MambaPlacement(str, Enum):
    """Where :class:`UMambaUNet` puts its Mamba layers."""

    BOT = "bot"
    """The bottleneck only (U-Mamba Bot)."""
    ENC = "enc"
    """Every encoder stage (U-Mamba Enc)."""


def _as_mamba_placement(placement: MambaPlacement | str) -> MambaPlacement:
    try:
        return MambaPlacement(placement)
    except ValueError:
        raise ValueError(f"unknown mamba_placement {placement!r}; expected one of "
                         f"{[p.value for p in MambaPlacement]}") from None


def mamba_stage_indices(placement: MambaPlacement | str, n_stages: int) -> list[int]:
    """Encoder stages with a Mamba layer: ``bot`` -> ``[n_stages - 1]``, ``enc`` -> ``[0, ..., n_stages - 1]``."""
    preset = _as_mamba_placement(placement)
    return [n_stages - 1] if preset is MambaPlacement.BOT else list(range(n_stages))


class ResidualMambaStage(ResidualMixerStage):
    """One encoder stage: residual conv blocks, then a :class:`MambaLayer` (``.mamba``)."""

    mixer_name = "mamba"


class UMambaUNet(ResidualMixerUNet):
    """U-Mamba (Bot or Enc) for 2D or 3D (``conv_op`` decides), buildable from nnU-Net v2 plans.

    A :class:`~xlstm_unet.networks.ResidualMixerUNet` (residual encoder and ``UNetResDecoder`` of
    dynamic-network-architectures) whose chosen encoder stages end in a :class:`MambaLayer` (stages
    :class:`ResidualMambaStage`, state-dict keys ``encoder.stages.<s>.mamba...``); ``forward`` and the shared
    arguments (the keys of nnU-Net's plans) are documented there.

    U-Mamba Enc as in U-Mamba: the encoder stages from ``ceil(n_stages / 2)`` on and the decoder stages from
    ``ceil((n_stages - 1) / 2 + 0.5)`` on (counted from the bottleneck side) have one block each; a stage whose
    voxel count (from ``patch_size``) is at most its channel count uses channel tokens. Bot keeps the plans' block
    counts and spatial tokens. These rules were checked against U-Mamba's ``UMambaEnc_3d.py`` (bowang-lab/U-Mamba).
    Its conv parts differ from this class on purpose: U-Mamba upsamples by nearest interpolation plus a 1x1 conv, and
    its stem and the first block of each stage skip through a strided 1x1 conv. Here they are
    dynamic-network-architectures' blocks (transposed conv; ``BasicBlockD``, whose strided skip is average pooling
    plus a 1x1 conv), the same as in :class:`~xlstm_unet.networks.XLSTMUNet`, so that a comparison of the two
    isolates the token mixer.

    Args:
        mamba_placement: ``"bot"`` (default) or ``"enc"``.
        patch_size: the training patch (needed by ``enc`` for the channel-token rule; without it, spatial tokens).
        mamba_kwargs: extra :class:`MambaLayer` kwargs (``d_state``, ``d_conv``, ``expand``, ``backend``); not
            ``dim`` or ``channel_tokens``, which come from the stage.
        The others: see :class:`~xlstm_unet.networks.ResidualMixerUNet`.

    Raises:
        ValueError: as :class:`~xlstm_unet.networks.ResidualMixerUNet`, plus an unknown placement or reserved keys
            in ``mamba_kwargs``.

    Examples::

        net = UMambaUNet(input_channels=1, n_stages=4, features_per_stage=[8, 16, 32, 64], conv_op=nn.Conv2d,
                         kernel_sizes=3, strides=[1, 2, 2, 2], num_classes=3, n_conv_per_stage=2,
                         n_conv_per_stage_decoder=1, norm_op=nn.InstanceNorm2d, nonlin=nn.LeakyReLU,
                         mamba_placement="enc", patch_size=(32, 32))
        logits = net(torch.randn(2, 1, 32, 32))               # (2, 3, 32, 32)
    """

    stage_class = ResidualMambaStage
    reserved_mixer_kwargs = frozenset({"dim", "channel_tokens"})

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: int | Sequence[int],
        conv_op: type[nn.Module],
        kernel_sizes: int | Sequence[int | Sequence[int]],
        strides: int | Sequence[int | Sequence[int]],
        *,
        num_classes: int,
        n_conv_per_stage: int | Sequence[int] | None = None,
        n_blocks_per_stage: int | Sequence[int] | None = None,
        n_conv_per_stage_decoder: int | Sequence[int],
        conv_bias: bool = False,
        norm_op: type[nn.Module] | None = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: type[nn.Module] | None = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: dict | None = None,
        deep_supervision: bool = False,
        mamba_placement: MambaPlacement | str = MambaPlacement.BOT,
        patch_size: Sequence[int] | None = None,
        mamba_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides, num_classes=num_classes,
            n_conv_per_stage=n_conv_per_stage, n_blocks_per_stage=n_blocks_per_stage,
            n_conv_per_stage_decoder=n_conv_per_stage_decoder, conv_bias=conv_bias, norm_op=norm_op,
            norm_op_kwargs=norm_op_kwargs, dropout_op=dropout_op, dropout_op_kwargs=dropout_op_kwargs, nonlin=nonlin,
            nonlin_kwargs=nonlin_kwargs, deep_supervision=deep_supervision, patch_size=patch_size,
            mixer_placement=_as_mamba_placement(mamba_placement), mixer_kwargs=mamba_kwargs,
        )

    @property
    def mamba_placement(self) -> MambaPlacement:
        """Where the Mamba layers are: ``bot`` or ``enc``."""
        return self.mixer_placement

    @property
    def mamba_stages(self) -> tuple[int, ...]:
        """Encoder stage indices that end in a Mamba layer."""
        return self.mixer_stages

    def _mixer_stage_indices(self, n_stages: int, dim: int) -> list[int]:
        return mamba_stage_indices(self.mixer_placement, n_stages)

    def _stage_block_counts(self, encoder_blocks: list[int], decoder_blocks: list[int]) -> tuple[list[int], list[int]]:
        """U-Mamba Enc: one block per encoder stage from ``ceil(n_stages / 2)`` on and per decoder stage from
        ``ceil((n_stages - 1) / 2 + 0.5)`` on; Bot: the plans' counts."""
        if self.mixer_placement is MambaPlacement.ENC:
            n_stages = len(encoder_blocks)
            for s in range(math.ceil(n_stages / 2), n_stages):
                encoder_blocks[s] = 1
            for s in range(math.ceil((n_stages - 1) / 2 + 0.5), n_stages - 1):
                decoder_blocks[s] = 1
        return encoder_blocks, decoder_blocks

    def _make_mixer(
        self, stage: int, channels: int, feature_size: tuple[int, ...] | None, spatial_dims: int
    ) -> MambaLayer:
        """Channel tokens (``dim = S``) for Enc where the stage's voxel count ``S`` is at most ``C``, else spatial
        tokens (``dim = C``)."""
        voxels = None if feature_size is None else math.prod(feature_size)
        channel_tokens = self.mixer_placement is MambaPlacement.ENC and voxels is not None and voxels <= channels
        return MambaLayer(voxels if channel_tokens else channels, channel_tokens=channel_tokens, **self.mixer_kwargs)
