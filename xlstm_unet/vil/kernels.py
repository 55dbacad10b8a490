"""ViL (Vision-LSTM) blocks over token sequences and over 2D/3D feature maps, with a linear-time mLSTM.

The layer follows Vision-LSTM (Alkin et al., arXiv 2406.04303; NX-AI/vision-lstm) as used by xLSTM-UNet (Chen et
al., arXiv 2407.01530; tianrun-chen/xLSTM-UNet-PyTorch). The building blocks (headwise projections, causal conv1d,
LayerNorm without bias, multi-head LayerNorm, initialisers) come from the ``xlstm`` package; the mLSTM cell is ours
because ``xlstm``'s own cell hardwires the quadratic parallel form. The mLSTM backends (:class:`MLSTMBackend`):

- ``chunkwise`` (CPU and GPU, pure PyTorch, time and memory linear in S), written here and differentiated by
  autograd: the chunk states by a loop over chunks (large heads) or 16 chunks at a time (small heads), the outputs
  within each chunk by the formula of ``mlstm_kernels``' ``mlstm_chunkwise__parallel_fw_H`` with fewer L x L
  intermediates; the chunk length follows the head dim (16 to 64);
- ``triton`` (CUDA): ``mlstm_kernels``' ``chunkwise--triton_xl_chunk``;
- ``parallel``: ``mlstm_kernels``' ``parallel--native_autograd``, the quadratic "parallel stabilized" form of the
  official code, kept as the reference (O(S^2) time and memory).

Why the chunk-state loop is ours: ``mlstm_kernels``' ``chunkwise--native_autograd`` writes every chunk state into
slices of one preallocated buffer, and autograd's backward of each slice write copies the whole buffer, so its
backward time grows quadratically in S. ``chunkwise--native_custbw`` is linear, but its custom backward treats the
normaliser ``max(|n.q|, exp(-m))`` as a constant, so its q/k/i/f gradients differ from autograd through the parallel
form (by O(1) with unit-scale inputs). Our ``chunkwise`` equals ``parallel`` in value and gradient to rounding
(1e-12 in float64). ``triton`` is used as ``mlstm_kernels`` ships it (custom backward).

Dims legend:
    B: batch; C: channels of the feature map; ``*spatial``: its spatial sizes (2D ``H, W`` or 3D ``D, H, W``);
    N = prod(spatial): number of voxels; S: sequence length (N with patch tokens, C with channel tokens);
    D: token dimension (C with patch tokens, N with channel tokens); DI = expansion * D: inner dimension;
    NH: mLSTM heads; DH = DI / NH: head dimension; L: chunk size; NC = S / L: number of chunks.

On CPU, a :class:`ViLBlock` runs a long sequence in pieces of about 16 MiB of activations, carrying the layer's
state (last conv inputs, mLSTM ``(C, n, m)``) from piece to piece; the result equals one piece. glibc maps every
allocation above 32 MiB fresh from the OS (page faults on first touch) and returns it on free, so one-piece
temporaries at S = 65,536 cost more in page faults than in arithmetic; pieces are recycled instead. Measured (fwd +
bwd, 2 CPU cores): the 32-channel 256x256 stage 3.5 s -> 1.5 s, the 32-channel 32x96x96 stage 15.8 s -> 5.7 s.
By default the pieces are checkpointed (recomputed in backward), and the C heap is trimmed after the largest
stages, which on CPU halves a 3D ViL U-Net's peak memory at no cost in time; see :class:`ViLBlock`.

Further CPU-minded details, each with the values of the plain composition (tested against it): for DI <= 128 the
block-diagonal q/k/v projections run as dense matmuls with the gates' projection folded in; the multi-head
LayerNorm runs as a LayerNorm over DH; the chunkwise kernel recomputes its within-chunk L x L matrices in backward
instead of saving them where L >= DH (saved activations of the 32-channel 256x256 stage: 973 -> 675 MB, at no
measurable time there; about 10% of the stage's time at 64 channels in 3D); q/k/v enter the kernel contiguous; the
layer's output (norm, skip, gate) is one autograd node that saves only the mLSTM output (:class:`_GatedOutput`).
Together the last two: saved activations of the 32-channel 32x96x96 stage 3.07 -> 1.76 GB; 3D enc train step
47.5 s / 12.3 GB -> 42.0 s / 10.4 GB in one sitting.

Conventions:
    - Tokens are the voxels in row-major (C-order) flattening of ``*spatial``, i.e. rows from the top-left.
      ``reverse=True`` traverses from the bottom-right (flip the sequence, process, flip back).
    - The mLSTM always computes in float32 (float64 if its inputs are float64), with autocast disabled, so fp16/bf16
      mixed precision cannot overflow inside the exponential gating. The projections around it follow autocast.
    - Sequences whose length is not a multiple of the chunk size are zero-padded at the END (after any flip), which
      leaves the outputs of the real tokens of the causal recurrence unchanged.
    - The chunkwise forms start from the stabiliser state ``m_0 = -1e4`` (with zero ``C_0``, ``n_0``), not the
      kernels' default 0: then their stabiliser equals the parallel form's row maximum, and the ``eps`` in
      ``h = num / (max(|den|, exp(-m)) + eps)`` acts identically (with ``m_0 = 0`` they differ by ~1e-7).
"""

from __future__ import annotations

import ctypes
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from enum import Enum
from functools import lru_cache

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from xlstm.components.conv import CausalConv1d, CausalConv1dConfig
from xlstm.components.init import bias_linspace_init_, small_init_init_, wang_init_
from xlstm.components.linear_headwise import LinearHeadwiseExpand, LinearHeadwiseExpandConfig
from xlstm.components.ln import LayerNorm, MultiHeadLayerNorm

__all__ = [
    "mlstm",
    "MLSTMCell",
    "ViLLayer",
    "ViLBlock",
    "ViLStage",
    "Direction",
    "ConvKind",
    "MLSTMBackend",
    "MLSTMState",
]

# Initial stabiliser state for the chunkwise kernels; see the module docstring.
_M_INITIAL = -1.0e4
# Above this sequence length the parallel backend's S x S matrices are worth a warning (4 GB per head at S=32768).
_PARALLEL_WARN_S = 16384
# Up to this inner dim, the block-diagonal q/k/v projections run as dense matmuls: measured fwd + bwd on 2 CPU
# cores at the CPU piece sizes, DI=64: 34 -> 18 ms; DI=128: 33 -> 28 ms; DI=256: 30 -> 44 ms (slower).
_DENSE_QKV_MAX_DIM = 128
# A ViLBlock trims the C heap after a forward in pieces whose input has at least this many bytes (see ViLBlock).
_TRIM_MIN_BYTES = 2**25


class MLSTMBackend(str, Enum):
    """How the mLSTM sequence is computed.

    - ``auto``: ``triton`` on CUDA when triton is importable (and the inputs are not float64), else ``chunkwise``;
    - ``chunkwise``: chunkwise form in PyTorch (linear in S; exact autograd gradients), see the module docstring;
    - ``triton``: ``mlstm_kernels`` ``chunkwise--triton_xl_chunk`` (CUDA only);
    - ``parallel``: ``mlstm_kernels`` ``parallel--native_autograd``, quadratic in S (the official code's form).
    """

    AUTO = "auto"
    CHUNKWISE = "chunkwise"
    TRITON = "triton"
    PARALLEL = "parallel"


class Direction(str, Enum):
    """Traversal of a :class:`ViLStage`.

    - ``forward``: one block, rows from the top-left (the official xLSTM-UNet code);
    - ``bidirectional``: a pair of blocks, the second on the flipped sequence (Vision-LSTM's ``ViLBlockPair``).
    """

    FORWARD = "forward"
    BIDIRECTIONAL = "bidirectional"


class ConvKind(str, Enum):
    """The convolution on the mLSTM branch of a :class:`ViLLayer`.

    - ``causal1d``: causal depthwise conv1d along the sequence, kernel 4 (the official code, Vision-LSTM v1);
    - ``grid``: depthwise ``Conv{1,2,3}d`` with kernel 3 on the spatial grid (Vision-LSTM 2's 2D conv, in N-d).
    """

    CAUSAL1D = "causal1d"
    GRID = "grid"


_KERNEL_NAMES = {
    MLSTMBackend.TRITON: "chunkwise--triton_xl_chunk",
    MLSTMBackend.PARALLEL: "parallel--native_autograd",
}


def _enum(enum_cls: type[Enum], value: str | Enum, name: str) -> Enum:
    """``enum_cls(value)`` with an error that lists the valid choices."""
    try:
        return enum_cls(value)
    except ValueError:
        choices = [m.value for m in enum_cls]
        raise ValueError(f"{name} must be one of {choices}, got {value!r}") from None


@lru_cache(maxsize=None)
def _kernel(backend: MLSTMBackend) -> Callable[..., torch.Tensor]:
    from mlstm_kernels.torch import get_mlstm_kernel

    try:
        return get_mlstm_kernel(_KERNEL_NAMES[backend])
    except ValueError as err:  # triton kernels are not registered when triton is missing
        raise ValueError(f"mLSTM backend {backend.value!r} is not available here: {err}") from err


@lru_cache(maxsize=None)
def _triton_available() -> bool:
    try:
        _kernel(MLSTMBackend.TRITON)
    except (ValueError, ImportError):
        return False
    return True


def _auto_chunk_size(head_dim: int) -> int:
    """Default chunk length for the ``chunkwise`` backend: about the head dim, within [16, 64].

    Per token and head the within-chunk part costs O(L) (the L x L decay and score matrices) and the chunk states
    O(DH * DHV / L); L ~ DH balances the two. Measured on CPU (fwd + bwd, B=2, NH=4): at DH=16, S=65536, L=16 takes
    half the time and 45% of the memory of L=64.
    """
    return 16 if head_dim <= 16 else 32 if head_dim <= 32 else 64


def _auto_segment(head_dim: int, value_dim: int) -> int:
    """Chunks per segment of the segmented chunk-state scan (1 = a plain loop over chunks).

    Small heads have many small chunks (S / 16 in the full-resolution stages), for which a Python loop over chunks
    would dominate; their states are cheap, so they are computed 16 chunks at a time. Large heads (DH * DHV > 1024)
    have few chunks with large states, which the loop keeps in cache (measured 2x faster at DH=128).
    """
    return 16 if head_dim * value_dim <= 1024 else 1


MLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""An mLSTM state ``(C, n, m)``: ``C`` ``(B, NH, DH, DHV)``, ``n`` ``(B, NH, DH)``, stabiliser ``m`` ``(B, NH)``."""

ViLLayerState = tuple[torch.Tensor, MLSTMState]
"""The state of a :class:`ViLLayer` between parts of a sequence: the last 3 conv inputs ``(B, 3, DI)`` and the
mLSTM state."""


def _initial_state(k: torch.Tensor, DHV: int, state: MLSTMState | None) -> MLSTMState:
    """``state``, or the empty state (zero ``C`` and ``n``, ``m = _M_INITIAL``) for keys ``k`` ``(B, NH, ...)``."""
    if state is not None:
        return state
    B, NH, DH = k.shape[0], k.shape[1], k.shape[-1]
    return k.new_zeros(B, NH, DH, DHV), k.new_zeros(B, NH, DH), k.new_full((B, NH), _M_INITIAL)


def _chunk_states_loop(
    k: torch.Tensor,
    v: torch.Tensor,
    vecA: torch.Tensor,
    g: torch.Tensor,
    amax: torch.Tensor,
    state: MLSTMState | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, MLSTMState]:
    """The states entering each chunk, by a loop over chunks. Shapes as :func:`_chunk_states_segmented`.

    ``m_c = max(g + m_{c-1}, max_l a_l)``, ``C_c = exp(g + m_{c-1} - m_c) C_{c-1} + K^T diag(exp(a - m_c)) V``,
    ``n_c = exp(g + m_{c-1} - m_c) n_{c-1} + K^T exp(a - m_c)``. Chunk tensors are taken with ``unbind`` (whose
    backward is one stack), not by indexing (whose backward would materialise a full-size gradient per chunk).
    """
    NC = k.shape[2]
    g_chunks, amax_chunks, a_chunks = g.unbind(2), amax.unbind(2), vecA.unbind(2)  # NC x (B, NH[, L])
    k_chunks, v_chunks = k.unbind(2), v.unbind(2)  # NC x (B, NH, L, DH[V])
    C, n, m = _initial_state(k, v.shape[-1], state)  # (B, NH, DH, DHV), (B, NH, DH), (B, NH)
    C_states, n_states, m_states = [C], [n], [m]
    for c in range(NC):
        m_next = torch.maximum(g_chunks[c] + m, amax_chunks[c])  # (B, NH)
        k_gated = k_chunks[c] * torch.exp(a_chunks[c] - m_next[..., None])[..., None]  # (B, NH, L, DH)
        decay = torch.exp(g_chunks[c] + m - m_next)  # (B, NH)
        C = decay[..., None, None] * C + k_gated.transpose(-2, -1) @ v_chunks[c]  # (B, NH, DH, DHV)
        n = decay[..., None] * n + k_gated.sum(-2)  # (B, NH, DH)
        m = m_next
        C_states.append(C)
        n_states.append(n)
        m_states.append(m)
    entering = (torch.stack(C_states[:NC], 2), torch.stack(n_states[:NC], 2), torch.stack(m_states[:NC], 2))
    return (*entering, (C, n, m))


def _chunk_states_segmented(
    k: torch.Tensor,
    v: torch.Tensor,
    vecA: torch.Tensor,
    g: torch.Tensor,
    amax: torch.Tensor,
    segment: int,
    state: MLSTMState | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, MLSTMState]:
    """The states entering each chunk, ``segment`` (T) chunks at a time; NC must be a multiple of T.

    Args:
        k: ``(B, NH, NC, L, DH)``; v: ``(B, NH, NC, L, DHV)``.
        vecA: ``a_l = b_L - b_l + i_l`` per chunk, ``(B, NH, NC, L)``; g: ``b_L``, ``(B, NH, NC)``;
        amax: ``max_l a_l``, ``(B, NH, NC)``.
        state: the state before the first chunk (default: empty).

    Returns:
        ``C`` ``(B, NH, NC, DH, DHV)``, ``n`` ``(B, NH, NC, DH)``, ``m`` ``(B, NH, NC)``: the (stabilised) state
        entering each chunk, and the state after the last chunk; the same values as :func:`_chunk_states_loop`.

    Each chunk's contribution ``U_c = K_c^T diag(exp(a_c - amax_c)) [V_c, 1]`` is one batched matmul. Within a
    segment, with ``G`` the inclusive and ``E = G - g`` the exclusive cumulative sum of ``g``, the state entering
    chunk t is ``sum_{t'<t} exp(E_t - G_t' + amax_t' - m_t) U_t' + exp(E_t + m_in - m_t) C_in`` with
    ``m_t = E_t + max(m_in, max_{t'<t} (amax_t' - G_t'))``: one (T x T+1) matmul per segment. Only the states entering
    the segments (``C_in``, ``m_in``) come from a loop, over NC / T segments. All exponents are <= 0.
    """
    B, NH, NC, L, DH = k.shape
    DHV = v.shape[-1]
    T = segment
    NS = NC // T
    X = DH * (DHV + 1)
    k_gated = k * torch.exp(vecA - amax[..., None])[..., None]  # (B, NH, NC, L, DH)
    # [C | n] contributions of each chunk: (B, NH, NC, DH, DHV + 1) -> (B, NH, NS, T, X)
    U = torch.cat([k_gated.transpose(-2, -1) @ v, k_gated.sum(-2)[..., None]], -1).view(B, NH, NS, T, X)
    g, amax = g.view(B, NH, NS, T), amax.view(B, NH, NS, T)
    G = g.cumsum(-1)  # (B, NH, NS, T), inclusive
    E = G - g  # exclusive
    ag = amax - G  # (B, NH, NS, T)
    # each segment on its own: the state after its last chunk, stabilised by m_seg
    G_tot = G[..., -1]  # (B, NH, NS)
    m_seg = G_tot + ag.amax(-1)  # (B, NH, NS)
    w_seg = torch.exp(G_tot[..., None] + ag - m_seg[..., None])  # (B, NH, NS, T)
    U_seg = (w_seg[..., None, :] @ U).squeeze(-2)  # (B, NH, NS, X)
    # the states entering each segment, and the final state
    C0, n0, m_in = _initial_state(k, DHV, state)
    C_in = torch.cat([C0, n0[..., None]], -1).reshape(B, NH, X)  # (B, NH, X)
    C_ins, m_ins = [C_in], [m_in]
    for U_s, m_s, G_s in zip(*(t.unbind(2) for t in (U_seg, m_seg, G_tot))):
        m_next = torch.maximum(G_s + m_in, m_s)  # (B, NH)
        C_in = torch.exp(G_s + m_in - m_next)[..., None] * C_in + torch.exp(m_s - m_next)[..., None] * U_s
        m_in = m_next
        C_ins.append(C_in)
        m_ins.append(m_in)
    final_Cn = C_ins[NS].view(B, NH, DH, DHV + 1)
    final = (final_Cn[..., :DHV], final_Cn[..., DHV], m_ins[NS])
    C_in, m_in = torch.stack(C_ins[:NS], 2), torch.stack(m_ins[:NS], 2)  # (B, NH, NS, X), (B, NH, NS)
    # the states entering each chunk
    prev_max = torch.cummax(ag, -1).values  # (B, NH, NS, T): max_{t'<=t}
    prev_max = F.pad(prev_max[..., :-1], (1, 0), value=-math.inf)  # max_{t'<t}
    m = E + torch.maximum(m_in[..., None], prev_max)  # (B, NH, NS, T)
    strict = torch.ones(T, T, dtype=torch.bool, device=k.device).tril(-1)  # t' < t
    W = torch.exp(((E - m)[..., :, None] + ag[..., None, :]).masked_fill(~strict, -math.inf))  # (B, NH, NS, T, T)
    w_in = torch.exp(E + m_in[..., None] - m)  # (B, NH, NS, T)
    W = torch.cat([w_in[..., None], W], -1)  # (B, NH, NS, T, 1 + T)
    states = (W @ torch.cat([C_in[..., None, :], U], -2)).view(B, NH, NC, DH, DHV + 1)  # (B, NH, NC, DH, DHV+1)
    return states[..., :DHV], states[..., DHV], m.reshape(B, NH, NC), final


def _chunk_outputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    C: torch.Tensor,
    n: torch.Tensor,
    m: torch.Tensor,
    vecI: torch.Tensor,
    vecB: torch.Tensor,
    *,
    eps: float,
) -> torch.Tensor:
    """The outputs within each chunk from the states entering it: ``(B, NH, NC, L, DHV)``.

    The formula of ``mlstm_kernels``' ``mlstm_chunkwise__parallel_fw_H`` (tested against it), written with fewer
    (B, NH, NC, L, L) intermediates (3 instead of 7), which dominate the memory of small-head stages.
    q, k: ``(B, NH, NC, L, DH)``; v: ``(B, NH, NC, L, DHV)``; C, n, m: as returned by the state functions;
    vecI, vecB: input gates and inclusive cumulative log forget gates per chunk, ``(B, NH, NC, L)``.
    """
    L, DH = q.shape[-2:]
    scale = DH**-0.5
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    log_d = (vecB[..., :, None] + (vecI - vecB)[..., None, :]).masked_fill(~causal, -math.inf)  # (B, NH, NC, L, L)
    m_inter = vecB + m[..., None]  # (B, NH, NC, L)
    m_comb = torch.maximum(m_inter, log_d.amax(-1))  # (B, NH, NC, L)
    scores = (q @ k.transpose(-2, -1)) * torch.exp(log_d - m_comb[..., None])  # (B, NH, NC, L, L), unscaled
    q_gated = q * (torch.exp(m_inter - m_comb) * scale)[..., None]  # (B, NH, NC, L, DH)
    num = q_gated @ C + (scores @ v) * scale  # (B, NH, NC, L, DHV)
    den = (q_gated @ n[..., None]).squeeze(-1) + scores.sum(-1) * scale  # (B, NH, NC, L)
    den = torch.maximum(den.abs(), torch.exp(-m_comb))
    return num * (den + eps).reciprocal()[..., None]  # not num / (den + eps): its backward takes 3 more full passes


def _chunkwise_native(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    *,
    chunk_size: int,
    segment: int,
    eps: float,
    state: MLSTMState | None = None,
) -> tuple[torch.Tensor, MLSTMState]:
    """Chunkwise mLSTM in PyTorch; S must be a multiple of ``chunk_size * segment``. Shapes as :func:`mlstm`.

    Returns ``h`` ``(B, NH, S, DHV)`` and the state after the last token. ``state``: the state before the first.

    Notation of ``mlstm_kernels.torch.chunkwise.native``: per chunk, ``b_l = sum_{l'<=l} logsigmoid(f_l')``
    (``vecB``), ``a_l = b_L - b_l + i_l`` (``vecA``), ``g = b_L``. ``segment == 1``: chunk states by
    :func:`_chunk_states_loop`, else by :func:`_chunk_states_segmented`; then :func:`_chunk_outputs`.
    """
    B, NH, S, DH = q.shape
    DHV = v.shape[-1]
    L = chunk_size
    NC = S // L
    vecI = i.view(B, NH, NC, L)  # (B, NH, NC, L)
    vecB = F.logsigmoid(f).view(B, NH, NC, L).cumsum(-1)  # (B, NH, NC, L)
    vecA = vecB[..., -1:] - vecB + vecI  # (B, NH, NC, L)
    g, amax = vecB[..., -1], vecA.amax(-1)  # (B, NH, NC)
    # one copy each into (B, NH, S, DH) order: the (B, NH, NC) batches of every matmul below are then views, which
    # matmul would otherwise copy for each product anew (q and k come as strided views of the projections' output);
    # 3D 32-channel stage, fwd: 2.0 -> 1.8 s
    q, k, v = (t.contiguous().view(B, NH, NC, L, t.shape[-1]) for t in (q, k, v))
    if segment == 1:
        C, n, m, final = _chunk_states_loop(k, v, vecA, g, amax, state)
    else:
        C, n, m, final = _chunk_states_segmented(k, v, vecA, g, amax, segment, state)
    # Recomputed in backward where L >= DH: its L x L intermediates, each at least as large as q, would be most of
    # the saved memory. Measured on CPU (fwd + bwd, 64 channels, 32x48x48, DH = L = 32): +10% time, -1.1 GB peak
    # RSS; for DH = 128 > L = 64 (the C = 256 block of benchmarks/vil_scaling.py) it cost up to 15% time (S = 4096:
    # 0.84 -> 0.97 s, in two benchmark runs) for -9% memory, so large heads keep them. Recomputing the chunk states
    # too (checkpointing the whole kernel) was measured in the 3D enc train step: -12% peak RSS, +11% time; not done.
    recompute = L >= DH and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, i, f))
    h = _maybe_checkpoint(recompute, _chunk_outputs, q, k, v, C, n, m, vecI, vecB, eps=eps)  # (B, NH, NC, L, DHV)
    return h.reshape(B, NH, S, DHV), final


def _maybe_checkpoint(enabled: bool, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)``, under gradient checkpointing (``torch.utils.checkpoint``, non-reentrant: only
    the inputs are saved, ``fn`` runs again in backward) when ``enabled``."""
    if enabled:
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, **kwargs)
    return fn(*args, **kwargs)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype the mLSTM computes in for input ``t``: float64 for float64, else float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _resolve_backend(backend: str | MLSTMBackend, device: torch.device, dtype: torch.dtype) -> MLSTMBackend:
    choice = _enum(MLSTMBackend, backend, "backend")
    if choice is MLSTMBackend.AUTO:
        if device.type == "cuda" and dtype != torch.float64 and _triton_available():
            return MLSTMBackend.TRITON
        return MLSTMBackend.CHUNKWISE
    if choice is MLSTMBackend.TRITON:
        if device.type != "cuda":
            raise ValueError(f"backend 'triton' needs CUDA tensors, got device {device}")
        if dtype == torch.float64:
            raise ValueError("backend 'triton' does not support float64; use 'chunkwise' or 'parallel'")
    return choice


def mlstm(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    *,
    backend: str | MLSTMBackend = "auto",
    chunk_size: int | None = None,
    eps: float = 1e-6,
    state: MLSTMState | None = None,
    return_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, MLSTMState]:
    """The mLSTM sequence map with exponential input gate and sigmoid forget gate (stabilised, normalised).

    ``h_t = (sum_{j<=t} d_tj (q_t . k_j / sqrt(DH)) v_j) / (max(|sum_{j<=t} d_tj q_t . k_j / sqrt(DH)|, 1) + eps')``
    with ``d_tj = exp(i_j + sum_{j<l<=t} logsigmoid(f_l))`` and ``eps' = eps * exp(max_j log d_tj)``, computed in
    the stabilised form of ``parallel_stabilized_simple`` (Vision-LSTM) / ``mlstm_kernels``.

    Args:
        q, k: queries and keys, ``(B, NH, S, DH)``.
        v: values, ``(B, NH, S, DHV)``.
        i, f: input- and forget-gate pre-activations, ``(B, NH, S)``.
        backend: see :class:`MLSTMBackend`; ``auto`` (default) is triton chunkwise on CUDA, native chunkwise else.
        chunk_size: chunk length of the chunkwise kernels (ignored by ``parallel``); ``None`` (default): 16, 32 or
            64 by head dim for ``chunkwise`` (about DH, see ``_auto_chunk_size``), 64 for ``triton``. S is
            zero-padded at the end to a multiple of it (for ``chunkwise`` with small heads, of 16 chunks); the real
            tokens' outputs are unchanged because the recurrence is causal.
        eps: the kernels' ``eps`` in the normaliser.
        state: ``chunkwise`` only: the state ``(C, n, m)`` (:data:`MLSTMState`) before the first token, e.g. the
            returned state of the preceding part of the sequence; default: the empty state.
        return_state: ``chunkwise`` only: also return the state after the last token. Processing a sequence in
            parts, passing each part's returned state to the next, equals processing it whole.

    Returns:
        ``h``, ``(B, NH, S, DHV)``, in float32, or float64 if ``q`` is float64, whatever the autocast state; with
        ``return_state``, ``(h, state)``.

    Raises:
        ValueError: on inconsistent shapes, a non-positive ``chunk_size``, an unknown backend, ``triton`` without
            CUDA or with float64.
    """
    if q.dim() != 4:
        raise ValueError(f"q must be (B, NH, S, DH), got shape {tuple(q.shape)}")
    B, NH, S, DH = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be (B, NH, S, DHV) = ({B}, {NH}, {S}, DHV), got {tuple(v.shape)}")
    for name, gate in (("i", i), ("f", f)):
        if gate.shape != (B, NH, S):
            raise ValueError(f"{name} must be (B, NH, S) = ({B}, {NH}, {S}), got {tuple(gate.shape)}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")

    dtype = _compute_dtype(q)
    choice = _resolve_backend(backend, q.device, dtype)
    if (state is not None or return_state) and choice is not MLSTMBackend.CHUNKWISE:
        raise ValueError(f"state and return_state need backend 'chunkwise', got {choice.value!r}")
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v, i, f = (t.to(dtype) for t in (q, k, v, i, f))
        if choice is MLSTMBackend.PARALLEL:
            if S > _PARALLEL_WARN_S:
                warnings.warn(
                    f"mLSTM backend 'parallel' at S={S} materialises {B * NH} S x S matrices "
                    f"(~{B * NH * S * S * q.element_size() / 2**30:.0f} GiB each copy); use 'chunkwise'",
                    stacklevel=2,
                )
            return _kernel(choice)(q=q, k=k, v=v, i=i, f=f, eps=eps)

        if choice is MLSTMBackend.CHUNKWISE:
            chunk_size = chunk_size or _auto_chunk_size(DH)
            # as many segments as needed, each as full as possible, so that padding stays below one segment
            num_chunks = -(-S // chunk_size)
            num_segments = -(-num_chunks // _auto_segment(DH, v.shape[-1]))
            segment = -(-num_chunks // num_segments)
        else:
            chunk_size, segment = chunk_size or 64, 1
        pad = (-S) % (chunk_size * segment)
        if pad:
            # pad the END of the sequence dim: (B, NH, S + pad, DH) / (B, NH, S + pad). Zero q, k, v; for chunkwise
            # the padded tokens neither write (input gate -1e4) nor forget (forget gate +1e4: logsigmoid = 0), so
            # the returned state is that after the last real token; the real tokens' outputs are causal anyway.
            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
            neutral = choice is MLSTMBackend.CHUNKWISE
            i = F.pad(i, (0, pad), value=-1.0e4 if neutral else 0.0)
            f = F.pad(f, (0, pad), value=1.0e4 if neutral else 0.0)
        if choice is MLSTMBackend.CHUNKWISE:
            # (B, NH, S + pad, DHV)
            h, final = _chunkwise_native(
                q, k, v, i, f, chunk_size=chunk_size, segment=segment, eps=eps, state=state
            )
            h = h[:, :, :S] if pad else h
            return (h, final) if return_state else h
        else:
            h = _kernel(choice)(
                q=q,
                k=k,
                v=v,
                i=i,
                f=f,
                c_initial=q.new_zeros(B, NH, DH, v.shape[-1]),  # (B, NH, DH, DHV)
                n_initial=q.new_zeros(B, NH, DH),  # (B, NH, DH)
                m_initial=q.new_full((B, NH, 1), _M_INITIAL),  # (B, NH, 1)
                chunk_size=chunk_size,
                eps=eps,
                return_last_states=False,
            )  # (B, NH, S + pad, DHV)
        return h[:, :, :S] if pad else h


class MLSTMCell(nn.Module):
    """mLSTM cell: input/forget gates from ``concat(q, k, v)``, the mLSTM (:func:`mlstm`), multi-head LayerNorm.

    ``(q, k, v): 3 x (B, S, DI) -> (B, S, DI)``. Gates, kernel and norm run in float32 (float64 for float64 input)
    with autocast disabled.

    Args:
        dim: DI, the inner dimension; must be divisible by ``num_heads``.
        num_heads: NH.
        backend, chunk_size: passed to :func:`mlstm`.

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

        ``state``, ``return_state``: the mLSTM state before / after the sequence, as in :func:`mlstm`; with
        ``return_state`` the result is ``(h, state)``. ``gates``: the gate pre-activations ``(B, S, 2 NH)`` (input
        gates first, bias included) when the caller computed them (:meth:`ViLLayer.forward_with_state` folds them
        into its projections); ``None``: computed here from ``concat(q, k, v)``. ``normalize=False``: ``h`` before
        the output norm, ``(B, NH, S, DH)`` (the layer applies the norm in :class:`_GatedOutput`).
        """
        B, S, _ = q.shape
        dtype = _compute_dtype(q)
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k, v = (t.to(dtype) for t in (q, k, v))
            if gates is None:
                w_q, w_k, w_v, bias = self.gate_weights(dtype)
                gates = F.linear(q, w_q) + F.linear(k, w_k) + F.linear(v, w_v, bias)  # (B, S, 2 NH)
            i, f = gates.to(dtype).transpose(1, 2).split(self.num_heads, dim=1)  # 2 x (B, NH, S)
            # (B, S, DI) -> (B, S, NH, DH) -> (B, NH, S, DH)
            q, k, v = (t.view(B, S, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
            h = mlstm(  # (B, NH, S, DH)[, state]
                q, k, v, i, f, backend=self.backend, chunk_size=self.chunk_size, state=state, return_state=return_state
            )
            if return_state:
                h, state = h
            if normalize:
                # the multi-head LayerNorm (xlstm's MultiHeadLayerNorm: group norm with NH groups on (B S, NH DH)) as
                # a LayerNorm over DH in place, then the weight on (B, S, DI): same values, no transposed copy first
                h = F.layer_norm(h.to(self.outnorm.weight.dtype), (h.shape[-1],), eps=self.outnorm.eps)
                h = h.transpose(1, 2).flatten(2)  # (B, NH, S, DH) -> (B, S, NH, DH) -> (B, S, DI)
                h = h * self.outnorm.weight_proxy  # (B, S, DI)
        return (h, state) if return_state else h

    def gate_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The gates' linear map on ``concat(q, k, v)`` split by input block: ``w_q, w_k, w_v`` ``(2 NH, DI)`` and
        the bias ``(2 NH,)``, input gate first, in ``dtype`` (one weight per block: no ``(B, S, 3 DI)`` concat)."""
        weight = torch.cat([self.igate.weight, self.fgate.weight]).to(dtype)  # (2 NH, 3 DI)
        bias = torch.cat([self.igate.bias, self.fgate.bias]).to(dtype)  # (2 NH,)
        return (*weight.split(self.dim, dim=1), bias)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, backend={self.backend.value}, chunk_size={self.chunk_size}"


class ViLLayer(nn.Module):
    """The ViL layer (Vision-LSTM's mLSTM layer): ``(B, S, D) -> (B, S, D)``.

    1. ``proj_up`` to ``2 * DI`` and split into the mLSTM branch ``x`` and the gate branch ``z``;
    2. conv on ``x`` (``causal1d`` k=4 along the sequence, or ``grid`` k=3 on the spatial grid), then SiLU;
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
        conv_kind: see :class:`ConvKind` (default ``causal1d``).
        spatial_dims: number of spatial dims of the grid; required for ``conv_kind="grid"``, ignored otherwise.
        backend, chunk_size: passed to :func:`mlstm`.

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
        conv_kind: str | ConvKind = ConvKind.CAUSAL1D,
        spatial_dims: int | None = None,
        backend: str | MLSTMBackend = MLSTMBackend.AUTO,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if dim < 1 or expansion < 1:
            raise ValueError(f"dim and expansion must be positive, got dim={dim}, expansion={expansion}")
        inner = expansion * dim
        num_heads = _divisor_or_warn(inner, num_heads, "num_heads")
        qkv_block_size = _divisor_or_warn(inner, qkv_block_size, "qkv_block_size")
        self.dim = dim
        self.inner_dim = inner
        self.conv_kind = _enum(ConvKind, conv_kind, "conv_kind")

        self.proj_up = nn.Linear(dim, 2 * inner, bias=False)
        qkv_config = LinearHeadwiseExpandConfig(in_features=inner, num_heads=inner // qkv_block_size, bias=False)
        self.q_proj = LinearHeadwiseExpand(qkv_config)
        self.k_proj = LinearHeadwiseExpand(qkv_config)
        self.v_proj = LinearHeadwiseExpand(qkv_config)
        self.conv: nn.Module
        if self.conv_kind is ConvKind.CAUSAL1D:
            self.spatial_dims = None
            self.conv = CausalConv1d(CausalConv1dConfig(feature_dim=inner, kernel_size=4, causal_conv_bias=True))
        else:
            if spatial_dims not in (1, 2, 3):
                raise ValueError(f"conv_kind='grid' needs spatial_dims in (1, 2, 3), got {spatial_dims!r}")
            self.spatial_dims = spatial_dims
            conv_op = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[spatial_dims - 1]
            self.conv = conv_op(inner, inner, kernel_size=3, padding=1, groups=inner, bias=True)
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

    def _conv(self, x: torch.Tensor, spatial_shape: Sequence[int] | None) -> torch.Tensor:
        if self.conv_kind is ConvKind.CAUSAL1D:
            return self.conv(x)  # (B, S, DI)
        if spatial_shape is None:
            raise ValueError("conv_kind='grid' needs spatial_shape in forward (the grid that the tokens flatten)")
        spatial_shape = tuple(int(s) for s in spatial_shape)
        B, S, DI = x.shape
        if len(spatial_shape) != self.spatial_dims or math.prod(spatial_shape) != S:
            raise ValueError(
                f"spatial_shape must have {self.spatial_dims} dims with product S={S}, got {spatial_shape}"
            )
        grid = x.transpose(1, 2).reshape(B, DI, *spatial_shape)  # (B, S, DI) -> (B, DI, *spatial)
        return self.conv(grid).flatten(2).transpose(1, 2)  # (B, DI, *spatial) -> (B, S, DI)

    def forward(self, x: torch.Tensor, spatial_shape: Sequence[int] | None = None) -> torch.Tensor:
        """``x``: ``(B, S, D)``; ``spatial_shape``: the grid of the S tokens (needed by ``grid`` conv only).

        Returns ``(B, S, D)``.
        """
        return self.forward_with_state(x, spatial_shape)[0]

    def forward_with_state(
        self,
        x: torch.Tensor,
        spatial_shape: Sequence[int] | None = None,
        state: ViLLayerState | None = None,
        return_state: bool = False,
    ) -> tuple[torch.Tensor, ViLLayerState | None]:
        """:meth:`forward` that continues a sequence: ``state`` is the state after the preceding tokens (``None``:
        start of the sequence); with ``return_state`` the state after ``x`` is returned (else ``None``).

        The state is ``(conv_state, mlstm_state)``: the last 3 conv inputs ``(B, 3, DI)`` and :data:`MLSTMState`.
        Needs ``conv_kind="causal1d"`` and the ``chunkwise`` backend; then running a sequence in parts, passing
        the state along, equals running it whole.
        """
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected (B, S, D={self.dim}), got {tuple(x.shape)}")
        stateful = state is not None or return_state
        if stateful and self.conv_kind is not ConvKind.CAUSAL1D:
            raise ValueError("a ViLLayer state needs conv_kind='causal1d' (a grid conv sees the whole grid)")
        conv_state, mlstm_state = state if state is not None else (None, None)
        x_mlstm, z = self.proj_up(x).chunk(2, dim=-1)  # 2 x (B, S, DI)
        if stateful:
            x_conv, conv_state = self.conv(x_mlstm, conv_state=conv_state, return_last_state=True)  # (B, S, DI)
        else:
            x_conv = self._conv(x_mlstm, spatial_shape)  # (B, S, DI)
        # the convs compute channels-first, (B, DI, S); their (B, S, DI) views would carry that layout through every
        # elementwise op after them, against the (B, S, DI) layout of all else (strided loops): one copy instead.
        # Measured (fwd + bwd, min of 3 in 2 alternations): 32-channel 32x96x96 stage 6.2 / 5.8 s -> 5.3 / 4.9 s,
        # 32-channel 256x256 stage 1.36 / 1.29 s -> 1.22 / 1.19 s.
        x_conv = F.silu(x_conv.contiguous())  # (B, S, DI)
        q, k, v, gates = self._qkv_gates(x_conv, x_mlstm)  # 3 x (B, S, DI), (B, S, 2 NH) or None
        h = self.mlstm_cell(q, k, v, mlstm_state, stateful, gates, normalize=False)  # (B, NH, S, DH)[, state]
        h, mlstm_state = h if stateful else (h, None)  # float32
        # (norm(h) + learnable_skip * x_conv) * silu(z), (B, S, DI), in one autograd node (see _GatedOutput)
        norm = self.mlstm_cell.outnorm
        h = _GatedOutput.apply(h, norm.weight_proxy, self.learnable_skip, x_conv, z, norm.eps)
        return self.proj_down(h), ((conv_state, mlstm_state) if return_state else None)  # (B, S, D)

    def _qkv_gates(
        self, x_conv: torch.Tensor, x_mlstm: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``q, k`` from ``x_conv``, ``v`` from ``x_mlstm`` (each ``(B, S, DI)``), and the cell's gate
        pre-activations ``(B, S, 2 NH)`` when they are folded in here (else ``None``: the cell computes them).

        For DI <= 128 the headwise (block-diagonal) projections run as dense matmuls, q and k as one; in float32 /
        float64 without autocast the gates' linear map is folded into them too (``w_q Q + w_k K`` on ``x_conv``,
        ``w_v V`` on ``x_mlstm``). Same values as the headwise einsums and the cell's own gates, fewer passes over
        ``(B, S, DI)`` memory and no skinny ``(B S, DI) x (DI, 2 NH)`` matmuls (measured on CPU, 32-channel
        256x256 ViL stage fwd + bwd: 1.57 s -> 1.3 s together with the per-head LayerNorm in the cell).
        """
        if self.inner_dim > _DENSE_QKV_MAX_DIM:
            return self.q_proj(x_conv), self.k_proj(x_conv), self.v_proj(x_mlstm), None
        w_q, w_k, w_v = (_block_diagonal(p.weight) for p in (self.q_proj, self.k_proj, self.v_proj))  # (DI, DI)
        if not _fold_gates(x_conv):
            q, k = F.linear(x_conv, torch.cat([w_q, w_k])).chunk(2, dim=-1)  # 2 x (B, S, DI)
            return q, k, F.linear(x_mlstm, w_v), None
        g_q, g_k, g_v, bias = self.mlstm_cell.gate_weights(x_conv.dtype)  # 3 x (2 NH, DI), (2 NH,)
        w_conv = torch.cat([w_q, w_k, g_q @ w_q + g_k @ w_k])  # (2 DI + 2 NH, DI)
        q, k, gates_conv = F.linear(x_conv, w_conv).split([self.inner_dim, self.inner_dim, bias.numel()], dim=-1)
        v, gates_v = F.linear(x_mlstm, torch.cat([w_v, g_v @ w_v])).split([self.inner_dim, bias.numel()], dim=-1)
        return q, k, v, gates_conv + gates_v + bias

    def extra_repr(self) -> str:
        return f"dim={self.dim}, inner_dim={self.inner_dim}, conv_kind={self.conv_kind.value}"


class _GatedOutput(torch.autograd.Function):
    """The ViL layer's output before ``proj_down``: ``(LN(h) * w + skip * x_conv) * silu(z)``, ``(B, S, DI)``.

    ``h`` ``(B, NH, S, DH)`` is the mLSTM output, ``LN`` the LayerNorm over DH without affine (eps 1e-5, xlstm's
    MultiHeadLayerNorm), ``w`` its weight ``(DI,)``; ``skip`` ``(DI,)``, ``x_conv`` and ``z`` ``(B, S, DI)``. Computed
    in ``h``'s dtype (float32, or float64). Autograd would save five ``(B, S, DI)`` intermediates (the normalised
    ``h`` twice, the sum, ``silu(z)``, the product); this node saves ``h`` and the LayerNorm statistics (``x_conv``
    and ``z`` are saved by their other consumers anyway) and recomputes the rest in backward. Same values as the
    composition of those ops (tested, with ``gradcheck``).
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


def _fold_gates(x: torch.Tensor) -> bool:
    """Whether :meth:`ViLLayer._qkv_gates` folds the gates into the projections for the input ``x``: only where
    they would be computed in ``x``'s dtype anyway (float32 / float64 without autocast); under autocast the
    projections run in low precision while the cell computes the gates in float32."""
    return x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled(x.device.type)


def _block_diagonal(weight: torch.Tensor) -> torch.Tensor:
    """A headwise weight ``(NB, O, I)`` (``xlstm``'s ``LinearHeadwiseExpand``) as the dense block-diagonal
    ``(NB O, NB I)`` weight of ``F.linear``."""
    nb, out_per_block, in_per_block = weight.shape
    eye = torch.eye(nb, dtype=weight.dtype, device=weight.device)
    return torch.einsum("hg,hoi->hogi", eye, weight).reshape(nb * out_per_block, nb * in_per_block)


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
        piece_bytes: CPU only: a long sequence is processed in pieces of whole 1024-token multiples whose
            up-projection (``B x piece x 2 DI`` float32) stays within this many bytes, each piece starting from the
            previous piece's layer state (:meth:`ViLLayer.forward_with_state`); the result is the same as in one
            piece (to rounding). Smaller temporaries are recycled by the C allocator instead of being mapped fresh
            from the OS for every operation, which otherwise dominates on CPU at long sequences. Default 16 MiB;
            ``None`` disables it. Not used with ``conv_kind="grid"``, the ``parallel`` backend or on GPU.
        checkpoint: gradient checkpointing: keep only the block's input (per piece: the piece and the state
            entering it) for backward and recompute the rest there (``torch.utils.checkpoint``, non-reentrant).
            Trades about one extra forward for the block's activation memory; with pieces, the memory of one
            piece's recomputation is all that is added. ``None`` (default, "auto"): exactly when the sequence runs
            in pieces (CPU, long sequences), where recomputing costs about what writing the saved activations to
            fresh memory costs (measured in the benchmark's enc train step, 3D: 41.1 s / 9.9 GB without, 41.8 s /
            5.5 GB with); ``True`` / ``False``: always / never (e.g. ``True`` on GPU to save memory).
        **layer_kwargs: keyword arguments of :class:`ViLLayer` (expansion, num_heads, qkv_block_size, conv_kind,
            spatial_dims, backend, chunk_size).

    The norm is ``xlstm``'s LayerNorm without bias (weight stored as a residual around 1), as Vision-LSTM.

    On CPU, after a forward in pieces under autograd whose input has at least 32 MiB, the C heap's free pages are
    returned to the OS (glibc ``malloc_trim``). Tensors above 32 MiB, such as the feature maps around such a
    stage, are always mapped fresh by glibc and cannot reuse the 1-1.7 GB of free, fragmented heap that the train
    step leaves there (3D enc train step, checkpointed: peak RSS 5.5 -> 4.5 GB, 44.8 -> 37.8 s in one sitting).
    Smaller stages do not trim: there the trim's page faults cost more than it saves (2D enc train step: 7.6-8.2 s
    / 3.9 GB without, 8.9-9.4 s / 3.7 GB with).
    """

    def __init__(
        self,
        dim: int,
        *,
        reverse: bool = False,
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
        self.layer = ViLLayer(dim, **layer_kwargs)

    def reset_parameters(self) -> None:
        """Reset the norm and the layer (Vision-LSTM's init)."""
        self.norm.reset_parameters()
        self.layer.reset_parameters()

    def piece_tokens(self, x: torch.Tensor) -> int | None:
        """Tokens per piece for the input ``x`` ``(B, S, D)``, or ``None`` when it is processed in one piece."""
        if self.piece_bytes is None or x.device.type != "cpu" or self.layer.conv_kind is not ConvKind.CAUSAL1D:
            return None
        if _resolve_backend(self.layer.mlstm_cell.backend, x.device, _compute_dtype(x)) is not MLSTMBackend.CHUNKWISE:
            return None
        bytes_per_token = x.shape[0] * 2 * self.layer.inner_dim * 4
        piece = max(1024, self.piece_bytes // bytes_per_token // 1024 * 1024)
        return piece if x.shape[1] > piece else None

    def forward(self, x: torch.Tensor, spatial_shape: Sequence[int] | None = None) -> torch.Tensor:
        """``x``: ``(B, S, D)`` -> ``(B, S, D)``; ``spatial_shape`` as in :meth:`ViLLayer.forward`.

        With ``reverse``, flipping the sequence flips every spatial axis of the grid, so ``spatial_shape`` stays.
        """
        piece = self.piece_tokens(x)
        grad_enabled = torch.is_grad_enabled()
        checkpointed = grad_enabled and (piece is not None if self.checkpoint is None else self.checkpoint)
        if piece is None:
            return _maybe_checkpoint(checkpointed, self._whole, x, spatial_shape)
        # pieces in processing order (from the end when reversed): full pieces first, the remainder last
        S = x.shape[1]
        sizes = [piece] * (S // piece) + ([S % piece] if S % piece else [])
        pieces = x.split(sizes[::-1], dim=1)[::-1] if self.reverse else x.split(sizes, dim=1)
        outputs, state = [], None
        for part in pieces:  # (B, P, D)
            y, state = _maybe_checkpoint(checkpointed, self._piece, part, state)
            outputs.append(y)
        y = torch.cat(outputs[::-1] if self.reverse else outputs, dim=1)  # (B, S, D)
        del outputs, state  # the pieces' outputs are free once concatenated, so the trim below can return them
        if grad_enabled and x.numel() * x.element_size() >= _TRIM_MIN_BYTES:
            _release_free_heap()  # see the class docstring
        return y

    def _whole(self, x: torch.Tensor, spatial_shape: Sequence[int] | None) -> torch.Tensor:
        """The block on the whole sequence ``(B, S, D)``."""
        y = self.norm(x)  # (B, S, D)
        if self.reverse:
            y = self.layer(y.flip(1), spatial_shape).flip(1)
        else:
            y = self.layer(y, spatial_shape)
        return x + y

    def _piece(self, part: torch.Tensor, state: ViLLayerState | None) -> tuple[torch.Tensor, ViLLayerState]:
        """The block on one piece ``(B, P, D)`` in processing order, from the layer state before it."""
        y = self.norm(part)
        y, state = self.layer.forward_with_state(y.flip(1) if self.reverse else y, state=state, return_state=True)
        return part + (y.flip(1) if self.reverse else y), state

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
          ``feature_size`` is given, ``prod(feature_size) <= channels`` and ``conv_kind`` is ``causal1d`` (a grid
          conv needs voxel tokens).

    Args:
        channels: C.
        feature_size: the spatial size this stage will see (needed for channel tokens and to infer
            ``spatial_dims``); ``None`` if unknown.
        directions: ``forward`` (default; one block, as the official code) or ``bidirectional`` (a forward and a
            reversed block, as Vision-LSTM's ``ViLBlockPair``).
        conv_kind: ``causal1d`` (default, official) or ``grid`` (depthwise k=3 conv on the spatial grid).
        backend: mLSTM backend (default ``auto``: triton on CUDA, native chunkwise on CPU), see :class:`MLSTMBackend`.
        num_heads: mLSTM heads (default 4).
        expansion: inner-dim factor (default 2).
        chunk_size: chunkwise kernel chunk length (default ``None``: by head dim, see :func:`mlstm`).
        channel_tokens: ``True``/``False`` to force a token mode; ``None`` (default) = auto, see above.
        spatial_dims: number of spatial dims, needed for ``conv_kind="grid"`` when ``feature_size`` is ``None``.
        piece_bytes: CPU piece size of long sequences, see :class:`ViLBlock` (default 16 MiB; ``None``: off).
        checkpoint: gradient checkpointing of every block (see :class:`ViLBlock`): trades about one extra forward
            of the stage for its activation memory, which dominates at the full-resolution stages. ``None``
            (default): auto, i.e. where a block runs in pieces (CPU); ``True`` / ``False``: always / never.

    Raises:
        ValueError: on invalid options, channel tokens without ``feature_size`` or with ``grid`` conv, ``grid`` conv
            without a known number of spatial dims; in ``forward``, on a channel count or (channel-token mode)
            spatial size that does not match.

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
        conv_kind: str | ConvKind = ConvKind.CAUSAL1D,
        backend: str | MLSTMBackend = MLSTMBackend.AUTO,
        num_heads: int = 4,
        expansion: int = 2,
        chunk_size: int | None = None,
        channel_tokens: bool | None = None,
        spatial_dims: int | None = None,
        piece_bytes: int | None = 2**24,
        checkpoint: bool | None = None,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        self.channels = channels
        self.directions = _enum(Direction, directions, "directions")
        conv = _enum(ConvKind, conv_kind, "conv_kind")
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

        if channel_tokens is None:
            channel_tokens = (
                self.feature_size is not None
                and math.prod(self.feature_size) <= channels
                and conv is ConvKind.CAUSAL1D
            )
        elif channel_tokens:
            if self.feature_size is None:
                raise ValueError("channel_tokens=True needs feature_size (the token dim is prod(feature_size))")
            if conv is ConvKind.GRID:
                raise ValueError("channel_tokens=True cannot use conv_kind='grid': channel tokens have no grid")
        self.channel_tokens = bool(channel_tokens)
        if conv is ConvKind.GRID and spatial_dims is None:
            raise ValueError("conv_kind='grid' needs feature_size or spatial_dims to build its Conv{1,2,3}d")

        dim = math.prod(self.feature_size) if self.channel_tokens else channels
        reverses = (False,) if self.directions is Direction.FORWARD else (False, True)
        self.blocks = nn.ModuleList(
            ViLBlock(
                dim,
                reverse=reverse,
                piece_bytes=piece_bytes,
                checkpoint=checkpoint,
                expansion=expansion,
                num_heads=num_heads,
                conv_kind=conv,
                spatial_dims=spatial_dims,
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
        if self.channel_tokens:
            if tuple(spatial) != self.feature_size:
                raise ValueError(
                    f"channel-token mode was built for spatial size {self.feature_size}, got {tuple(spatial)}"
                )
            tokens = x.flatten(2)  # (B, C, *spatial) -> (B, S=C, D=N)
            for block in self.blocks:
                tokens = block(tokens)
            return tokens.reshape(B, C, *spatial)  # (B, C, N) -> (B, C, *spatial)
        # (B, C, *spatial) -> (B, S=N, D=C), copied into token-major order once: as a transposed view, the pieces, the
        # norm and the residual sums would run strided (32-channel 256x256 stage fwd + bwd: 1.26 / 1.31 s -> 1.11 /
        # 1.16 s in two alternations)
        tokens = x.flatten(2).transpose(1, 2).contiguous()
        for block in self.blocks:
            tokens = block(tokens, spatial)
        return tokens.transpose(1, 2).reshape(B, C, *spatial)  # (B, N, C) -> (B, C, *spatial)

    @property
    def checkpoint(self) -> bool | None:
        """The blocks' gradient checkpointing (the ``checkpoint`` argument; ``None``: auto)."""
        return self.blocks[0].checkpoint

    def extra_repr(self) -> str:
        checkpoint = "auto" if self.checkpoint is None else self.checkpoint
        return (
            f"channels={self.channels}, feature_size={self.feature_size}, directions={self.directions.value}, "
            f"channel_tokens={self.channel_tokens}, checkpoint={checkpoint}"
        )
