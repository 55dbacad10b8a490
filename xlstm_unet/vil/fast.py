"""The fast path of the ViL layer and block: the values of the reference path in :mod:`xlstm_unet.vil.layers`, with
fewer passes over memory and less memory kept for backward. Written for CPU training, where the ViL stages at full
resolution are memory-bound; used on every device unless ``fast_path=False``. Tests hold it against the reference
path in outputs and gradients.

- q/k/v (:func:`_qkv_gates`): for DI <= 128 the block-diagonal (headwise) projections run as dense matmuls, q and k
  as one, and in float32 / float64 without autocast the gates' linear map is folded into them, which saves the
  skinny ``(B S, DI) x (DI, 2 NH)`` matmuls of the gates.
- output (:class:`_GatedOutput`): the multi-head norm, the learnable skip and the output gate as one autograd node
  that saves the mLSTM output and the norm's statistics and recomputes the rest in backward.
- pieces (:func:`block_in_pieces`, CPU): a long sequence runs in pieces of about ``piece_bytes`` (16 MiB) of
  activations, the layer's state (last conv inputs, mLSTM ``(C, n, m)``) carried from piece to piece; the result
  equals one piece. glibc maps every allocation above 32 MiB afresh from the OS (page faults on first touch) and
  returns it on free, so one-piece temporaries of a long sequence cost more in page faults than in arithmetic; the
  pieces' temporaries are recycled by the heap instead. By default the pieces are checkpointed (see ``ViLBlock``).
- heap trim (:func:`_release_free_heap`): after a forward in pieces under autograd of an input of at least 32 MiB,
  the C heap's free pages go back to the OS (glibc ``malloc_trim``): the feature maps around such a stage are
  mapped afresh and could not reuse that free, fragmented heap. Smaller stages do not trim: there the trim's page
  faults cost more than it saves.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from xlstm_unet.vil.kernels import MLSTMBackend, MLSTMState, _compute_dtype, _maybe_checkpoint, _resolve_backend

if TYPE_CHECKING:
    from xlstm_unet.vil.layers import MLSTMCell, ViLBlock, ViLLayer

__all__ = ["layer_forward", "block_in_pieces", "piece_tokens", "ViLLayerState"]

# Up to this inner dim the block-diagonal q/k/v projections run as dense matmuls (above it they are slower so).
_DENSE_QKV_MAX_DIM = 128
# A ViLBlock trims the C heap after a forward in pieces whose input has at least this many bytes (glibc's mmap
# threshold: the maps around such a stage cannot reuse the heap).
_TRIM_MIN_BYTES = 2**25

ViLLayerState = tuple[torch.Tensor, MLSTMState]
"""The state of a ViL layer between parts of a sequence: the last 3 conv inputs ``(B, 3, DI)`` and the mLSTM state."""


def layer_forward(
    layer: ViLLayer, x: torch.Tensor, state: ViLLayerState | None = None, return_state: bool = False
) -> tuple[torch.Tensor, ViLLayerState | None]:
    """The ViL layer on ``x`` ``(B, S, D)`` -> ``(B, S, D)``, continuing a sequence: ``state`` is the layer's state
    after the preceding tokens (``None``: start of the sequence); with ``return_state`` the state after ``x`` is
    returned (else ``None``). Running a sequence in parts, passing the state along, equals running it whole (with
    the ``chunkwise`` backend, the only one with a state)."""
    stateful = state is not None or return_state
    conv_state, mlstm_state = state if state is not None else (None, None)
    x_mlstm, z = layer.proj_up(x).chunk(2, dim=-1)  # 2 x (B, S, DI)
    if stateful:
        x_conv, conv_state = layer.conv(x_mlstm, conv_state=conv_state, return_last_state=True)  # (B, S, DI)
    else:
        x_conv = layer.conv(x_mlstm)  # (B, S, DI)
    # the conv computes channels-first, (B, DI, S): one copy into (B, S, DI) order instead of strided loops in
    # every elementwise op after it
    x_conv = F.silu(x_conv.contiguous())  # (B, S, DI)
    q, k, v, gates = _qkv_gates(layer, x_conv, x_mlstm)  # 3 x (B, S, DI), (B, S, 2 NH)
    h = layer.mlstm_cell(q, k, v, mlstm_state, stateful, gates, normalize=False)  # (B, NH, S, DH)[, state]
    h, mlstm_state = h if stateful else (h, None)  # float32
    norm = layer.mlstm_cell.outnorm
    h = _GatedOutput.apply(h, norm.weight_proxy, layer.learnable_skip, x_conv, z, norm.eps)  # (B, S, DI)
    return layer.proj_down(h), ((conv_state, mlstm_state) if return_state else None)  # (B, S, D)


def _qkv_gates(
    layer: ViLLayer, x_conv: torch.Tensor, x_mlstm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``q, k`` from ``x_conv``, ``v`` from ``x_mlstm`` (each ``(B, S, DI)``), and the cell's gate pre-activations
    ``(B, S, 2 NH)``.

    For DI <= 128 the headwise (block-diagonal) projections run as dense matmuls, q and k as one; in float32 /
    float64 without autocast the gates' linear map is folded in too (``w_q Q + w_k K`` on ``x_conv``, ``w_v V`` on
    ``x_mlstm``). Otherwise the gates are computed from q, k, v as the cell computes them, one weight block each.
    """
    cell = layer.mlstm_cell
    if layer.inner_dim > _DENSE_QKV_MAX_DIM:
        q, k, v = layer.q_proj(x_conv), layer.k_proj(x_conv), layer.v_proj(x_mlstm)
    else:
        w_q, w_k, w_v = (_block_diagonal(p.weight) for p in (layer.q_proj, layer.k_proj, layer.v_proj))  # (DI, DI)
        if _fold_gates(x_conv):
            g_q, g_k, g_v, bias = _gate_weights(cell, x_conv.dtype)  # 3 x (2 NH, DI), (2 NH,)
            w_conv = torch.cat([w_q, w_k, g_q @ w_q + g_k @ w_k])  # (2 DI + 2 NH, DI)
            q, k, gates_conv = F.linear(x_conv, w_conv).split([layer.inner_dim, layer.inner_dim, bias.numel()], -1)
            v, gates_v = F.linear(x_mlstm, torch.cat([w_v, g_v @ w_v])).split([layer.inner_dim, bias.numel()], -1)
            return q, k, v, gates_conv + gates_v + bias
        q, k = F.linear(x_conv, torch.cat([w_q, w_k])).chunk(2, dim=-1)  # 2 x (B, S, DI)
        v = F.linear(x_mlstm, w_v)
    dtype = _compute_dtype(q)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    with torch.autocast(device_type=q.device.type, enabled=False):
        w_q, w_k, w_v, bias = _gate_weights(cell, dtype)
        return q, k, v, F.linear(q, w_q) + F.linear(k, w_k) + F.linear(v, w_v, bias)  # ..., (B, S, 2 NH)


def _gate_weights(cell: MLSTMCell, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cell's gate map on ``concat(q, k, v)`` split by input block: ``w_q, w_k, w_v`` ``(2 NH, DI)`` and the bias
    ``(2 NH,)``, input gate first, in ``dtype`` (one weight per block: no ``(B, S, 3 DI)`` concat)."""
    weight = torch.cat([cell.igate.weight, cell.fgate.weight]).to(dtype)  # (2 NH, 3 DI)
    bias = torch.cat([cell.igate.bias, cell.fgate.bias]).to(dtype)  # (2 NH,)
    return (*weight.split(cell.dim, dim=1), bias)


def _fold_gates(x: torch.Tensor) -> bool:
    """Whether :func:`_qkv_gates` folds the gates into the projections for the input ``x``: only where they would be
    computed in ``x``'s dtype anyway (float32 / float64 without autocast); under autocast the projections run in
    low precision while the cell computes the gates in float32."""
    return x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled(x.device.type)


def _block_diagonal(weight: torch.Tensor) -> torch.Tensor:
    """A headwise weight ``(NB, O, I)`` (``xlstm``'s ``LinearHeadwiseExpand``) as the dense block-diagonal
    ``(NB O, NB I)`` weight of ``F.linear``."""
    nb, out_per_block, in_per_block = weight.shape
    eye = torch.eye(nb, dtype=weight.dtype, device=weight.device)
    return torch.einsum("hg,hoi->hogi", eye, weight).reshape(nb * out_per_block, nb * in_per_block)


class _GatedOutput(torch.autograd.Function):
    """The ViL layer's output before ``proj_down``: ``(LN(h) * w + skip * x_conv) * silu(z)``, ``(B, S, DI)``.

    ``h`` ``(B, NH, S, DH)`` is the mLSTM output, ``LN`` the LayerNorm over DH without affine (eps 1e-5, xlstm's
    MultiHeadLayerNorm), ``w`` its weight ``(DI,)``; ``skip`` ``(DI,)``, ``x_conv`` and ``z`` ``(B, S, DI)``. Computed
    in ``h``'s dtype (float32, or float64). Autograd would save five ``(B, S, DI)`` intermediates (the normalised
    ``h`` twice, the sum, ``silu(z)``, the product); this node saves ``h`` and the LayerNorm statistics (``x_conv``
    and ``z`` are saved by their other consumers anyway) and recomputes the rest in backward.
    """

    @staticmethod
    def forward(ctx, h, weight, skip, x_conv, z, eps):
        B, NH, S, DH = h.shape
        normed, mean, rstd = torch.native_layer_norm(h, (DH,), None, None, eps)  # (B, NH, S, DH)
        out = normed.transpose(1, 2).reshape(B, S, NH * DH) * weight.to(h.dtype)  # (B, S, DI)
        out += skip.to(h.dtype) * x_conv
        out *= F.silu(z)
        ctx.save_for_backward(h, mean, rstd, weight, skip, x_conv, z)
        return out

    @staticmethod
    def backward(ctx, grad):
        h, mean, rstd, weight_in, skip_in, x_conv_in, z_in = ctx.saved_tensors  # read once (checkpoint rule)
        B, NH, S, DH = h.shape
        weight, skip, x_conv, z = (t.to(h.dtype) for t in (weight_in, skip_in, x_conv_in, z_in))
        normed = ((h - mean) * rstd).transpose(1, 2).reshape(B, S, NH * DH)  # (B, S, DI)
        sig = torch.sigmoid(z)
        grad_a = grad * (z * sig)  # d out / d (normed w + skip x_conv) = silu(z)
        a = torch.addcmul(skip * x_conv, normed, weight)  # normed w + skip x_conv
        grad_z = grad * a * (sig * (1 + z * (1 - sig)))  # silu'(z) = sig (1 + z (1 - sig))
        reduce = tuple(range(grad.dim() - 1))
        grad_weight = (grad_a * normed).sum(reduce)
        grad_skip = (grad_a * x_conv).sum(reduce)
        grad_normed = (grad_a * weight).view(B, S, NH, DH).transpose(1, 2)  # (B, NH, S, DH)
        grad_h = torch.ops.aten.native_layer_norm_backward(
            grad_normed, h, (DH,), mean, rstd, None, None, (True, False, False)
        )[0]
        return (
            grad_h,
            grad_weight.to(weight_in.dtype),
            grad_skip.to(skip_in.dtype),
            (grad_a * skip).to(x_conv_in.dtype),
            grad_z.to(z_in.dtype),
            None,
        )


def piece_tokens(block: ViLBlock, x: torch.Tensor) -> int | None:
    """Tokens per piece for the block's input ``x`` ``(B, S, D)``, or ``None`` when it runs in one piece: without
    the fast path or ``piece_bytes``, off CPU, with a backend other than ``chunkwise``, or when S fits one piece."""
    if not block.fast_path or block.piece_bytes is None or x.device.type != "cpu":
        return None
    if _resolve_backend(block.layer.mlstm_cell.backend, x.device, _compute_dtype(x)) is not MLSTMBackend.CHUNKWISE:
        return None
    bytes_per_token = x.shape[0] * 2 * block.layer.inner_dim * 4
    piece = max(1024, block.piece_bytes // bytes_per_token // 1024 * 1024)
    return piece if x.shape[1] > piece else None


def block_in_pieces(block: ViLBlock, x: torch.Tensor, piece: int, checkpointed: bool) -> torch.Tensor:
    """The block on ``x`` ``(B, S, D)`` in pieces of ``piece`` tokens (the last one shorter) in processing order,
    each checkpointed when ``checkpointed``; then the heap trim (see the module docstring)."""
    # pieces in processing order (from the end when reversed): full pieces first, the remainder last
    S = x.shape[1]
    sizes = [piece] * (S // piece) + ([S % piece] if S % piece else [])
    pieces = x.split(sizes[::-1], dim=1)[::-1] if block.reverse else x.split(sizes, dim=1)
    outputs, state = [], None
    for part in pieces:  # (B, P, D)
        y, state = _maybe_checkpoint(checkpointed, _block_piece, block, part, state)
        outputs.append(y)
    y = torch.cat(outputs[::-1] if block.reverse else outputs, dim=1)  # (B, S, D)
    del outputs, state  # the pieces' outputs are free once concatenated, so the trim below can return them
    if torch.is_grad_enabled() and x.numel() * x.element_size() >= _TRIM_MIN_BYTES:
        _release_free_heap()
    return y


def _block_piece(
    block: ViLBlock, part: torch.Tensor, state: ViLLayerState | None
) -> tuple[torch.Tensor, ViLLayerState]:
    """The block on one piece ``(B, P, D)`` in processing order, from the layer state before it."""
    y = block.norm(part)
    y, state = layer_forward(block.layer, y.flip(1) if block.reverse else y, state=state, return_state=True)
    return part + (y.flip(1) if block.reverse else y), state


@lru_cache(maxsize=None)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where the C library has none (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def _release_free_heap() -> None:
    """Return the C heap's free pages to the OS (glibc ``malloc_trim(0)``); nothing where it is missing."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
