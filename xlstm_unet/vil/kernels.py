"""The mLSTM sequence map (:func:`mlstm`) and its backends, linear in the sequence length S except the reference.

The mLSTM of Vision-LSTM (Alkin et al., arXiv 2406.04303) and xLSTM-UNet (Chen et al., arXiv 2407.01530): exponential
input gate, sigmoid forget gate, stabilised and normalised. The backends (:class:`MLSTMBackend`):

- ``parallel``: ``mlstm_kernels``' ``parallel--native_autograd``, the quadratic "parallel stabilized" form of the
  official code, kept as the reference (O(S^2) time and memory);
- ``chunkwise`` (CPU and GPU, pure PyTorch, time and memory linear in S), written here and differentiated by
  autograd: the chunk states by a loop over chunks (large heads) or 16 chunks at a time (small heads), the outputs
  within each chunk by the formula of ``mlstm_kernels``' ``mlstm_chunkwise__parallel_fw_H`` with fewer L x L
  intermediates; the chunk length follows the head dim (16 to 64);
- ``triton`` (CUDA): ``mlstm_kernels``' ``chunkwise--triton_xl_chunk``, as ``mlstm_kernels`` ships it (custom
  backward).

Why the chunkwise form is ours: ``mlstm_kernels``' ``chunkwise--native_autograd`` writes every chunk state into
slices of one preallocated buffer, and autograd's backward of each slice write copies the whole buffer, so its
backward time grows quadratically in S. ``chunkwise--native_custbw`` is linear, but its custom backward treats the
normaliser ``max(|n.q|, exp(-m))`` as a constant, so its q/k/i/f gradients differ from autograd through the parallel
form (by O(1) with unit-scale inputs). Our ``chunkwise`` equals ``parallel`` in value and gradient to rounding.

Dims legend:
    B: batch; NH: heads; S: sequence length; DH: head dim of queries and keys; DHV: head dim of values;
    L: chunk length; NC = S / L: number of chunks; T: chunks per segment of the segmented state scan.

Conventions:
    - The mLSTM always computes in float32 (float64 if its inputs are float64), with autocast disabled, so fp16/bf16
      mixed precision cannot overflow inside the exponential gating.
    - Sequences whose length is not a multiple of the chunk size are zero-padded at the END, which leaves the outputs
      of the real tokens of the causal recurrence unchanged.
    - The chunkwise forms start from the stabiliser state ``m_0 = -1e4`` (with zero ``C_0``, ``n_0``), not the
      kernels' default 0: then their stabiliser equals the parallel form's row maximum, and the ``eps`` in
      ``h = num / (max(|den|, exp(-m)) + eps)`` acts identically (with ``m_0 = 0`` they differ by ~1e-7).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from enum import Enum
from functools import lru_cache

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

__all__ = ["mlstm", "MLSTMBackend", "MLSTMState"]

# Initial stabiliser state for the chunkwise kernels; see the module docstring.
_M_INITIAL = -1.0e4
# Above this sequence length the parallel backend's S x S matrices are worth a warning (4 GB per head at S=32768).
_PARALLEL_WARN_S = 16384


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
    O(DH * DHV / L); L ~ DH balances the two.
    """
    return 16 if head_dim <= 16 else 32 if head_dim <= 32 else 64


def _auto_segment(head_dim: int, value_dim: int) -> int:
    """Chunks per segment of the segmented chunk-state scan (1 = a plain loop over chunks).

    Small heads have many small chunks (S / 16 in the full-resolution stages), for which a Python loop over chunks
    would dominate; their states are cheap, so they are computed 16 chunks at a time. Large heads (DH * DHV > 1024)
    have few chunks with large states, which the loop keeps in cache.
    """
    return 16 if head_dim * value_dim <= 1024 else 1


MLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""An mLSTM state ``(C, n, m)``: ``C`` ``(B, NH, DH, DHV)``, ``n`` ``(B, NH, DH)``, stabiliser ``m`` ``(B, NH)``."""

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
    # exp(-m_comb) overflows where every weight of a row is below exp(-88) (float32), e.g. a first token whose input
    # gate is below -88; the forward value is still right (h ~ 0), but exp's backward then multiplies inf by 0 and
    # turns every gradient into NaN. Capping the exponent at the largest one that does not overflow changes nothing
    # else: below the cap the values are identical, and above it h stays ~0 (num / huge) with a zero gradient.
    den = torch.maximum(den.abs(), torch.exp((-m_comb).clamp(max=_exp_limit(m_comb.dtype, m_comb.device.type))))
    return num * (den + eps).reciprocal()[..., None]  # not num / (den + eps): its backward takes 3 more full passes


@lru_cache(maxsize=None)
def _exp_limit(dtype: torch.dtype, device: str = "cpu") -> float:
    """The largest x of ``dtype`` whose ``torch.exp`` on ``device`` is finite (88.72... in float32, 709.78... in
    float64), checked on a vector as well as a scalar, since the vectorised exp may round differently at the
    boundary."""

    def finite(x: torch.Tensor) -> bool:
        return bool(torch.isfinite(torch.exp(x.expand(4096).contiguous())).all() and torch.isfinite(torch.exp(x)))

    x = torch.tensor(math.log(torch.finfo(dtype).max), dtype=dtype, device=device)
    up, down = (torch.tensor(v, dtype=dtype, device=device) for v in (math.inf, -math.inf))
    while not finite(x):
        x = torch.nextafter(x, down)
    while finite(torch.nextafter(x, up)):
        x = torch.nextafter(x, up)
    return x.item()


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
    # matmul would otherwise copy for each product anew (q and k come as strided views of the projections' output)
    q, k, v = (t.contiguous().view(B, NH, NC, L, t.shape[-1]) for t in (q, k, v))
    if segment == 1:
        C, n, m, final = _chunk_states_loop(k, v, vecA, g, amax, state)
    else:
        C, n, m, final = _chunk_states_segmented(k, v, vecA, g, amax, segment, state)
    # where L >= DH the L x L intermediates (each at least as large as q) are most of the saved memory: recompute
    # them in backward; with larger heads (DH > L) the recomputation costs more time than it saves memory
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
            return _parallel(q, k, v, i, f, eps=eps)
        if choice is MLSTMBackend.TRITON:
            return _triton(q, k, v, i, f, chunk_size=chunk_size or 64, eps=eps)
        h, final = _chunkwise(q, k, v, i, f, chunk_size=chunk_size or _auto_chunk_size(DH), eps=eps, state=state)
        return (h, final) if return_state else h


def _parallel(q, k, v, i, f, *, eps: float) -> torch.Tensor:
    """The reference: ``mlstm_kernels``' quadratic parallel form. Shapes as :func:`mlstm`."""
    B, NH, S, _ = q.shape
    if S > _PARALLEL_WARN_S:
        warnings.warn(
            f"mLSTM backend 'parallel' at S={S} materialises {B * NH} S x S matrices "
            f"(~{B * NH * S * S * q.element_size() / 2**30:.0f} GiB each copy); use 'chunkwise'",
            stacklevel=3,
        )
    return _kernel(MLSTMBackend.PARALLEL)(q=q, k=k, v=v, i=i, f=f, eps=eps)


def _chunkwise(
    q, k, v, i, f, *, chunk_size: int, eps: float, state: MLSTMState | None
) -> tuple[torch.Tensor, MLSTMState]:
    """Our chunkwise form (:func:`_chunkwise_native`) on any S: ``h`` ``(B, NH, S, DHV)`` and the state after the
    last token. S is padded at the end to a multiple of ``chunk_size`` times the segment (16 chunks for small heads;
    as many segments as needed, each as full as possible, so that the padding stays below one segment)."""
    S, DH = q.shape[2:]
    num_chunks = -(-S // chunk_size)
    num_segments = -(-num_chunks // _auto_segment(DH, v.shape[-1]))
    segment = -(-num_chunks // num_segments)
    # padded tokens neither write (input gate -1e4) nor forget (forget gate +1e4: logsigmoid = 0), so the returned
    # state is that after the last real token
    pad = (-S) % (chunk_size * segment)
    q, k, v, i, f = _pad_end(q, k, v, i, f, pad=pad, i_value=-1.0e4, f_value=1.0e4)
    h, final = _chunkwise_native(q, k, v, i, f, chunk_size=chunk_size, segment=segment, eps=eps, state=state)
    return (h[:, :, :S] if pad else h), final  # (B, NH, S, DHV)


def _triton(q, k, v, i, f, *, chunk_size: int, eps: float) -> torch.Tensor:
    """``mlstm_kernels``' triton chunkwise kernel (CUDA), from the same initial state as :func:`_chunkwise`."""
    B, NH, S, DH = q.shape
    pad = (-S) % chunk_size
    q, k, v, i, f = _pad_end(q, k, v, i, f, pad=pad, i_value=0.0, f_value=0.0)
    h = _kernel(MLSTMBackend.TRITON)(
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


def _pad_end(q, k, v, i, f, *, pad: int, i_value: float, f_value: float) -> list[torch.Tensor]:
    """Zero q, k, v and the given gate values appended at the end of the sequence dim (none when ``pad`` is 0):
    ``(B, NH, S + pad, DH)`` and ``(B, NH, S + pad)``. The real tokens' outputs are causal, hence unchanged."""
    if not pad:
        return [q, k, v, i, f]
    return [*(F.pad(t, (0, 0, 0, pad)) for t in (q, k, v)), F.pad(i, (0, pad), value=i_value),
            F.pad(f, (0, pad), value=f_value)]
