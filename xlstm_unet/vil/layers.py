"""The ViL (Vision-LSTM) layer, its pre-norm residual block, and the stage that runs blocks over a feature map.

The layer follows Vision-LSTM (Alkin et al., arXiv 2406.04303; NX-AI/vision-lstm) as used by xLSTM-UNet (Chen et
al., arXiv 2407.01530; tianrun-chen/xLSTM-UNet-PyTorch). The building blocks (headwise projections, causal conv1d,
LayerNorm without bias, multi-head LayerNorm, initialisers) come from the ``xlstm`` package; the mLSTM is
:func:`xlstm_unet.vil.kernels.mlstm`, linear in the sequence length.

Two paths compute the same layer, chosen by ``fast_path`` (of :class:`ViLLayer`, :class:`ViLBlock`,
:class:`ViLStage`): ``False`` runs the reference path written here, the paper's steps as plain autograd ops;
``True`` (default) runs :mod:`xlstm_unet.vil.fast`, the same values to rounding with fewer passes over memory and
less memory kept for backward, and on CPU long sequences in pieces. Tests hold the two paths against each other
(``tests/test_vil_fast.py``): to change the layer, change the reference path, run it with ``fast_path=False``, and
bring the fast path along once the change is settled.

Dims legend:
    B: batch; C: channels of the feature map; ``*spatial``: its spatial sizes (2D ``H, W`` or 3D ``D, H, W``);
    N = prod(spatial): number of voxels; S: sequence length (N with patch tokens, C with channel tokens);
    D: token dimension (C with patch tokens, N with channel tokens); DI = expansion * D: inner dimension;
    NH: mLSTM heads; DH = DI / NH: head dimension.

Conventions:
    - Tokens are the voxels in row-major (C-order) flattening of ``*spatial``, i.e. rows from the top-left.
      ``reverse=True`` traverses from the bottom-right (flip the sequence, process, flip back).
    - The gates, the mLSTM and its norm compute in float32 (float64 if the input is float64) with autocast
      disabled, so fp16/bf16 mixed precision cannot overflow inside the exponential gating. The projections around
      them follow autocast.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn
from xlstm.components.conv import CausalConv1d, CausalConv1dConfig
from xlstm.components.init import bias_linspace_init_, small_init_init_, wang_init_
from xlstm.components.linear_headwise import LinearHeadwiseExpand, LinearHeadwiseExpandConfig
from xlstm.components.ln import LayerNorm, MultiHeadLayerNorm

from xlstm_unet.vil import fast
from xlstm_unet.vil.kernels import MLSTMBackend, MLSTMState, _compute_dtype, _enum, _maybe_checkpoint

__all__ = ["MLSTMCell", "ViLLayer", "ViLBlock", "ViLStage", "Direction"]


class Direction(str, Enum):
    """Traversal of a :class:`ViLStage`.

    - ``forward``: one block, rows from the top-left (the official xLSTM-UNet code);
    - ``bidirectional``: a pair of blocks, the second on the flipped sequence (Vision-LSTM's ``ViLBlockPair``; the
      ViL paper alternates the direction from block to block).
    """

    FORWARD = "forward"
    BIDIRECTIONAL = "bidirectional"


class MLSTMCell(nn.Module):
    """mLSTM cell: input/forget gates from ``concat(q, k, v)``, the mLSTM (:func:`~xlstm_unet.vil.mlstm`),
    multi-head LayerNorm.

    ``(q, k, v): 3 x (B, S, DI) -> (B, S, DI)``. Gates, kernel and norm run in float32 (float64 for float64 input)
    with autocast disabled.

    Args:
        dim: DI, the inner dimension; must be divisible by ``num_heads``.
        num_heads: NH.
        backend, chunk_size: passed to :func:`~xlstm_unet.vil.mlstm`.

    Initialisation (Vision-LSTM): gate weights zero, forget-gate bias linspace(3, 6) over heads, input-gate bias
    normal(0, 0.1), norm weight 1 (stored as a residual 0).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        backend: str | MLSTMBackend = MLSTMBackend.AUTO,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.backend = _enum(MLSTMBackend, backend, "backend")
        self.chunk_size = chunk_size
        self.igate = nn.Linear(3 * dim, num_heads)
        self.fgate = nn.Linear(3 * dim, num_heads)
        self.outnorm = MultiHeadLayerNorm(ndim=dim, weight=True, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Vision-LSTM's init of the gates and the output norm."""
        self.outnorm.reset_parameters()
        nn.init.zeros_(self.fgate.weight)
        bias_linspace_init_(self.fgate.bias, start=3.0, end=6.0)
        nn.init.zeros_(self.igate.weight)
        nn.init.normal_(self.igate.bias, mean=0.0, std=0.1)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        state: MLSTMState | None = None,
        return_state: bool = False,
        gates: torch.Tensor | None = None,
        normalize: bool = True,
    ) -> torch.Tensor | tuple[torch.Tensor, MLSTMState]:
        """``q, k, v``: ``(B, S, DI)`` -> ``(B, S, DI)`` in float32 (float64 for float64 input).

        ``state``, ``return_state``: the mLSTM state before / after the sequence, as in
        :func:`~xlstm_unet.vil.mlstm`; with ``return_state`` the result is ``(h, state)``. ``gates``: the gate
        pre-activations ``(B, S, 2 NH)`` (input gates first, bias included) when the caller computed them (the fast
        path folds them into its projections); ``None``: ``igate`` and ``fgate`` on ``concat(q, k, v)``.
        ``normalize=False``: ``h`` before the output norm, ``(B, NH, S, DH)``.
        """
        from xlstm_unet import vil  # looked up at call time: benchmarks/train_step.py swaps vil.mlstm for a stand-in

        B, S, _ = q.shape
        dtype = _compute_dtype(q)
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k, v = (t.to(dtype) for t in (q, k, v))
            if gates is None:
                qkv = torch.cat([q, k, v], dim=-1)  # (B, S, 3 DI)
                gates = torch.cat([self.igate(qkv), self.fgate(qkv)], dim=-1)  # (B, S, 2 NH)
            i, f = gates.to(dtype).transpose(1, 2).split(self.num_heads, dim=1)  # 2 x (B, NH, S)
            # (B, S, DI) -> (B, S, NH, DH) -> (B, NH, S, DH)
            q, k, v = (t.view(B, S, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
            h = vil.mlstm(  # (B, NH, S, DH)[, state]
                q, k, v, i, f, backend=self.backend, chunk_size=self.chunk_size, state=state, return_state=return_state
            )
            if return_state:
                h, state = h
            if normalize:
                h = self.outnorm(h).transpose(1, 2).reshape(B, S, self.dim)  # (B, NH, S, DH) -> (B, S, DI)
        return (h, state) if return_state else h

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, backend={self.backend.value}, chunk_size={self.chunk_size}"


class ViLLayer(nn.Module):
    """The ViL layer (Vision-LSTM's mLSTM layer): ``(B, S, D) -> (B, S, D)``.

    1. ``proj_up`` to ``2 * DI`` and split into the mLSTM branch ``x`` and the gate branch ``z``;
    2. causal depthwise conv1d (kernel 4) along the sequence on ``x``, then SiLU;
    3. ``q``, ``k`` from the conv output, ``v`` from ``x``, each a headwise linear in blocks of ``qkv_block_size``;
    4. :class:`MLSTMCell` (gates from ``concat(q, k, v)``, mLSTM, multi-head LayerNorm);
    5. plus ``learnable_skip * conv output``; 6. times ``SiLU(z)``; 7. ``proj_down`` to D.

    The sequence is processed in the order given (no flip here; see :class:`ViLBlock`).

    Args:
        dim: D, the token dimension.
        expansion: DI = expansion * D (default 2).
        num_heads: mLSTM heads (default 4, as the official code). If DI is not divisible by it, the largest common
            divisor is used, with a warning (the official code falls back to 2 heads in that case).
        qkv_block_size: block size of the headwise q/k/v projections (default 4). If DI is not divisible by it,
            the largest common divisor is used, with a warning (the official code falls back to 2).
        backend, chunk_size: passed to :func:`~xlstm_unet.vil.mlstm`.
        fast_path: ``True`` (default): :mod:`xlstm_unet.vil.fast`; ``False``: the reference path (:meth:`forward`).
            Same parameters and the same values to rounding.

    Initialisation (Vision-LSTM): ``proj_up`` and q/k/v small-init with ``dim=D``, ``proj_down`` Wang-init with
    one block, learnable skip ones, conv PyTorch default, cell see :class:`MLSTMCell`. No biases on the linear
    projections; the conv has a bias.
    """

    def __init__(
        self,
        dim: int,
        *,
        expansion: int = 2,
        num_heads: int = 4,
        qkv_block_size: int = 4,
        backend: str | MLSTMBackend = MLSTMBackend.AUTO,
        chunk_size: int | None = None,
        fast_path: bool = True,
    ) -> None:
        super().__init__()
        if dim < 1 or expansion < 1:
            raise ValueError(f"dim and expansion must be positive, got dim={dim}, expansion={expansion}")
        if not isinstance(fast_path, bool):
            raise ValueError(f"fast_path must be True or False, got {fast_path!r}")
        inner = expansion * dim
        num_heads = _divisor_or_warn(inner, num_heads, "num_heads")
        qkv_block_size = _divisor_or_warn(inner, qkv_block_size, "qkv_block_size")
        self.dim = dim
        self.inner_dim = inner
        self.fast_path = fast_path

        self.proj_up = nn.Linear(dim, 2 * inner, bias=False)
        qkv_config = LinearHeadwiseExpandConfig(in_features=inner, num_heads=inner // qkv_block_size, bias=False)
        self.q_proj = LinearHeadwiseExpand(qkv_config)
        self.k_proj = LinearHeadwiseExpand(qkv_config)
        self.v_proj = LinearHeadwiseExpand(qkv_config)
        self.conv = CausalConv1d(CausalConv1dConfig(feature_dim=inner, kernel_size=4, causal_conv_bias=True))
        self.mlstm_cell = MLSTMCell(inner, num_heads, backend=backend, chunk_size=chunk_size)
        self.learnable_skip = nn.Parameter(torch.ones(inner))
        self.proj_down = nn.Linear(inner, dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Vision-LSTM's init (see the class docstring)."""
        small_init_init_(self.proj_up.weight, dim=self.dim)
        wang_init_(self.proj_down.weight, dim=self.dim, num_blocks=1)
        nn.init.ones_(self.learnable_skip)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            small_init_init_(proj.weight, dim=self.dim)
        self.conv.reset_parameters()
        self.mlstm_cell.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, S, D)`` -> ``(B, S, D)``; the steps of the class docstring (with ``fast_path``: the same
        values by :func:`xlstm_unet.vil.fast.layer_forward`)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected (B, S, D={self.dim}), got {tuple(x.shape)}")
        if self.fast_path:
            return fast.layer_forward(self, x)[0]
        x_mlstm, z = self.proj_up(x).chunk(2, dim=-1)  # 1. up-projection, split: 2 x (B, S, DI)
        x_conv = F.silu(self.conv(x_mlstm))  # 2. causal conv along the sequence, SiLU
        q, k, v = self.q_proj(x_conv), self.k_proj(x_conv), self.v_proj(x_mlstm)  # 3. headwise q, k, v
        h = self.mlstm_cell(q, k, v)  # 4. gates, mLSTM, multi-head norm: (B, S, DI)
        h = h + self.learnable_skip * x_conv  # 5. learnable skip
        h = h * F.silu(z)  # 6. output gate
        return self.proj_down(h)  # 7. down-projection: (B, S, D)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, inner_dim={self.inner_dim}, fast_path={self.fast_path}"


def _divisor_or_warn(total: int, wanted: int, name: str) -> int:
    if wanted < 1:
        raise ValueError(f"{name} must be positive, got {wanted}")
    if total % wanted == 0:
        return wanted
    used = math.gcd(total, wanted)
    warnings.warn(
        f"inner dim {total} is not divisible by {name}={wanted}; using {name}={used}", stacklevel=3
    )
    return used


class ViLBlock(nn.Module):
    """Pre-norm residual ViL block: ``x + ViLLayer(LayerNorm(x))``, ``(B, S, D) -> (B, S, D)``.

    Args:
        dim: D.
        reverse: traverse from the end (flip the sequence, run the layer, flip back); Vision-LSTM's
            ``ROWWISE_FROM_BOT_RIGHT``. Default ``False`` (rows from the top-left).
        fast_path: see :class:`ViLLayer` (default ``True``); ``False`` also turns the pieces off.
        piece_bytes: fast path on CPU only: a long sequence is processed in pieces of whole 1024-token multiples
            whose up-projection (``B x piece x 2 DI`` float32) stays within this many bytes, each piece starting
            from the previous piece's layer state; the result is the same as in one piece (to rounding), see
            :mod:`xlstm_unet.vil.fast`. Default 16 MiB; ``None`` disables it. Not used with the ``parallel`` backend
            or on GPU.
        checkpoint: gradient checkpointing: keep only the block's input (per piece: the piece and the state
            entering it) for backward and recompute the rest there (``torch.utils.checkpoint``, non-reentrant).
            Trades about one extra forward for the block's activation memory; with pieces, the memory of one
            piece's recomputation is all that is added. ``None`` (default, "auto"): exactly when the sequence runs
            in pieces (CPU, long sequences), where recomputing costs about what writing the saved activations to
            fresh memory costs; ``True`` / ``False``: always / never (e.g. ``True`` on GPU to save memory).
        **layer_kwargs: keyword arguments of :class:`ViLLayer` (expansion, num_heads, qkv_block_size, backend,
            chunk_size).

    The norm is ``xlstm``'s LayerNorm without bias (weight stored as a residual around 1), as Vision-LSTM.
    """

    def __init__(
        self,
        dim: int,
        *,
        reverse: bool = False,
        fast_path: bool = True,
        piece_bytes: int | None = 2**24,
        checkpoint: bool | None = None,
        **layer_kwargs,
    ) -> None:
        super().__init__()
        if piece_bytes is not None and (isinstance(piece_bytes, bool) or piece_bytes < 1):
            raise ValueError(f"piece_bytes must be a positive int or None, got {piece_bytes!r}")
        self.dim = dim
        self.reverse = bool(reverse)
        self.piece_bytes = piece_bytes
        if checkpoint is not None and not isinstance(checkpoint, bool):
            raise ValueError(f"checkpoint must be True, False or None (auto), got {checkpoint!r}")
        self.checkpoint = checkpoint
        self.norm = LayerNorm(ndim=dim, weight=True, bias=False)
        self.layer = ViLLayer(dim, fast_path=fast_path, **layer_kwargs)

    def reset_parameters(self) -> None:
        """Reset the norm and the layer (Vision-LSTM's init)."""
        self.norm.reset_parameters()
        self.layer.reset_parameters()

    @property
    def fast_path(self) -> bool:
        """Whether the block runs :mod:`xlstm_unet.vil.fast` (its layer's ``fast_path``)."""
        return self.layer.fast_path

    def piece_tokens(self, x: torch.Tensor) -> int | None:
        """Tokens per piece for the input ``x`` ``(B, S, D)``, or ``None`` when it is processed in one piece."""
        return fast.piece_tokens(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, S, D)`` -> ``(B, S, D)``."""
        piece = self.piece_tokens(x)
        checkpointed = torch.is_grad_enabled() and (piece is not None if self.checkpoint is None else self.checkpoint)
        if piece is not None:
            return fast.block_in_pieces(self, x, piece, checkpointed)
        return _maybe_checkpoint(checkpointed, self._whole, x)

    def _whole(self, x: torch.Tensor) -> torch.Tensor:
        """The block on the whole sequence ``(B, S, D)``."""
        y = self.norm(x)  # (B, S, D)
        y = self.layer(y.flip(1)).flip(1) if self.reverse else self.layer(y)
        return x + y

    def extra_repr(self) -> str:
        checkpoint = "auto" if self.checkpoint is None else self.checkpoint
        return f"dim={self.dim}, reverse={self.reverse}, piece_bytes={self.piece_bytes}, checkpoint={checkpoint}"


class ViLStage(nn.Module):
    """ViL on a feature map: flatten to tokens, ViL block(s) (each ``x + ViLLayer(LayerNorm(x))``), reshape back.

    ``(B, C, *spatial) -> (B, C, *spatial)`` for 1D, 2D or 3D maps.

    As in the official xLSTM-UNet code, the stage's only LayerNorm is the block's pre-norm (the official ``ViLLayer``
    also constructs an outer ``nn.LayerNorm`` but never calls it; we do not create it).

    Token modes:
        - patch tokens (default): S = N = prod(spatial) voxels, token dim D = C;
        - channel tokens (official trick for small maps): S = C channels, token dim D = prod(feature_size). The
          input's spatial size must then equal ``feature_size``. Auto (``channel_tokens=None``) turns it on iff
          ``feature_size`` is given and ``prod(feature_size) <= channels``.

    Args:
        channels: C.
        feature_size: the spatial size this stage will see (needed for channel tokens); ``None`` if unknown.
        directions: ``forward`` (default; one block, as the official code) or ``bidirectional`` (a forward and a
            reversed block, as Vision-LSTM's ``ViLBlockPair``), see :class:`Direction`.
        backend: mLSTM backend (default ``auto``: triton on CUDA, native chunkwise on CPU), see :class:`MLSTMBackend`.
        num_heads: mLSTM heads (default 4).
        expansion: inner-dim factor (default 2).
        chunk_size: chunkwise kernel chunk length (default ``None``: by head dim, see :func:`~xlstm_unet.vil.mlstm`).
        channel_tokens: ``True``/``False`` to force a token mode; ``None`` (default) = auto, see above.
        spatial_dims: the number of spatial dims of the inputs (1 to 3), checked in ``forward``; default ``None``:
            ``len(feature_size)`` when given, else any.
        fast_path: see :class:`ViLLayer` (default ``True``).
        piece_bytes: CPU piece size of long sequences, see :class:`ViLBlock` (default 16 MiB; ``None``: off).
        checkpoint: gradient checkpointing of every block (see :class:`ViLBlock`): trades about one extra forward
            of the stage for its activation memory, which dominates at the full-resolution stages. ``None``
            (default): auto, i.e. where a block runs in pieces (CPU); ``True`` / ``False``: always / never.

    Raises:
        ValueError: on invalid options or channel tokens without ``feature_size``; in ``forward``, on a channel
            count, a number of spatial dims or (channel-token mode) a spatial size that does not match.

    Examples::

        >>> stage = ViLStage(32)                                      # 2D or 3D, patch tokens
        >>> stage(torch.randn(2, 32, 16, 16)).shape
        torch.Size([2, 32, 16, 16])
        >>> stage = ViLStage(64, feature_size=(4, 4, 4), directions="bidirectional")   # channel tokens (64 <= 64)
        >>> stage(torch.randn(1, 64, 4, 4, 4)).shape
        torch.Size([1, 64, 4, 4, 4])
    """

    def __init__(
        self,
        channels: int,
        *,
        feature_size: Sequence[int] | None = None,
        directions: str | Direction = Direction.FORWARD,
        backend: str | MLSTMBackend = MLSTMBackend.AUTO,
        num_heads: int = 4,
        expansion: int = 2,
        chunk_size: int | None = None,
        channel_tokens: bool | None = None,
        spatial_dims: int | None = None,
        fast_path: bool = True,
        piece_bytes: int | None = 2**24,
        checkpoint: bool | None = None,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        self.channels = channels
        self.directions = _enum(Direction, directions, "directions")
        if spatial_dims is not None and spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2, 3 or None, got {spatial_dims!r}")
        self.feature_size = None if feature_size is None else tuple(int(s) for s in feature_size)
        if self.feature_size is not None:
            if not 1 <= len(self.feature_size) <= 3 or min(self.feature_size) < 1:
                raise ValueError(f"feature_size must be 1 to 3 positive sizes, got {feature_size!r}")
            if spatial_dims is not None and spatial_dims != len(self.feature_size):
                raise ValueError(
                    f"spatial_dims={spatial_dims} does not match feature_size {self.feature_size} "
                    f"({len(self.feature_size)} dims)"
                )
            spatial_dims = len(self.feature_size)
        self.spatial_dims = spatial_dims

        if channel_tokens is None:
            channel_tokens = self.feature_size is not None and math.prod(self.feature_size) <= channels
        elif channel_tokens and self.feature_size is None:
            raise ValueError("channel_tokens=True needs feature_size (the token dim is prod(feature_size))")
        self.channel_tokens = bool(channel_tokens)

        dim = math.prod(self.feature_size) if self.channel_tokens else channels
        reverses = (False,) if self.directions is Direction.FORWARD else (False, True)
        self.blocks = nn.ModuleList(
            ViLBlock(
                dim,
                reverse=reverse,
                fast_path=fast_path,
                piece_bytes=piece_bytes,
                checkpoint=checkpoint,
                expansion=expansion,
                num_heads=num_heads,
                backend=backend,
                chunk_size=chunk_size,
            )
            for reverse in reverses
        )

    def reset_parameters(self) -> None:
        """Reset every block (Vision-LSTM's init)."""
        for block in self.blocks:
            block.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, *spatial)`` -> ``(B, C, *spatial)``."""
        if x.dim() < 3 or x.shape[1] != self.channels:
            raise ValueError(f"expected (B, C={self.channels}, *spatial), got {tuple(x.shape)}")
        B, C, *spatial = x.shape
        if self.spatial_dims is not None and len(spatial) != self.spatial_dims:
            raise ValueError(f"expected {self.spatial_dims} spatial dims, got input shape {tuple(x.shape)}")
        if self.channel_tokens:
            if tuple(spatial) != self.feature_size:
                raise ValueError(
                    f"channel-token mode was built for spatial size {self.feature_size}, got {tuple(spatial)}"
                )
            tokens = x.flatten(2)  # (B, C, *spatial) -> (B, S=C, D=N)
            for block in self.blocks:
                tokens = block(tokens)
            return tokens.reshape(B, C, *spatial)  # (B, C, N) -> (B, C, *spatial)
        # (B, C, *spatial) -> (B, S=N, D=C), copied into token-major order once: as a transposed view, the norm and
        # the residual sums would run strided
        tokens = x.flatten(2).transpose(1, 2).contiguous()
        for block in self.blocks:
            tokens = block(tokens)
        return tokens.transpose(1, 2).reshape(B, C, *spatial)  # (B, N, C) -> (B, C, *spatial)

    @property
    def checkpoint(self) -> bool | None:
        """The blocks' gradient checkpointing (the ``checkpoint`` argument; ``None``: auto)."""
        return self.blocks[0].checkpoint

    @property
    def fast_path(self) -> bool:
        """Whether the blocks run :mod:`xlstm_unet.vil.fast` (the ``fast_path`` argument)."""
        return self.blocks[0].fast_path

    def extra_repr(self) -> str:
        checkpoint = "auto" if self.checkpoint is None else self.checkpoint
        return (
            f"channels={self.channels}, feature_size={self.feature_size}, directions={self.directions.value}, "
            f"channel_tokens={self.channel_tokens}, fast_path={self.fast_path}, checkpoint={checkpoint}"
        )
