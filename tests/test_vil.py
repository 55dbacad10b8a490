"""Tests of xlstm_unet.vil: the mLSTM backends, the ViL layer/block/stage, and the scaling benchmark's contract.

The references are independent of the code under test: ``mlstm_kernels``' quadratic parallel kernel differentiated
by autograd, in float64, and structural properties (causality, flip symmetry, token order).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xlstm_unet.vil import Direction, MLSTMBackend, ViLBlock, ViLLayer, ViLStage, mlstm

REPO = Path(__file__).resolve().parents[1]


# tiny tensors: one intra-op thread (see conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def _qkvif(S: int, dtype: torch.dtype, seed: int = 0, B: int = 1, NH: int = 2, DH: int = 16):
    """Random mLSTM inputs: q, k, v ~ N(0, 1); input gates ~ N(0, 1); forget gates ~ N(2, 2) (short and long memory)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, NH, S, DH, generator=gen, dtype=torch.float64) for _ in range(3))
    i = torch.randn(B, NH, S, generator=gen, dtype=torch.float64)
    f = 2.0 + 2.0 * torch.randn(B, NH, S, generator=gen, dtype=torch.float64)
    return [t.to(dtype) for t in (q, k, v, i, f)]


def _value_and_grads(inputs, backend: str, seed: int = 1, **kwargs):
    """h = mlstm(*inputs) and d<h, g>/d(q, k, v, i, f) for a fixed random g; all returned in float64."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    h = mlstm(*leaves, backend=backend, **kwargs)
    g = torch.randn(h.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (h * g.to(h.dtype)).sum().backward()
    return [h.detach().double()] + [t.grad.double() for t in leaves]


@pytest.mark.parametrize("S", [64, 300, 1000])
def test_chunkwise_equals_parallel_float64(S):
    inputs = _qkvif(S, torch.float64)
    ref = _value_and_grads(inputs, "parallel")
    out = _value_and_grads(inputs, "chunkwise", chunk_size=64)
    for name, a, b in zip(["h", "dq", "dk", "dv", "di", "df"], out, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("S", [64, 300, 1000])
def test_chunkwise_float32_matches_parallel(S):
    """Float32 chunkwise within 1e-4 (relative to each tensor's max magnitude) of the parallel form.

    The reference is the parallel form in float64, because the parallel form in float32 is itself less accurate
    than that at S=1000 (its global cumsum of log forget gates loses digits: about 1.5e-4 relative here), while the
    chunkwise form's error stays below 1e-5.
    """
    ref = _value_and_grads(_qkvif(S, torch.float64), "parallel")
    out = _value_and_grads(_qkvif(S, torch.float32), "chunkwise", chunk_size=64)
    for name, a, b in zip(["h", "dq", "dk", "dv", "di", "df"], out, ref):
        scale = b.abs().max().item()
        err = (a - b).abs().max().item()
        assert err <= 1e-4 * scale, f"{name}: max abs error {err:.3e} > 1e-4 * max|ref| = {1e-4 * scale:.3e}"


@pytest.mark.parametrize("dtype, gate", [(torch.float32, -100.0), (torch.float64, -800.0)])
def test_chunkwise_gradients_stay_finite_when_a_row_weight_underflows(dtype, gate):
    """A first token whose input gate is below -log(max float) (-88.7 in float32) has no weight above exp(gate), so
    the normaliser's exp(-m) overflows. Its h is ~0 either way; the gradients must stay finite and match the
    parallel form's in float64 (float32 case, where exp(100) is finite) or be finite (float64 case)."""
    q, k, v, i, f = _qkvif(64, torch.float64)
    i = i.clone()
    i[..., 0] = gate
    out = _value_and_grads([t.to(dtype) for t in (q, k, v, i, f)], "chunkwise", chunk_size=16)
    for name, a in zip(["h", "dq", "dk", "dv", "di", "df"], out):
        assert torch.isfinite(a).all(), f"{name} has non-finite values"
    assert out[0][..., 0, :].abs().max() < 1e-30
    if dtype == torch.float32:
        ref = _value_and_grads([q, k, v, i, f], "parallel")
        for name, a, b in zip(["h", "dq", "dk", "dv", "di", "df"], out, ref):
            err, scale = (a - b).abs().max().item(), b.abs().max().item()
            assert err <= 1e-4 * scale, f"{name}: max abs error {err:.3e} > 1e-4 * max|ref| = {1e-4 * scale:.3e}"


@pytest.mark.parametrize("DH", [8, 16, 32, 64, 128])
@pytest.mark.parametrize("S", [300, 1000])
def test_chunkwise_default_chunking_equals_parallel(S, DH):
    """The default chunking (chunk length by head dim; the segmented state scan for DH * DHV <= 1024, e.g. 4 segments
    of 16 chunks at S=1000, DH=8..16; the loop over chunks at DH=64; within-chunk matrices recomputed in backward
    for DH <= L, saved for DH=128 > L=64) equals the parallel form in float64."""
    inputs = _qkvif(S, torch.float64, seed=7, DH=DH)
    ref = _value_and_grads(inputs, "parallel")
    out = _value_and_grads(inputs, "chunkwise")
    for name, a, b in zip(["h", "dq", "dk", "dv", "di", "df"], out, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8, msg=lambda m, n=name: f"{n}: {m}")


def _chunked_inputs(S: int, L: int, DH: int, seed: int):
    """Chunked q, k, v (B, NH, NC, L, DH) and vecI, vecB, vecA, g, amax as ``_chunkwise_native`` builds them."""
    import torch.nn.functional as F

    q, k, v, i, f = _qkvif(S, torch.float64, seed=seed, B=2, NH=3, DH=DH)
    B, NH, NC = 2, 3, S // L
    vecI = i.view(B, NH, NC, L)
    vecB = F.logsigmoid(f).view(B, NH, NC, L).cumsum(-1)
    vecA = vecB[..., -1:] - vecB + vecI
    chunked = [t.view(B, NH, NC, L, DH) for t in (q, k, v)]
    return (q, k, v), chunked, vecI, vecB, vecA, vecB[..., -1], vecA.amax(-1)


@pytest.mark.parametrize("segment", [1, 2, 4, 8])
def test_segmented_chunk_states_equal_the_loop(segment):
    """The segmented state scan gives the loop's states (C, n and the stabiliser m), for 1 to 8 segments."""
    from xlstm_unet.vil.kernels import _chunk_states_loop, _chunk_states_segmented

    _, (_, k, v), _, _, vecA, g, amax = _chunked_inputs(S=256, L=8, DH=4, seed=8)
    C, n, m, final = _chunk_states_loop(k, v, vecA, g, amax)
    ref = [C, n, m, *final]
    C, n, m, final = _chunk_states_segmented(k, v, vecA, g, amax, segment)
    out = [C, n, m, *final]
    for name, a, b in zip(["C", "n", "m", "C_last", "n_last", "m_last"], out, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def test_chunk_outputs_equal_mlstm_kernels_fw_h():
    """Our within-chunk outputs equal ``mlstm_kernels``' ``mlstm_chunkwise__parallel_fw_H`` on the same states."""
    from mlstm_kernels.torch.chunkwise.native.fw import mlstm_chunkwise__parallel_fw_H

    from xlstm_unet.vil.kernels import _chunk_outputs, _chunk_states_loop

    S, L, DH = 128, 16, 8
    (q, k, v), (qc, kc, vc), vecI, vecB, vecA, g, amax = _chunked_inputs(S=S, L=L, DH=DH, seed=9)
    C, n, m, _ = _chunk_states_loop(kc, vc, vecA, g, amax)
    B, NH, NC = C.shape[:3]
    ref, _, _ = mlstm_chunkwise__parallel_fw_H(
        matQ=q, matK=k, matV=v, matC_states=C.reshape(B, NH, NC * DH, DH), vecN_states=n.reshape(B, NH, NC * DH),
        scaMinter_states=m, vecI=vecI, vecB=vecB, qk_scale=DH**-0.5, chunk_size=L, num_chunks=NC, eps=1e-6,
    )
    out = _chunk_outputs(qc, kc, vc, C, n, m, vecI, vecB, eps=1e-6).reshape(B, NH, S, DH)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("DH", [16, 64])  # segmented states / loop over chunks
def test_mlstm_in_parts_with_state_equals_whole(DH):
    """Processing a sequence in parts (lengths 37, 200, 63: not multiples of the chunk, so padded), each part
    starting from the previous part's returned state, equals processing it whole: outputs, input gradients, and
    the final state (vs the whole sequence's)."""
    inputs = _qkvif(300, torch.float64, seed=11, DH=DH)
    whole_leaves = [t.clone().requires_grad_(True) for t in inputs]
    h_whole, state_whole = mlstm(*whole_leaves, backend="chunkwise", return_state=True)
    part_leaves = [t.clone().requires_grad_(True) for t in inputs]
    parts, state, start = [], None, 0
    for length in (37, 200, 63):
        part = [t[:, :, start:start + length] for t in part_leaves]
        h, state = mlstm(*part, backend="chunkwise", state=state, return_state=True)
        parts.append(h)
        start += length
    h_parts = torch.cat(parts, 2)
    torch.testing.assert_close(h_parts, h_whole, rtol=0, atol=1e-10)
    for a, b in zip(state, state_whole):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    g = torch.randn(h_whole.shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    (h_whole * g).sum().backward()
    (h_parts * g).sum().backward()
    for name, a, b in zip("qkvif", part_leaves, whole_leaves):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-8, msg=lambda m, n=name: f"d{n}: {m}")
    with pytest.raises(ValueError, match="need backend 'chunkwise'"):
        mlstm(*inputs, backend="parallel", return_state=True)


@pytest.mark.parametrize("backend", ["parallel", "chunkwise"])
def test_backends_equal_the_official_parallel_form(backend):
    """Both backends equal ``parallel_stabilized_simple`` (the form in Vision-LSTM and the official xLSTM-UNet code,
    shipped by ``xlstm``), eps included."""
    from xlstm.blocks.mlstm.backends import parallel_stabilized_simple

    q, k, v, i, f = _qkvif(200, torch.float64, seed=5)
    ref = parallel_stabilized_simple(q, k, v, i[..., None], f[..., None])  # gates as (B, NH, S, 1)
    torch.testing.assert_close(mlstm(q, k, v, i, f, backend=backend), ref, rtol=0, atol=1e-10)


def test_padding_leaves_real_tokens_unchanged():
    """The first 100 tokens of a 128-token sequence equal the 100-token sequence (padded to 128 internally)."""
    long = _qkvif(128, torch.float64, seed=3)
    short = [t[:, :, :100] for t in long]
    h_long = mlstm(*long, backend="chunkwise", chunk_size=64)
    h_short = mlstm(*short, backend="chunkwise", chunk_size=64)
    assert h_short.shape == (1, 2, 100, 16)
    torch.testing.assert_close(h_short, h_long[:, :, :100], rtol=0, atol=1e-12)


def test_mlstm_computes_in_float32_under_bf16_autocast():
    inputs = [t.to(torch.bfloat16) for t in _qkvif(200, torch.float32, seed=4)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = mlstm(*inputs, backend="chunkwise")
    assert h.dtype == torch.float32
    ref = mlstm(*[t.float() for t in inputs], backend="parallel")
    torch.testing.assert_close(h, ref, rtol=1e-4, atol=1e-4)


def test_mlstm_rejects_bad_input():
    q, k, v, i, f = _qkvif(64, torch.float32)
    with pytest.raises(ValueError, match="k must have q's shape"):
        mlstm(q, k[:, :, :32], v, i, f)
    with pytest.raises(ValueError, match=r"i must be \(B, NH, S\)"):
        mlstm(q, k, v, i[..., :10], f)
    with pytest.raises(ValueError, match="backend must be one of"):
        mlstm(q, k, v, i, f, backend="quadratic")
    with pytest.raises(ValueError, match="chunk_size"):
        mlstm(q, k, v, i, f, chunk_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            mlstm(q, k, v, i, f, backend="triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the triton kernel needs a CUDA GPU")
@pytest.mark.parametrize("S", [64, 300, 1000])
def test_triton_forward_equals_parallel_cuda(S):
    inputs = [t.cuda() for t in _qkvif(S, torch.float32, DH=64)]
    ref = mlstm(*[t.double() for t in inputs], backend="parallel")
    out = mlstm(*inputs, backend="triton").double()
    assert mlstm(*inputs, backend="auto").shape == out.shape
    assert (out - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()


def _double_block(**kwargs) -> ViLBlock:
    torch.manual_seed(0)
    return ViLBlock(8, backend="chunkwise", chunk_size=16, **kwargs).double()


@pytest.mark.parametrize("fast_path", [True, False])
def test_reverse_block_equals_flip_forward_flip(fast_path):
    fwd, rev = _double_block(fast_path=fast_path), _double_block(reverse=True, fast_path=fast_path)
    rev.load_state_dict(fwd.state_dict())
    x = torch.randn(2, 35, 8, dtype=torch.float64)  # S = 35: not a multiple of the chunk size 16
    y_rev = rev(x)
    y_flip = fwd(x.flip(1)).flip(1)
    torch.testing.assert_close(y_rev, y_flip, rtol=0, atol=1e-12)
    assert (y_rev - fwd(x)).abs().max() > 1e-3  # the direction matters


@pytest.mark.parametrize("reverse", [False, True])
def test_block_is_causal_in_its_direction(reverse):
    """Changing token t0 leaves every token before it (forward) or after it (reverse) unchanged, padding included."""
    block = _double_block(reverse=reverse)
    x = torch.randn(1, 45, 8, dtype=torch.float64)
    t0 = 20
    x2 = x.clone()
    x2[:, t0] += 1.0
    delta = (block(x2) - block(x)).abs().amax(dim=(0, 2))  # (S,)
    untouched = delta[t0 + 1 :] if reverse else delta[:t0]
    touched = delta[:t0] if reverse else delta[t0 + 1 :]
    assert untouched.max() < 1e-12
    assert touched.min() > 0


@pytest.mark.parametrize(
    "spatial, directions",
    [((6, 5), "forward"), ((6, 5), "bidirectional"), ((3, 4, 5), "forward"), ((3, 4, 5), "bidirectional")],
)
def test_stage_round_trip_and_backend_equality(spatial, directions):
    torch.manual_seed(0)
    kwargs = {"feature_size": spatial, "directions": directions, "chunk_size": 16}
    stage = ViLStage(8, backend="chunkwise", **kwargs).double()
    ref = ViLStage(8, backend="parallel", **kwargs).double()
    ref.load_state_dict(stage.state_dict())
    assert not stage.channel_tokens
    assert len(stage.blocks) == (2 if directions == "bidirectional" else 1)
    x = torch.randn(2, 8, *spatial, dtype=torch.float64)
    y = stage(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, ref(x), rtol=0, atol=1e-10)


def test_stage_scans_rows_from_top_left():
    """Forward stage with causal conv: changing voxel (r, c) only changes voxels at or after it in row-major order."""
    torch.manual_seed(0)
    stage = ViLStage(8, backend="chunkwise").double()
    x = torch.randn(1, 8, 4, 6, dtype=torch.float64)
    x2 = x.clone()
    x2[0, :, 2, 3] += 1.0
    delta = (stage(x2) - stage(x)).abs().amax(dim=(0, 1)).flatten()  # (4 * 6,) in row-major order
    t0 = 2 * 6 + 3
    assert delta[:t0].max() < 1e-12
    assert delta[t0:].min() > 0


@pytest.mark.parametrize("fast_path", [True, False])
def test_gradients_reach_every_parameter(fast_path):
    torch.manual_seed(0)
    stage = ViLStage(8, directions="bidirectional", fast_path=fast_path)
    x = torch.randn(2, 8, 3, 4, 5, requires_grad=True)
    stage(x).square().mean().backward()
    for name, param in stage.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient for {name}"
    assert x.grad.abs().sum() > 0


def test_channel_token_mode():
    torch.manual_seed(0)
    stage = ViLStage(16, feature_size=(2, 2, 3), directions="bidirectional").double()  # 12 voxels <= 16 channels
    assert stage.channel_tokens
    assert stage.blocks[0].dim == 12  # the token dim is the voxel count
    x = torch.randn(2, 16, 2, 2, 3, dtype=torch.float64)
    assert stage(x).shape == x.shape
    with pytest.raises(ValueError, match=r"built for spatial size \(2, 2, 3\)"):
        stage(torch.randn(2, 16, 2, 2, 4, dtype=torch.float64))

    forward_only = ViLStage(16, feature_size=(2, 2, 3)).double()
    x2 = x.clone()
    x2[:, 5] += 1.0  # the sequence is the channels: channel 5 only affects channels >= 5
    delta = (forward_only(x2) - forward_only(x)).abs().amax(dim=(0, 2, 3, 4))  # (C,)
    assert delta[:5].max() < 1e-12 and delta[5:].min() > 0

    assert not ViLStage(16, feature_size=(4, 5)).channel_tokens  # 20 voxels > 16 channels
    assert ViLStage(16, feature_size=(4, 5), channel_tokens=True).blocks[0].dim == 20


def _saved_numel(fn) -> tuple[torch.Tensor, int]:
    """Elements that autograd saves for backward while ``fn()`` runs (packed by an outer saved-tensors hook)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total


def _saved_storage_bytes(fn, exclude: tuple[torch.Tensor, ...] = ()) -> tuple[torch.Tensor, int]:
    """``fn()`` and the bytes of the distinct storages that autograd saves for backward meanwhile, without those of
    ``exclude`` (e.g. the input, which the caller holds anyway)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    for t in exclude:
        storages.pop(t.untyped_storage().data_ptr(), None)
    return out, sum(storages.values())


def test_chunkwise_recomputes_its_within_chunk_matrices():
    """The chunkwise mLSTM keeps its within-chunk L x L intermediates out of the saved activations (recomputed in
    backward): at DH = L = 16 each of them is as large as q; keeping them saved ~14x q's bytes, now < 10x."""
    q, k, v, i, f = (t.requires_grad_(True) for t in _qkvif(4096, torch.float32, DH=16))
    _, saved = _saved_storage_bytes(lambda: mlstm(q, k, v, i, f, backend="chunkwise"))
    ratio = saved / (q.numel() * q.element_size())
    assert 3 < ratio < 10, ratio


@pytest.mark.parametrize("checkpoint", [False, True, None])
@pytest.mark.parametrize("reverse", [False, True])
def test_block_in_pieces_equals_one_piece(reverse, checkpoint):
    """A long sequence processed in 1024-token pieces with the layer state carried (the CPU default for long
    sequences), with or without checkpointing each piece (``None``, auto: checkpointed because in pieces), equals
    one piece: outputs and the gradients of the input and every parameter (float64)."""
    torch.manual_seed(0)
    whole = ViLBlock(8, reverse=reverse, backend="chunkwise", piece_bytes=None).double()  # auto: not checkpointed
    pieces = ViLBlock(8, reverse=reverse, backend="chunkwise", piece_bytes=1, checkpoint=checkpoint).double()
    pieces.load_state_dict(whole.state_dict())
    x = torch.randn(2, 2500, 8, dtype=torch.float64)  # 1024 + 1024 + 452 tokens
    assert whole.piece_tokens(x) is None and pieces.piece_tokens(x) == 1024
    results = []
    for block in (whole, pieces):
        xi = x.clone().requires_grad_(True)
        y, saved = _saved_numel(lambda b=block, xi=xi: b(xi))
        y.square().sum().backward()
        results.append((y.detach(), xi.grad, [p.grad for p in block.parameters()], saved))
    (y0, gx0, gp0, saved0), (y1, gx1, gp1, saved1) = results
    if checkpoint is not False:  # only the pieces and the states between them are kept
        assert saved1 * 10 < saved0, (saved1, saved0)
    else:
        assert saved1 > saved0 / 2, (saved1, saved0)
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-10)
    torch.testing.assert_close(gx1, gx0, rtol=0, atol=1e-8)
    for a, b in zip(gp1, gp0):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
    assert ViLBlock(8, backend="parallel", piece_bytes=1).piece_tokens(x) is None
    assert ViLBlock(8, fast_path=False, piece_bytes=1).piece_tokens(x) is None  # pieces are the fast path's
    with pytest.raises(ValueError, match="piece_bytes"):
        ViLBlock(8, piece_bytes=0)
    with pytest.raises(ValueError, match="checkpoint"):
        ViLBlock(8, checkpoint="yes")


def test_block_trims_the_heap_after_pieces_under_autograd(monkeypatch):
    """After a forward in pieces with autograd on, of an input of at least ``_TRIM_MIN_BYTES``, the block returns
    the C heap's free pages (once per forward); not in one piece, not under ``no_grad``, not for smaller inputs. On
    glibc the trim function is found."""
    import platform

    import xlstm_unet.vil.fast as fast

    if platform.libc_ver()[0] == "glibc":
        assert fast._malloc_trim() is not None
    fast._release_free_heap()  # callable here whatever the C library
    calls = []
    monkeypatch.setattr(fast, "_release_free_heap", lambda: calls.append(1))
    x = torch.randn(1, 2500, 8)
    pieces, whole = ViLBlock(8, piece_bytes=1), ViLBlock(8, piece_bytes=None)
    pieces(x)  # 80 KB < 32 MiB
    assert calls == []
    monkeypatch.setattr(fast, "_TRIM_MIN_BYTES", x.numel() * x.element_size())
    with torch.no_grad():
        pieces(x)
    whole(x)
    assert calls == []
    pieces(x)
    assert calls == [1]
    assert "checkpoint=auto" in repr(pieces) and "checkpoint=auto" in repr(ViLStage(8))


@pytest.mark.parametrize("feature_size", [(12, 10), (2, 2, 3)])  # patch tokens, channel tokens
def test_checkpointed_stage_equals_plain_and_saves_less(feature_size):
    """``checkpoint=True`` gives the same output and gradients (input and every parameter) and keeps far fewer
    saved activations (the blocks are recomputed in backward)."""
    torch.manual_seed(0)
    plain = ViLStage(16, feature_size=feature_size, directions="bidirectional").double()
    ckpt = ViLStage(16, feature_size=feature_size, directions="bidirectional", checkpoint=True).double()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 16, *feature_size, dtype=torch.float64)
    grads = []
    for stage in (plain, ckpt):
        xi = x.clone().requires_grad_(True)
        y, saved = _saved_numel(lambda s=stage, xi=xi: s(xi))
        y.square().sum().backward()
        grads.append((y.detach(), saved, xi.grad, [p.grad for p in stage.parameters()]))
    (y0, saved0, gx0, gp0), (y1, saved1, gx1, gp1) = grads
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-12)
    torch.testing.assert_close(gx1, gx0, rtol=0, atol=1e-10)
    for a, b in zip(gp1, gp0):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert saved1 * 10 < saved0, (saved1, saved0)
    assert "checkpoint=True" in repr(ckpt)


def _reference_layer(layer: ViLLayer, x: torch.Tensor) -> torch.Tensor:
    """The ViL layer composed plainly from its ``xlstm`` modules: headwise q/k/v einsums, ``igate``/``fgate`` on
    ``concat(q, k, v)``, the official parallel mLSTM form, ``MultiHeadLayerNorm`` (group norm)."""
    from xlstm.blocks.mlstm.backends import parallel_stabilized_simple

    x_mlstm, z = layer.proj_up(x).chunk(2, dim=-1)
    x_conv = torch.nn.functional.silu(layer.conv(x_mlstm))
    q, k, v = layer.q_proj(x_conv), layer.k_proj(x_conv), layer.v_proj(x_mlstm)
    cell = layer.mlstm_cell
    qkv = torch.cat([q, k, v], dim=-1)
    i, f = cell.igate(qkv).transpose(1, 2)[..., None], cell.fgate(qkv).transpose(1, 2)[..., None]
    B, S, DI = q.shape
    heads = [t.view(B, S, cell.num_heads, -1).transpose(1, 2) for t in (q, k, v)]
    h = cell.outnorm(parallel_stabilized_simple(*heads, i, f)).transpose(1, 2).reshape(B, S, DI)
    return layer.proj_down((h + layer.learnable_skip * x_conv) * torch.nn.functional.silu(z))


@pytest.mark.parametrize("dim", [16, 32, 96])  # DI 32 and 64: dense q/k/v with folded gates; DI 192: headwise
@pytest.mark.parametrize("fast_path, fold", [(True, True), (True, False), (False, None)])
def test_layer_equals_its_plain_composition(dim, fast_path, fold, monkeypatch):
    """Our layer (fast path: dense block-diagonal q/k/v for small DI, with the gates folded in or not, the fused
    output node; reference path: the paper's steps; either with the chunkwise mLSTM) equals the plain composition
    of its modules with the official parallel mLSTM form in value and parameter gradients (float64)."""
    import xlstm_unet.vil.fast as fast

    monkeypatch.setattr(fast, "_fold_gates", lambda x: fold)
    torch.manual_seed(0)
    layer = ViLLayer(dim, backend="chunkwise", fast_path=fast_path).double()
    with torch.no_grad():
        for param in layer.parameters():  # the init zeroes the gate weights and the norm: randomise everything
            param.normal_(0.0, 0.3)
    x = torch.randn(2, 70, dim, dtype=torch.float64)
    g = torch.randn(2, 70, dim, dtype=torch.float64)
    grads = []
    for fn in (layer, lambda t: _reference_layer(layer, t)):
        layer.zero_grad()
        y = fn(x)
        (y * g).sum().backward()
        grads.append((y.detach(), {n: p.grad.clone() for n, p in layer.named_parameters()}))
    (y, dy), (y_ref, dy_ref) = grads
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    for name in dy_ref:
        torch.testing.assert_close(dy[name], dy_ref[name], rtol=1e-8, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


def _gated_output_reference(h, weight, skip, x_conv, z, eps=1e-5):
    """``(LN_DH(h) * weight + skip * x_conv) * silu(z)`` by plain autograd ops, h ``(B, NH, S, DH)`` -> ``(B, S, DI)``."""
    B, NH, S, DH = h.shape
    normed = torch.nn.functional.layer_norm(h, (DH,), eps=eps).transpose(1, 2).reshape(B, S, NH * DH)
    return (normed * weight + skip * x_conv) * torch.nn.functional.silu(z)


def test_gated_output_gradients():
    """The layer's fused output node: finite-difference gradcheck (float64), and in the mixed precision of autocast
    (bf16 x_conv and z, float32 h) the gradients of plain autograd ops, each in its input's dtype."""
    from xlstm_unet.vil.fast import _GatedOutput

    gen = torch.Generator().manual_seed(0)
    B, NH, S, DH = 2, 3, 5, 4
    shapes = [(B, NH, S, DH), (NH * DH,), (NH * DH,), (B, S, NH * DH), (B, S, NH * DH)]
    inputs = [torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True) for shape in shapes]
    assert torch.autograd.gradcheck(lambda *a: _GatedOutput.apply(*a, 1e-5), inputs)

    dtypes = [torch.float32, torch.float32, torch.float32, torch.bfloat16, torch.bfloat16]
    mixed = [t.detach().to(d).requires_grad_(True) for t, d in zip(inputs, dtypes)]
    g = torch.randn(B, S, NH * DH, generator=gen)
    results = []
    for fn in (lambda *a: _GatedOutput.apply(*a, 1e-5), _gated_output_reference):
        out = fn(*mixed)
        results.append((out, torch.autograd.grad((out * g).sum(), mixed)))
    (out, grads), (out_ref, grads_ref) = results
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    for grad, grad_ref, dtype in zip(grads, grads_ref, dtypes):
        assert grad.dtype == dtype
        torch.testing.assert_close(grad.float(), grad_ref.float(), rtol=1e-2, atol=1e-2)


def test_full_resolution_layer_saves_few_activations():
    """The activations that one ViL layer at a full-resolution stage (D = 32, DI = 64, DH = 16) keeps for backward,
    as unique storage bytes relative to its input's: 38.7x when the output was plain autograd ops (each keeping its
    own (B, S, DI) intermediate) and q/k/v were strided views (copied anew by every matmul of the kernel, each copy
    saved); 30.2x with the fused output node (:class:`_GatedOutput`) and q/k/v made contiguous once."""
    torch.manual_seed(0)
    layer = ViLLayer(32, backend="chunkwise")
    x = torch.randn(2, 4096, 32, requires_grad=True)
    y, saved = _saved_storage_bytes(lambda: layer(x), exclude=(x,))
    ratio = saved / (x.numel() * x.element_size())
    assert ratio < 33, ratio
    y.sum().backward()  # and the graph still runs
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_cell_output_is_its_hidden_state_under_the_multi_head_norm():
    """``MLSTMCell`` (public; the layer uses ``normalize=False`` and norms inside :class:`_GatedOutput`) still returns
    xlstm's ``MultiHeadLayerNorm`` of its un-normed output, with the state, in float64."""
    from xlstm_unet.vil import MLSTMCell

    torch.manual_seed(0)
    cell = MLSTMCell(16, 4, backend="chunkwise").double()
    with torch.no_grad():
        cell.outnorm.weight.normal_(0.0, 0.3)
    q, k, v = (torch.randn(2, 40, 16, dtype=torch.float64) for _ in range(3))
    h, state = cell(q, k, v, return_state=True)
    raw, raw_state = cell(q, k, v, return_state=True, normalize=False)  # (B, NH, S, DH)
    assert raw.shape == (2, 4, 40, 4) and h.shape == (2, 40, 16)
    torch.testing.assert_close(h, cell.outnorm(raw).transpose(1, 2).reshape(2, 40, 16), rtol=0, atol=1e-12)
    for a, b in zip(state, raw_state):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gates_are_folded_only_without_autocast():
    from xlstm_unet.vil.fast import _fold_gates

    x = torch.zeros(1, 2, 3)
    assert _fold_gates(x) and _fold_gates(x.double()) and not _fold_gates(x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _fold_gates(x)


@pytest.mark.parametrize("fast_path", [True, False])
def test_bf16_autocast_on_cpu_is_finite(fast_path):
    torch.manual_seed(0)
    stage = ViLStage(16, directions="bidirectional", fast_path=fast_path)
    x = (30.0 * torch.randn(2, 16, 8, 9)).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = stage(x)
    y.float().square().mean().backward()
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(p.grad).all() for p in stage.parameters())
    with torch.no_grad():
        torch.testing.assert_close(y.float(), stage(x), rtol=0.1, atol=0.5)  # bf16 rounding only


def test_init_follows_vision_lstm_and_reset_restores_it():
    torch.manual_seed(0)
    stage = ViLStage(16, directions="bidirectional")
    layer: ViLLayer = stage.blocks[1].layer
    cell = layer.mlstm_cell

    def check():
        torch.testing.assert_close(cell.fgate.bias.detach(), torch.linspace(3.0, 6.0, 4))
        assert cell.fgate.weight.abs().sum() == 0 and cell.igate.weight.abs().sum() == 0
        assert 0 < cell.igate.bias.abs().max() < 1.0
        assert torch.equal(layer.learnable_skip.detach(), torch.ones(32))
        assert stage.blocks[1].norm.weight.abs().sum() == 0  # residual weight: effective scale 1
        # small init std sqrt(2 / (5 D)) = 0.158 for D=16; Wang init std 2 / sqrt(D) = 0.5
        assert 0.12 < layer.proj_up.weight.std() < 0.2 and 0.12 < layer.q_proj.weight.std() < 0.2
        assert 0.4 < layer.proj_down.weight.std() < 0.6

    check()
    with torch.no_grad():
        for p in stage.parameters():
            p.add_(1.0)
    stage.reset_parameters()
    check()


def test_invalid_options_raise():
    with pytest.raises(ValueError, match="channel_tokens=True needs feature_size"):
        ViLStage(8, channel_tokens=True)
    with pytest.raises(ValueError, match="spatial_dims must be"):
        ViLStage(8, spatial_dims=4)
    with pytest.raises(ValueError, match="expected 3 spatial dims"):
        ViLStage(8, spatial_dims=3)(torch.randn(1, 8, 3, 3))
    with pytest.raises(ValueError, match="fast_path must be"):
        ViLLayer(8, fast_path=None)
    with pytest.raises(ValueError, match="directions must be one of"):
        ViLStage(8, directions="both")
    with pytest.raises(ValueError, match=r"expected \(B, C=8, \*spatial\)"):
        ViLStage(8)(torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match=r"expected \(B, S, D=8\)"):
        ViLLayer(8)(torch.randn(1, 6, 4))
    with pytest.warns(UserWarning, match="num_heads=5; using num_heads=1"):
        assert ViLLayer(6, num_heads=5).mlstm_cell.num_heads == 1
    assert Direction("forward") is Direction.FORWARD and Direction("bidirectional") is Direction.BIDIRECTIONAL
    assert MLSTMBackend("auto") is MLSTMBackend.AUTO


@pytest.mark.slow
def test_benchmark_quick_json_contract():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "vil_scaling.py"), "--json", "--quick", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert result["device"] == "cpu" and result["dim"] == 32 and result["batch"] == 1
    expected_rows = [("chunkwise", 128), ("chunkwise", 256), ("parallel", 128)]
    assert [(r["backend"], r["S"]) for r in result["rows"]] == expected_rows
    for row in result["rows"]:
        assert set(row) == {"backend", "S", "fwd_bwd_s", "peak_mb"}
        assert row["fwd_bwd_s"] > 0 and row["peak_mb"] > 50  # the child imported torch: tens of MiB at least
    assert 0 <= result["max_abs_diff_vs_parallel"] < 1e-4
    assert 0 <= result["max_abs_grad_diff_vs_parallel"] < 1e-4
