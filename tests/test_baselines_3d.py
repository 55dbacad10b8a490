"""The 3D baselines written from their papers (3D UX-Net, SegMamba, SegFormer3D): sizes against the papers, shapes,
gradients, the parts the papers define (scan orders, uncertainty weighting), nnU-Net integration.

Networks run at tiny widths, except in the nnU-Net runs on the 3D phantom (one iteration at the papers' sizes); the
papers' parameter counts are counted on the meta device.
"""

from __future__ import annotations

import copy
import json
import math
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_baselines import DATASET_JSON, PATCH, check_row_builds_trains_and_predicts, make_plans

from xlstm_unet.baselines import SegFormer3D, SegMamba, UXNet
from xlstm_unet.baselines.segmamba import FeatureUncertainty, TriOrientedMamba
from xlstm_unet.baselines.uxnet import UXBlock
from xlstm_unet.nnunet import baseline_trainers as bt

NETWORKS = (UXNet, SegMamba, SegFormer3D)
TINY = {
    UXNet: {"feature_sizes": (4, 8, 16, 32), "depths": (1, 1, 1, 1), "hidden_size": 32},
    SegMamba: {"feature_sizes": (4, 8, 16, 32), "hidden_size": 32, "mamba_kwargs": {"d_state": 4}},
    SegFormer3D: {"embed_dims": (8, 16, 24, 32), "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2),
                  "decoder_dim": 16},
}
IDS = [cls.__name__ for cls in NETWORKS]


class TinyUXNet(bt.nnUNetTrainerUXNet):
    network_kwargs = TINY[UXNet]


class TinySegMamba(bt.nnUNetTrainerSegMamba):
    network_kwargs = TINY[SegMamba]


class TinySegFormer3D(bt.nnUNetTrainerSegFormer3D):
    network_kwargs = TINY[SegFormer3D]


def n_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------ paper sizes

@pytest.mark.parametrize("cls", NETWORKS, ids=IDS)
def test_parameter_count_at_the_papers_configuration(cls):
    """Within 10 % of the count the paper reports, and the count the module docstring states."""
    with torch.device("meta"):  # the paper's sizes without allocating them
        net = cls(**cls.paper_config)
    count = n_parameters(net)
    if cls.paper_parameters is not None:
        assert abs(count - cls.paper_parameters) <= 0.10 * cls.paper_parameters, (count, cls.paper_parameters)
    stated = re.search(r"ours is [0-9.]+ M \(([0-9,]+)", " ".join(sys.modules[cls.__module__].__doc__.split()))
    assert stated is not None and int(stated[1].replace(",", "")) == count


def test_paper_defaults_are_the_papers_layouts():
    assert UXNet.paper_parameters == 53_000_000 and SegFormer3D.paper_parameters == 4_510_000
    assert SegMamba.paper_parameters is None  # SegMamba's paper reports no parameter count
    ux = UXNet.default_kwargs()
    assert ux["feature_sizes"] == (48, 96, 192, 384) and ux["depths"] == (2, 2, 2, 2) and ux["kernel_size"] == 7
    assert ux["hidden_size"] == 768 and ux["expansion"] == 4
    assert SegMamba.default_kwargs()["feature_sizes"] == (48, 96, 192, 384)
    sf = SegFormer3D.default_kwargs()
    assert sf["embed_dims"] == (32, 64, 160, 256) and sf["num_heads"] == (1, 2, 5, 8)
    assert sf["sr_ratios"] == (4, 2, 1, 1) and sf["patch_strides"] == (4, 2, 2, 2) and sf["decoder_dim"] == 256
    # 3D UX-Net's DCS: 1x1x1 convolutions grouped per channel, 4x wider (4 weights per channel and conv)
    block = UXBlock(6, torch.nn.Conv3d)
    assert block.dwconv.weight.shape == (6, 1, 7, 7, 7)
    assert block.dcs[0].weight.shape == (24, 1, 1, 1, 1) and block.dcs[2].weight.shape == (6, 4, 1, 1, 1)


def test_patch_divisors():
    assert UXNet.patch_divisor() == SegMamba.patch_divisor() == 16
    assert UXNet.patch_divisor(feature_sizes=(8, 16, 32)) == 8
    assert SegFormer3D.patch_divisor() == 32
    # stage 1 at 1/4 with sr 8 needs 4 * 8 = 32; a first stride of 2 with sr 8 needs 16, the total stride 16
    assert SegFormer3D.patch_divisor(patch_strides=(2, 2, 2, 2), sr_ratios=(8, 1, 1, 1)) == 16
    assert bt.nnUNetTrainerUXNet.patch_divisor() == 16 and bt.nnUNetTrainerSegFormer3D.patch_divisor() == 32


# ------------------------------------------------------------------------------------------------ shapes, gradients

@pytest.mark.parametrize("cls", NETWORKS, ids=IDS)
@pytest.mark.parametrize("shape", [(1, 2, 32, 32, 64), (2, 2, 32, 64)], ids=["3d", "2d"])
def test_forward_shapes_and_every_parameter_learns(cls, shape):
    torch.manual_seed(0)
    net = cls(len(shape) - 2, 2, 3, **TINY[cls])
    x = torch.randn(*shape)
    out = net(x)
    assert out.shape == (shape[0], 3, *shape[2:]) and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.count_nonzero(p.grad)]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("cls", NETWORKS, ids=IDS)
def test_networks_check_their_inputs(cls):
    with pytest.raises(ValueError, match="spatial_dims"):
        cls(4, 1, 2, **TINY[cls])
    net = cls(3, 2, 3, **TINY[cls])
    divisor = cls.patch_divisor(**TINY[cls])
    with pytest.raises(ValueError, match=f"divisible by {divisor}"):
        net(torch.zeros(1, 2, divisor, divisor, divisor + divisor // 2))
    with pytest.raises(ValueError, match=r"expects \(B, 2"):
        net(torch.zeros(1, 3, divisor, divisor, divisor))


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="odd"):
        UXNet(3, 1, 2, kernel_size=6)
    with pytest.raises(ValueError, match="depths"):
        UXNet(3, 1, 2, depths=(2, 2))
    with pytest.raises(ValueError, match="not divisible by its 3 heads"):
        SegFormer3D(3, 1, 2, num_heads=(1, 2, 3, 8))
    with pytest.raises(ValueError, match="decoder_dropout"):
        SegFormer3D(3, 1, 2, decoder_dropout=1.0)
    with pytest.raises(ValueError, match="must not set"):
        SegMamba(3, 1, 2, mamba_kwargs={"channel_tokens": True})


# ------------------------------------------------------------------------------------------------ SegMamba's parts

def test_tri_orientated_mamba_scans_forward_reverse_and_across_slices():
    """ToM = Mamba over the raster order + over the reversed order + over the slice-fastest order, each result put
    back at its voxel; the orders are built here from explicit (d, h, w) indices."""
    torch.manual_seed(0)
    c, (d, h, w) = 3, (2, 3, 4)
    tom = TriOrientedMamba(c, {"d_state": 4, "backend": "mambapy"}).double()
    x = torch.randn(2, c, d, h, w, dtype=torch.float64)
    raster = [(i, j, k) for i in range(d) for j in range(h) for k in range(w)]
    orders = {"forward_scan": raster, "reverse_scan": raster[::-1],
              "slice_scan": [(i, j, k) for j in range(h) for k in range(w) for i in range(d)]}
    expected = torch.zeros_like(x)
    for name, order in orders.items():
        layer = getattr(tom, name)
        tokens = torch.stack([x[:, :, i, j, k] for i, j, k in order], dim=1)  # (B, L, C) in this order
        ys = layer.mamba(F.layer_norm(tokens, (c,), layer.norm.weight, layer.norm.bias, layer.norm.eps))
        for t, (i, j, k) in enumerate(order):
            expected[:, :, i, j, k] += ys[:, t]
    torch.testing.assert_close(tom(x), expected, rtol=1e-10, atol=1e-12)


def test_feature_uncertainty_weights_features_by_the_entropy_of_their_channel_mean():
    z = torch.tensor([[[1.0, -2.0]], [[3.0, 0.5]]]).reshape(1, 2, 1, 2)  # (B=1, C=2, 1, 2): means 2.0, -0.75
    p = 1 / (1 + np.exp(-np.array([2.0, -0.75])))
    u = -p * np.log(p)
    expected = z.numpy() * (2 - u).reshape(1, 1, 1, 2)
    np.testing.assert_allclose(FeatureUncertainty()(z).numpy(), expected, rtol=1e-6)


# ------------------------------------------------------------------------------------------------ nnU-Net

@pytest.mark.parametrize("cls", [TinyUXNet, pytest.param(TinySegMamba, marks=pytest.mark.slow), TinySegFormer3D],
                         ids=IDS)
def test_trainer_builds_trains_and_predicts_from_plans(cls, nnunet_root):
    check_row_builds_trains_and_predicts(cls.__name__, cls, 3)


def test_paper_trainers_are_registered_and_described(nnunet_root):
    from xlstm_unet.nnunet.methods import get_method
    from xlstm_unet.nnunet.variants import trainer_class

    for method, trainer, label in (("uxnet", bt.nnUNetTrainerUXNet, "3D UX-Net"),
                                   ("segmamba", bt.nnUNetTrainerSegMamba, "SegMamba"),
                                   ("segformer3d", bt.nnUNetTrainerSegFormer3D, "SegFormer3D")):
        m = get_method(method)
        assert (m.trainer, m.label, m.dims, m.plans) == (trainer.__name__, label, (3,), "nnUNetPlans")
        variant = trainer_class(f"{trainer.__name__}_official_1ep_1it")
        assert issubclass(variant, trainer) and variant.budget_epochs == 1 and variant.recipe == "official"

    trainer = bt.nnUNetTrainerSegFormer3D(make_plans(3), "3d_fullres", 0, copy.deepcopy(DATASET_JSON),
                                          device=torch.device("cpu"))
    desc = trainer.network_description()
    assert desc["class"] == "xlstm_unet.baselines.SegFormer3D" and desc["deep_supervision"] is False
    assert desc["patch_size_plans"] == PATCH[3] and desc["patch_size"] == [32, 32, 64]
    assert desc["kwargs"]["embed_dims"] == [32, 64, 160, 256] and desc["kwargs"]["sr_ratios"] == [4, 2, 1, 1]
    assert trainer.enable_deep_supervision is False


@pytest.mark.slow
@pytest.mark.parametrize("cls", NETWORKS, ids=IDS)
def test_paper_size_network_runs_nnunets_training_loop_and_predictor(cls, phantom3d_prepared, nnunet_root,
                                                                     tmp_path):
    """The method's network at the paper's size through nnU-Net's own CLI on the 3D phantom (``nnUNetv2_train`` for
    one epoch of one iteration, on CPU: data loaders, on_train_start, validation, final validation, checkpoint;
    then ``nnUNetv2_predict``, which rebuilds the network from the results folder)."""
    from nnunet_cli import cli_env, run_cli

    from xlstm_unet.nnunet import model_folder

    method, trainer = {UXNet: ("uxnet", bt.nnUNetTrainerUXNet), SegMamba: ("segmamba", bt.nnUNetTrainerSegMamba),
                       SegFormer3D: ("segformer3d", bt.nnUNetTrainerSegFormer3D)}[cls]
    divisor = cls.patch_divisor()
    env = cli_env(nnunet_root)
    did = phantom3d_prepared[7:10]
    run_cli(["nnUNetv2_train", did, "3d_fullres", "0", "-tr", f"{trainer.__name__}_1ep_1it", "-device", "cpu"], env)
    fold = model_folder(phantom3d_prepared, method, configuration="3d_fullres", epochs=1, iterations=1) / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    run = json.loads((fold / "run_config.json").read_text())
    network = run["network"]
    assert run["trainer"] == f"{trainer.__name__}_1ep_1it"
    assert network["class"] == f"xlstm_unet.baselines.{cls.__name__}" and network["deep_supervision"] is False
    assert network["kwargs"] == json.loads(json.dumps(cls.default_kwargs()))  # the paper's configuration
    plans = json.loads((fold.parent / "plans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["patch_size"] == network["patch_size"] == run["patch_size"]
    assert [math.ceil(p / divisor) * divisor for p in network["patch_size_plans"]] == network["patch_size"]
    raw = nnunet_root / "nnUNet_raw" / phantom3d_prepared
    out = tmp_path / "pred"
    run_cli(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", did, "-c", "3d_fullres", "-f",
             "0", "-tr", f"{trainer.__name__}_1ep_1it", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"],
            env)
    ending = json.loads((raw / "dataset.json").read_text())["file_ending"]
    assert sorted(p.name for p in out.glob(f"*{ending}")) == sorted(p.name for p in (raw / "labelsTs").glob(
        f"*{ending}"))
