"""Tests for xlstm_unet.networks: presets, shapes, gradients, nnU-Net plans, init, state dicts, validation.

Tiny 2D (5 stages, 32x32) and 3D (5 stages, 8x16x16) configurations keep the suite fast on 2 CPU cores.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from dynamic_network_architectures.architectures.unet import ResidualUNet
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from xlstm_unet import networks
from xlstm_unet.networks import ResidualViLStage, VilPlacement, XLSTMUNet, vil_stage_indices
from xlstm_unet.vil import ViLStage

REPO = Path(__file__).resolve().parents[1]

# name -> (conv_op, norm_op, patch, strides, features)
CONFIGS = {
    2: (nn.Conv2d, nn.InstanceNorm2d, (32, 32), [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]], [8, 8, 16, 16, 16]),
    # anisotropic strides as nnU-Net plans them: 8x16x16 -> 8x8x8 -> 4x4x4 -> 4x2x2 -> 2x2x2
    3: (
        nn.Conv3d,
        nn.InstanceNorm3d,
        (8, 16, 16),
        [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2], [2, 1, 1]],
        [4, 8, 8, 16, 16],
    ),
}
NUM_CLASSES = 3


def arch_kwargs(dim: int, **overrides) -> dict:
    """Constructor kwargs in nnU-Net's plans form (classes already imported)."""
    conv_op, norm_op, patch, strides, features = CONFIGS[dim]
    kwargs = dict(
        input_channels=2,
        n_stages=len(features),
        features_per_stage=list(features),
        conv_op=conv_op,
        kernel_sizes=[[3] * dim for _ in features],
        strides=copy.deepcopy(strides),
        num_classes=NUM_CLASSES,
        n_conv_per_stage=[1, 2, 1, 1, 1],
        n_conv_per_stage_decoder=[1, 1, 1, 1],
        conv_bias=True,
        norm_op=norm_op,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=True,
        vil_placement="enc",
        patch_size=list(patch),
    )
    kwargs.update(overrides)
    return kwargs


def expected_ds_shapes(dim: int, batch: int) -> list[tuple[int, ...]]:
    """Deep-supervision output shapes, highest resolution first, from the cumulative strides."""
    _, _, patch, strides, _ = CONFIGS[dim]
    shapes, size = [], list(patch)
    for stride in strides[:-1]:
        size = [p // s for p, s in zip(size, stride)]
        shapes.append((batch, NUM_CLASSES, *size))
    return shapes


# ----------------------------------------------------------------------------------------------- placement presets


@pytest.mark.parametrize(
    ("placement", "n_stages", "dim", "expected"),
    [
        ("bot", 7, 2, [6]),
        ("bot", 5, 3, [4]),
        ("enc", 7, 2, [0, 1, 2, 3, 4, 5, 6]),
        ("enc", 5, 3, [0, 1, 2, 3, 4]),
        # official 2D: (s odd) xor (n_stages odd), and s > 1
        ("enc_official", 7, 2, [2, 4, 6]),
        ("enc_official", 6, 2, [3, 5]),
        ("enc_official", 8, 2, [3, 5, 7]),
        # official 3D: s >= 3
        ("enc_official", 5, 3, [3, 4]),
        ("enc_official", 6, 3, [3, 4, 5]),
        (VilPlacement.BOT, 4, 2, [3]),
        ([4, 0, 2], 5, 2, [0, 2, 4]),
        ((1,), 3, 3, [1]),
    ],
)
def test_vil_stage_indices(placement, n_stages, dim, expected):
    assert vil_stage_indices(placement, n_stages, dim) == expected


def test_enc_official_last_stage_always_has_vil_in_2d():
    # the official comment: the parity rule guarantees the bottleneck carries a ViL layer
    for n in range(3, 10):
        assert vil_stage_indices("enc_official", n, 2)[-1] == n - 1


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        ("encoder", "unknown vil_placement 'encoder'"),
        ([0, 5], "index 5 out of range"),
        ([-1], "index -1 out of range"),
        ([1, 1], "duplicate"),
        ([True], "stage indices"),
        ([1.5], "stage indices"),
        (3, "preset name or a sequence"),
    ],
)
def test_vil_stage_indices_rejects_bad_placement(placement, message):
    with pytest.raises(ValueError, match=message):
        vil_stage_indices(placement, 5, 2)


def test_vil_stage_indices_warns_when_no_vil():
    with pytest.warns(UserWarning, match="no ViL module"):
        assert vil_stage_indices("enc_official", 3, 3) == []
    with pytest.warns(UserWarning, match="empty"):
        assert vil_stage_indices([], 3, 2) == []
    with pytest.raises(ValueError, match="dim must be 2 or 3"):
        vil_stage_indices("enc", 3, 1)


# ------------------------------------------------------------------------------ forward / backward, every preset


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("placement", ["bot", "enc", "enc_official", [1, 3]])
def test_forward_backward_every_preset(dim, placement):
    torch.manual_seed(0)
    net = XLSTMUNet(**arch_kwargs(dim, vil_placement=placement))
    n_stages = len(CONFIGS[dim][4])
    expected_stages = vil_stage_indices(placement, n_stages, dim)

    # the ViL modules sit exactly at the preset's stages, with the stage's channel count
    vils = [m for m in net.modules() if isinstance(m, ViLStage)]
    assert len(vils) == len(expected_stages)
    assert list(net.vil_stages) == expected_stages
    for s in range(n_stages):
        stage = net.encoder.stages[s]
        assert isinstance(stage, ResidualViLStage) == (s in expected_stages)

    calls = []
    hooks = [v.register_forward_hook(lambda mod, inp, out: calls.append(out.shape)) for v in vils]
    x = torch.randn(1, 2, *CONFIGS[dim][2])
    outputs = net(x)
    for h in hooks:
        h.remove()
    assert len(calls) == len(vils)  # every ViL module is on the forward path

    assert [tuple(o.shape) for o in outputs] == expected_ds_shapes(dim, 1)
    loss = sum(o.float().square().mean() for o in outputs)
    loss.backward()
    # deep supervision uses every head, so every parameter must get a finite gradient: no unused layers
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_forward_without_patch_size_accepts_other_sizes():
    torch.manual_seed(0)
    net = XLSTMUNet(**arch_kwargs(2, patch_size=None, deep_supervision=False))
    out = net(torch.randn(2, 2, 48, 64))
    assert out.shape == (2, NUM_CLASSES, 48, 64)


# ----------------------------------------------------------------------------------------------- deep supervision


@pytest.mark.parametrize("dim", [2, 3])
def test_deep_supervision_toggle_matches_nnunet_convention(dim):
    torch.manual_seed(0)
    net = XLSTMUNet(**arch_kwargs(dim, vil_placement="bot", deep_supervision=False)).eval()
    x = torch.randn(2, 2, *CONFIGS[dim][2])
    with torch.no_grad():
        single = net(x)
        assert isinstance(single, torch.Tensor)
        assert single.shape == expected_ds_shapes(dim, 2)[0]
        # what nnUNetTrainer.set_deep_supervision_enabled does
        net.decoder.deep_supervision = True
        multi = net(x)
    assert isinstance(multi, list)
    assert [tuple(o.shape) for o in multi] == expected_ds_shapes(dim, 2)
    torch.testing.assert_close(multi[0], single)


# ---------------------------------------------------------------------------------------------- nnU-Net plans


def plans_architecture(dim: int, **extra) -> dict:
    """An `architecture` entry as it appears in an nnU-Net plans JSON (ResEnc style: n_blocks_per_stage)."""
    _, _, patch, strides, features = CONFIGS[dim]
    return {
        "network_class_name": "xlstm_unet.networks.XLSTMUNet",
        "arch_kwargs": {
            "n_stages": len(features),
            "features_per_stage": list(features),
            "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
            "kernel_sizes": [[3] * dim for _ in features],
            "strides": strides,
            "n_blocks_per_stage": [1, 2, 1, 1, 1],
            "n_conv_per_stage_decoder": [1, 1, 1, 1],
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
            "patch_size": list(patch),
            **extra,
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


@pytest.mark.parametrize("dim", [2, 3])
def test_built_by_nnunet_get_network_from_plans(dim):
    arch = json.loads(json.dumps(plans_architecture(dim, vil_placement="enc_official")))  # survives a JSON round trip
    torch.manual_seed(0)
    net = get_network_from_plans(
        arch["network_class_name"],
        arch["arch_kwargs"],
        arch["_kw_requires_import"],
        input_channels=2,
        output_channels=NUM_CLASSES,
        allow_init=True,
        deep_supervision=True,
    )
    assert isinstance(net, XLSTMUNet)
    assert list(net.vil_stages) == vil_stage_indices("enc_official", 5, dim)
    assert sum(isinstance(m, ViLStage) for m in net.modules()) == len(net.vil_stages)
    assert type(net.encoder.stem.convs[0].conv) is getattr(nn, f"Conv{dim}d")
    outputs = net(torch.randn(1, 2, *CONFIGS[dim][2]))
    assert [tuple(o.shape) for o in outputs] == expected_ds_shapes(dim, 1)
    # nnU-Net's planner estimates memory with this method
    assert net.compute_conv_feature_map_size(CONFIGS[dim][2]) > 0


def test_initialize_keeps_vil_init_and_inits_the_convs(monkeypatch):
    torch.manual_seed(0)
    net = XLSTMUNet(**arch_kwargs(2))
    vil_before = {k: v.clone() for k, v in net.state_dict().items() if ".vil." in k}
    assert vil_before
    stem_before = net.encoder.stem.convs[0].conv.weight.clone()

    net.apply(net.initialize)  # what get_network_from_plans(allow_init=True) does

    for key, value in net.state_dict().items():
        if key in vil_before:
            torch.testing.assert_close(value, vil_before[key], rtol=0, atol=0, msg=f"ViL param {key} was changed")
    assert not torch.equal(net.encoder.stem.convs[0].conv.weight, stem_before)
    # ResidualEncoderUNet's init: zero gamma on the last norm of each residual block
    last_block = net.encoder.stages[1].blocks.blocks[-1]
    assert torch.count_nonzero(last_block.conv2.norm.weight) == 0

    # the ViL modules never reach nnU-Net's initialisers (whatever they would do to them)
    seen = []
    monkeypatch.setattr(networks, "InitWeights_He", lambda neg_slope: seen.append)
    net.apply(net.initialize)
    vil_modules = {id(sub) for stage in net.modules() if isinstance(stage, ViLStage) for sub in stage.modules()}
    assert len(seen) > len(vil_modules) > 0
    assert not any(id(m) in vil_modules for m in seen)


@pytest.mark.parametrize("dim", [2, 3])
def test_no_vil_equals_dynamic_network_architectures_residual_unet(dim):
    """With no ViL stage, the network is exactly dynamic-network-architectures' ResidualUNet (residual encoder and
    residual decoder): same state-dict keys, same outputs."""
    kwargs = arch_kwargs(dim, deep_supervision=True)
    with pytest.warns(UserWarning, match="empty"):
        ours = XLSTMUNet(**{**kwargs, "vil_placement": []})
    reference_kwargs = {k: v for k, v in kwargs.items() if k not in ("vil_placement", "patch_size", "n_conv_per_stage")}
    torch.manual_seed(1)
    theirs = ResidualUNet(**reference_kwargs, n_blocks_per_stage=kwargs["n_conv_per_stage"])
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 2, *CONFIGS[dim][2])
    with torch.no_grad():
        for a, b in zip(ours.eval()(x), theirs.eval()(x), strict=True):
            torch.testing.assert_close(a, b)
    patch = CONFIGS[dim][2]
    assert ours.compute_conv_feature_map_size(patch) == theirs.compute_conv_feature_map_size(patch)


def test_feature_map_size_counts_vil_outputs():
    """nnU-Net's planner memory estimate: the ViL stages add their output maps to the residual U-Net's count."""
    _, _, patch, strides, features = CONFIGS[3]
    with pytest.warns(UserWarning, match="empty"):
        plain = XLSTMUNet(**arch_kwargs(3, vil_placement=[]))
    net = XLSTMUNet(**arch_kwargs(3, vil_placement=[0, 3]))
    sizes, size = [], list(patch)
    for stride in strides:
        size = [p // s for p, s in zip(size, stride)]
        sizes.append(math.prod(size))
    extra = features[0] * sizes[0] + features[3] * sizes[3]
    assert net.compute_conv_feature_map_size(patch) == plain.compute_conv_feature_map_size(patch) + extra
    with pytest.raises(ValueError, match="spatial sizes"):
        net.compute_conv_feature_map_size((2, *patch))


# ------------------------------------------------------------------------------------------- ViL wiring


def test_vil_stages_get_feature_sizes_and_kwargs(monkeypatch):
    seen = []

    class RecordingViLStage(ViLStage):
        def __init__(self, channels, **kwargs):
            seen.append((channels, kwargs))
            super().__init__(channels, **kwargs)

    monkeypatch.setattr(networks, "ViLStage", RecordingViLStage)
    vil_kwargs = {"directions": "bidirectional", "num_heads": 2}
    XLSTMUNet(**arch_kwargs(3, vil_placement="enc", vil_kwargs=vil_kwargs))
    assert vil_kwargs == {"directions": "bidirectional", "num_heads": 2}  # not mutated

    _, _, patch, strides, features = CONFIGS[3]
    expected, size = [], list(patch)
    for stride, channels in zip(strides, features):
        size = [p // s for p, s in zip(size, stride)]
        expected.append((channels, {"feature_size": tuple(size), "spatial_dims": 3, **vil_kwargs}))
    assert seen == expected

    seen.clear()
    XLSTMUNet(**arch_kwargs(3, vil_placement="bot", patch_size=None))
    assert seen == [(features[-1], {"feature_size": None, "spatial_dims": 3})]


# ------------------------------------------------------------------------------------------------- state dict


def test_state_dict_round_trip_gives_equal_outputs():
    torch.manual_seed(0)
    net = XLSTMUNet(**arch_kwargs(2, vil_placement="enc_official")).eval()
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)

    torch.manual_seed(123)
    fresh = XLSTMUNet(**arch_kwargs(2, vil_placement="enc_official")).eval()
    x = torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        reference = net(x)
        assert not torch.allclose(fresh(x)[0], reference[0])  # different weights before loading
        buffer.seek(0)
        fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
        for a, b in zip(fresh(x), reference, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"features_per_stage": [8, 8, 16]}, "features_per_stage must have 5 entries"),
        ({"kernel_sizes": [[3, 3]] * 4}, "kernel_sizes must have 5 entries"),
        ({"kernel_sizes": [[3, 3, 3]] * 5}, r"kernel_sizes\[0\] must have 2 entries"),
        ({"strides": [[1, 1], [2, 2], [2, 2], [2, 2], [0, 2]]}, "positive ints"),
        ({"n_conv_per_stage_decoder": [1, 1, 1, 1, 1]}, "n_conv_per_stage_decoder must have 4 entries"),
        ({"n_conv_per_stage": [1, 1], "n_blocks_per_stage": None}, "n_conv_per_stage must have 5 entries"),
        ({"n_blocks_per_stage": [2, 2, 2, 2, 2]}, "differ"),
        ({"n_conv_per_stage": None}, "neither"),
        ({"vil_placement": "everywhere"}, "unknown vil_placement"),
        ({"vil_placement": [0, 7]}, "out of range"),
        ({"conv_op": nn.Conv1d}, "conv_op must be nn.Conv2d or nn.Conv3d"),
        ({"n_stages": 1, "features_per_stage": 8}, "n_stages must be an int >= 2"),
        ({"patch_size": [30, 32]}, "divisible by the total stride"),
        ({"patch_size": [32, 32, 32]}, "patch_size must have 2 entries"),
        ({"vil_kwargs": {"feature_size": (4, 4)}}, "must not set"),
        ({"num_classes": 0}, "num_classes must be a positive int"),
    ],
)
def test_constructor_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        XLSTMUNet(**arch_kwargs(2, **overrides))


def test_dropout_op_without_kwargs():
    net = XLSTMUNet(**arch_kwargs(2, vil_placement="bot", dropout_op=nn.Dropout2d, dropout_op_kwargs=None))
    assert sum(isinstance(m, nn.Dropout2d) for m in net.modules()) > 0
    net.eval()(torch.randn(1, 2, 32, 32))


def test_alias_n_blocks_per_stage_accepted_when_equal():
    kwargs = arch_kwargs(2, vil_placement="bot")
    net = XLSTMUNet(**{**kwargs, "n_blocks_per_stage": list(kwargs["n_conv_per_stage"])})
    assert [len(s.blocks) for s in net.encoder.stages[:-1]] == kwargs["n_conv_per_stage"][:-1]


def test_forward_validation():
    net = XLSTMUNet(**arch_kwargs(2, vil_placement="bot", patch_size=None))
    with pytest.raises(ValueError, match="divisible by the total stride"):
        net(torch.randn(1, 2, 24, 32))
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(1, 3, 32, 32))


def test_arguments_are_not_mutated():
    kwargs = arch_kwargs(3, vil_placement=[3, 1], vil_kwargs={"num_heads": 4})
    snapshot = copy.deepcopy(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        XLSTMUNet(**kwargs)
    assert kwargs == snapshot


def test_enc_official_without_patch_size_warns():
    with pytest.warns(UserWarning, match="channel tokens"):
        XLSTMUNet(**arch_kwargs(2, vil_placement="enc_official", patch_size=None))


# -------------------------------------------------------------------------------------------------- benchmark


def _load_benchmark():
    name = "_benchmark_train_step"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "train_step.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


ROW_KEYS = {"model", "dim", "size", "batch", "params", "step_s", "peak_mb"}


def check_row(row: dict, model: str, dim: int) -> None:
    assert set(row) >= ROW_KEYS
    assert (row["model"], row["dim"]) == (model, dim)
    assert len(row["size"]) == dim and all(isinstance(i, int) for i in row["size"])
    assert row["batch"] == 2 and isinstance(row["params"], int) and row["params"] > 0
    assert math.isfinite(row["step_s"]) and row["step_s"] > 0
    assert math.isfinite(row["peak_mb"]) and row["peak_mb"] > 0


@pytest.mark.parametrize("mode", ["quick", "default", "paper_sizes"])
@pytest.mark.parametrize("dim", [2, 3])
def test_train_step_benchmark_configs_are_valid(dim, mode):
    bench = _load_benchmark()
    config = bench.get_config(dim, quick=mode == "quick", paper_sizes=mode == "paper_sizes")
    n_stages = len(config.features)
    assert len(config.strides) == len(config.blocks) == n_stages
    assert len(config.size) == dim and all(len(s) == dim for s in config.strides)
    total = [math.prod(s[a] for s in config.strides) for a in range(dim)]
    assert all(size % t == 0 for size, t in zip(config.size, total))


@pytest.mark.slow
@pytest.mark.parametrize("dim", [3])  # 2D runs end to end below
def test_train_step_benchmark_worker_runs_every_model(dim):
    """One tiny train step of every model, in this process (the script forks a process for each)."""
    bench = _load_benchmark()
    config = bench.get_config(dim, quick=True, paper_sizes=False)
    models = bench.MODELS + bench.EXTRA_MODELS
    rows = {m: bench.run_worker(m, dim, config, "cpu", False, warmup=0, repeats=1) for m in models}
    for model, row in rows.items():
        check_row(row, model, dim)
        with_vil = model not in ("resenc", "resunet")
        # enc_ckpt: enc with checkpointed ViL stages; enc_stub: enc with a stand-in for the mLSTM kernel
        placement = "enc" if model in ("enc_ckpt", "enc_stub") else model
        assert row["vil_stages"] == (vil_stage_indices(placement, len(config.features), dim) if with_vil else [])
        if with_vil:  # the ViL modules add parameters on top of the same residual U-Net
            assert row["params"] > rows["resunet"]["params"]
    assert rows["resunet"]["params"] > rows["resenc"]["params"]  # residual vs plain-conv decoder
    assert rows["enc_stub"]["params"] == rows["enc"]["params"]


def test_train_step_benchmark_stub_kernel_replaces_and_restores_mlstm():
    """enc_stub's stand-in has the kernel's output and state shapes, is what the ViL layers call inside the context
    (the layer's output changes), and the real kernel is back afterwards, also after an error."""
    from xlstm_unet import vil

    bench = _load_benchmark()
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 40, 8) for _ in range(3))
    i, f = (torch.randn(2, 4, 40) for _ in range(2))
    h, state = bench.stub_mlstm(q, k, v, i, f, return_state=True)
    h_ref, state_ref = vil.mlstm(q, k, v, i, f, return_state=True)
    assert h.shape == h_ref.shape and [s.shape for s in state] == [s.shape for s in state_ref]
    torch.testing.assert_close(h, v + q * k + (i + f)[..., None])

    original = vil.mlstm
    layer = vil.ViLLayer(16).eval()
    x = torch.randn(2, 40, 16)
    with torch.no_grad():
        real = layer(x)
        with bench.mlstm_replaced(True):
            assert vil.mlstm is bench.stub_mlstm
            stubbed = layer(x)
        with bench.mlstm_replaced(False):
            assert vil.mlstm is original
    assert vil.mlstm is original
    assert not torch.allclose(real, stubbed)
    with pytest.raises(RuntimeError, match="inside"):
        with bench.mlstm_replaced(True):
            raise RuntimeError("inside")
    assert vil.mlstm is original


@pytest.mark.slow
def test_train_step_benchmark_quick_json_schema():
    # the script end to end, for one model (each model adds a forked process and its train steps)
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--json", "--quick", "--models", "bot",
         "--methods", "nnunet,mednext", "--dims", "2", "--warmup", "0"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert set(result) >= {"device", "rows"}
    assert result["device"] == "cpu" and result["mode"] == "quick"
    bot, nnunet, mednext = result["rows"]
    check_row(bot, "bot", 2)
    assert bot["vil_stages"] == [3] and bot["flops"] > 0 and bot["infer_s"] is None
    # a registry method, built by its nnU-Net trainer, with nnU-Net's sliding-window prediction of one case
    check_row(nnunet, "nnunet", 2)
    assert nnunet["flops"] > 0 and nnunet["infer_s"] > 0
    assert nnunet["case_shape"] == [96, 96]  # --quick: 1.5 times the 64 x 64 patch per axis
    # a method that is not defined in 2D keeps its row, saying why
    assert mednext["model"] == "mednext" and mednext["step_s"] is None and "3D only" in mednext["not_run"]
