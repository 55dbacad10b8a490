"""The ViL fast path (:mod:`xlstm_unet.vil.fast`) against the reference path (``fast_path=False``): the same outputs
and the same gradients of the input and of every parameter, for 2D and 3D feature maps, in float32 and float64.

The cases cover each piece of the fast path: long sequences in pieces with the layer state carried (forward and
reversed blocks), dense q/k/v with the gates folded in (DI <= 128), headwise q/k/v (DI > 128), channel tokens, and
the fused output node everywhere.
"""

from __future__ import annotations

import math

import pytest
import torch

from xlstm_unet.vil import ViLStage


# tiny tensors: one intra-op thread (see conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


# name: (channels, input shape, stage kwargs, tokens per piece of the fast path or None)
CASES = {
    "2d_pieces_bidirectional": (8, (1, 8, 36, 36), {"directions": "bidirectional"}, 1024),
    "3d_pieces": (8, (1, 8, 4, 16, 20), {}, 1024),
    "2d_headwise": (72, (2, 72, 5, 6), {}, None),  # DI = 144 > 128: headwise q/k/v, gates in the cell's form
    "3d_channel_tokens": (16, (2, 16, 2, 2, 3), {"feature_size": (2, 2, 3), "directions": "bidirectional"}, None),
}
# max |fast - reference| relative to max |reference|, per tensor
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-4}


def _value_and_grads(stage: ViLStage, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stage's output on ``x`` and the gradients of ``<y, g>`` (fixed random ``g``) by input and parameter."""
    x = x.clone().requires_grad_(True)
    stage.zero_grad()
    y = stage(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    (y * g).sum().backward()
    return {"y": y.detach(), "x.grad": x.grad, **{n: p.grad for n, p in stage.named_parameters()}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_equals_reference_path(case, dtype):
    channels, shape, kwargs, piece = CASES[case]
    torch.manual_seed(0)
    fast = ViLStage(channels, backend="chunkwise", piece_bytes=1, **kwargs).to(dtype)
    with torch.no_grad():
        for param in fast.parameters():  # the init zeroes the gate weights and the norms: randomise everything
            param.normal_(0.0, 0.3)
    reference = ViLStage(channels, backend="chunkwise", fast_path=False, **kwargs).to(dtype)
    reference.load_state_dict(fast.state_dict())  # the same parameters under the same names
    assert fast.fast_path and not reference.fast_path

    x = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    S, D = (channels, math.prod(shape[2:])) if fast.channel_tokens else (math.prod(shape[2:]), channels)
    tokens = torch.empty(shape[0], S, D)  # what the blocks see
    assert fast.blocks[0].piece_tokens(tokens) == piece  # the case runs in pieces as intended
    assert reference.blocks[0].piece_tokens(tokens) is None

    ours, ref = _value_and_grads(fast, x), _value_and_grads(reference, x)
    assert ours.keys() == ref.keys()
    for name, b in ref.items():
        a = ours[name]
        assert a is not None and b is not None and a.dtype == b.dtype == dtype, name
        scale = b.abs().max().item()
        assert scale > 0, f"{name}: zero reference"
        err = (a - b).abs().max().item()
        assert err <= TOLERANCE[dtype] * scale, f"{name}: max abs diff {err:.3e} vs max |ref| {scale:.3e}"
