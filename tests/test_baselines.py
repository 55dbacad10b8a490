"""Baselines: every comparison row builds from nnU-Net plans, trains one iteration and predicts a case on CPU.

Networks run at tiny sizes (the trainers' ``network_kwargs`` / ``mamba`` dims are overridden in test subclasses)
so that the whole file stays fast on 2 cores; the paper-size defaults are checked as configuration, and MONAI's
SegResNet at its paper size also runs.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xlstm_unet.baselines import (
    MAMBA_PARAMETER_NAMES,
    MONAI_DEFAULTS,
    MambaBackend,
    MambaLayer,
    MonaiNetwork,
    ResidualMambaStage,
    UMambaUNet,
    build_monai_network,
    convert_mamba_state_dict,
    mamba_parameter_shapes,
    patch_divisor,
    resolve_mamba_backend,
    round_up_patch_size,
)
from xlstm_unet.nnunet import baseline_trainers as bt
from xlstm_unet.networks import ResidualMixerUNet, ResidualViLStage, XLSTMUNet
from xlstm_unet.nnunet.trainers import nnUNetTrainerRecipe

CPU = torch.device("cpu")

# ------------------------------------------------------------------------------------------------ plans helpers

PATCH = {2: [40, 36], 3: [20, 24, 36]}  # divisible by the plans' total stride 4, not by 8/16/32


def make_plans(dim: int, *, resenc: bool = False, patch: list[int] | None = None) -> dict:
    """A small plans dict in nnU-Net v2's nnUNetPlans.json format (3 stages, 4..16 features)."""
    cfg = "2d" if dim == 2 else "3d_fullres"
    n = 3
    arch_kwargs = {
        "n_stages": n,
        "features_per_stage": [4, 8, 16],
        "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
        "kernel_sizes": [[3] * dim] * n,
        "strides": [[1] * dim] + [[2] * dim] * (n - 1),
        ("n_blocks_per_stage" if resenc else "n_conv_per_stage"): [1, 2, 2] if resenc else [2] * n,
        "n_conv_per_stage_decoder": [1] * (n - 1),
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    net = "ResidualEncoderUNet" if resenc else "PlainConvUNet"
    configuration = {
        "data_identifier": f"{'nnUNetResEncUNetMPlans' if resenc else 'nnUNetPlans'}_{cfg}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2 if dim == 2 else 1,
        "patch_size": list(patch or PATCH[dim]),
        "median_image_size_in_voxels": list(patch or PATCH[dim]),
        "spacing": [1.0] * dim,
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": f"dynamic_network_architectures.architectures.unet.{net}",
            "arch_kwargs": arch_kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": dim == 3,
    }
    return {
        "dataset_name": "Dataset998_BaselineTiny",
        "plans_name": "nnUNetResEncUNetMPlans" if resenc else "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [1, *PATCH[2]] if dim == 2 else PATCH[3],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {cfg: configuration},
        "experiment_planner_used": "nnUNetPlannerResEncM" if resenc else "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 1.0, "mean": 0.0, "median": 0.0, "min": -1.0, "percentile_00_5": -1.0,
                  "percentile_99_5": 1.0, "std": 1.0}},
        "continue_training": False,
    }


DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": 1, "tumour": 2},
                "numTraining": 2, "file_ending": ".nii.gz",
                "xlstm_unet": {"protocol": "abdomen"}}


# ------------------------------------------------------------------------------------ tiny trainers for the rows

class TinySegResNet(bt.nnUNetTrainerSegResNet):
    network_kwargs = {"init_filters": 8}


class TinyUNETR(bt.nnUNetTrainerUNETR):
    network_kwargs = {"feature_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_heads": 2}


class TinySwinUNETR(bt.nnUNetTrainerSwinUNETR):
    network_kwargs = {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}


class TinySwinUNETRv2(bt.nnUNetTrainerSwinUNETRv2):
    network_kwargs = {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}


class TinyMedNeXt(bt.nnUNetTrainerMedNeXt):
    network_kwargs = {"variant": None, "init_filters": 4, "blocks_down": (1, 1, 1, 1), "blocks_bottleneck": 1,
                      "blocks_up": (1, 1, 1, 1), "kernel_size": 3}


class TinyUMambaBot(bt.nnUNetTrainerUMambaBot):
    mamba_kwargs = {"d_state": 4}


class TinyUMambaEnc(bt.nnUNetTrainerUMambaEnc):
    mamba_kwargs = {"d_state": 4}


# row, trainer, dims, resenc plans
ROWS = [
    ("nnunet", nnUNetTrainerRecipe, 2, False),
    ("resenc_m", nnUNetTrainerRecipe, 2, True),
    ("segresnet", TinySegResNet, 2, False),
    ("unetr", TinyUNETR, 2, False),
    ("swinunetr", TinySwinUNETR, 2, False),
    ("umamba_bot", TinyUMambaBot, 2, False),
    ("umamba_enc", TinyUMambaEnc, 2, False),
    ("nnunet", nnUNetTrainerRecipe, 3, False),
    ("resenc_m", nnUNetTrainerRecipe, 3, True),
    ("segresnet", TinySegResNet, 3, False),
    ("unetr", TinyUNETR, 3, False),
    ("swinunetr", TinySwinUNETR, 3, False),
    ("swinunetr_v2", TinySwinUNETRv2, 3, False),
    ("mednext", TinyMedNeXt, 3, False),
    ("umamba_bot", TinyUMambaBot, 3, False),
]


def make_trainer(cls, dim: int, resenc: bool = False, patch: list[int] | None = None):
    """The trainer with its network, optimiser and loss set up as ``nnUNetTrainer.initialize`` does (minus data)."""
    cfg = "2d" if dim == 2 else "3d_fullres"
    trainer = cls(make_plans(dim, resenc=resenc, patch=patch), cfg, 0, copy.deepcopy(DATASET_JSON), device=CPU)
    trainer.num_input_channels = 1
    trainer.network = cls.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 1, trainer.label_manager.num_segmentation_heads,
        trainer.enable_deep_supervision)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.loss = trainer._build_loss()
    trainer.was_initialized = True
    trainer.set_deep_supervision_enabled(trainer.enable_deep_supervision)
    return trainer


def make_batch(trainer, seed: int = 0) -> dict:
    """A batch as nnU-Net's data loader delivers it: data and (deep-supervision downsampled) targets."""
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

    g = torch.Generator().manual_seed(seed)
    patch = list(trainer.configuration_manager.patch_size)
    b = trainer.configuration_manager.batch_size
    data = torch.randn(b, 1, *patch, generator=g)
    seg = torch.randint(0, 3, (b, 1, *patch), generator=g).to(torch.int16)
    scales = trainer._get_deep_supervision_scales()
    if scales is None:
        return {"data": data, "target": seg}
    ds = DownsampleSegForDSTransform(ds_scales=scales)
    per_sample = [ds(segmentation=s)["segmentation"] for s in seg]
    return {"data": data, "target": [torch.stack([p[i] for p in per_sample]) for i in range(len(scales))]}


def predictor_for(trainer, use_gaussian: bool = True):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=use_gaussian, use_mirroring=False,
                           perform_everything_on_device=False, device=CPU, verbose=False, allow_tqdm=False)
    pred.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                               trainer.dataset_json, type(trainer).__name__, None)
    return pred


def as_predictor_input(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(C, *spatial) -> nnU-Net's 4D predictor input (2D cases get a singleton slice axis)."""
    return x[:, None] if dim == 2 else x


# ------------------------------------------------------------------------------------------------ every row

SLOW_ROWS = {("segresnet", 3), ("unetr", 3), ("swinunetr", 3), ("swinunetr_v2", 3)}  # over ~3 s on 2 cores


@pytest.mark.parametrize("row,cls,dim,resenc",
                         [pytest.param(*r, marks=pytest.mark.slow) if (r[0], r[2]) in SLOW_ROWS else r for r in ROWS],
                         ids=[f"{r[0]}-{r[2]}d" for r in ROWS])
def test_row_builds_trains_and_predicts(row, cls, dim, resenc, nnunet_root):
    check_row_builds_trains_and_predicts(row, cls, dim, resenc)


def check_row_builds_trains_and_predicts(row: str, cls, dim: int, resenc: bool = False) -> None:
    """Build ``cls``'s network from :func:`make_plans`, run one nnU-Net train_step, predict with nnU-Net's predictor
    (also used by ``test_baselines_3d.py``; needs the ``nnunet_root`` fixture)."""
    torch.manual_seed(0)
    trainer = make_trainer(cls, dim, resenc)
    patch = list(trainer.configuration_manager.patch_size)
    net = trainer.network

    # built from plans, for the right patch
    if issubclass(cls, bt.PatchAdaptedTrainer):
        assert patch == list(round_up_patch_size(PATCH[dim], cls.patch_divisor()))
        assert trainer.enable_deep_supervision is False
        assert "DeepSupervisionWrapper" not in type(trainer.loss).__name__
    else:
        assert patch == PATCH[dim]
        assert trainer.enable_deep_supervision is True
        assert type(trainer.loss).__name__ == "DeepSupervisionWrapper"
    if row.startswith("umamba"):
        assert isinstance(net, UMambaUNet)
        assert net.mamba_stages == ((2,) if row == "umamba_bot" else (0, 1, 2))
    if row == "resenc_m":
        assert type(net).__name__ == "ResidualEncoderUNet"

    # one training iteration through nnU-Net's train_step (forward, DC+CE, backward, clip, optimizer step)
    batch = make_batch(trainer)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    out = trainer.train_step(batch)
    assert np.isfinite(out["loss"]).all()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    with_grad = [n for n, g in grads.items() if g is not None and torch.count_nonzero(g) > 0]
    # the loss reaches the input layer and the full-resolution output layer (first and last parameters); residual
    # nets zero-init each block's last norm (nnU-Net's init), so their inner convs get gradients from step 2 only
    names = list(grads)
    assert names[0] in with_grad and names[-1] in with_grad, (names[0], names[-1])
    assert all(not torch.equal(before[n], p) for n, p in net.named_parameters() if n in with_grad)
    if row.startswith("umamba"):  # every parameter of every Mamba layer is trained
        mamba_params = [n for n in names if ".mamba." in n]
        assert len(mamba_params) == len(net.mamba_stages) * (len(MAMBA_PARAMETER_NAMES) + 2)  # + LayerNorm
        assert set(mamba_params) <= set(with_grad), sorted(set(mamba_params) - set(with_grad))

    # prediction with nnU-Net's sliding-window predictor (DS off first, as nnU-Net's final validation does)
    trainer.set_deep_supervision_enabled(False)
    net.eval()
    x = torch.randn(1, *patch)
    logits = predictor_for(trainer, use_gaussian=False).predict_sliding_window_return_logits(
        as_predictor_input(x, dim))
    with torch.no_grad():
        direct = net(x[None])
    # one tile of exactly the patch size: the predictor returns the network's logits (accumulated in float16)
    torch.testing.assert_close(logits.float(), as_predictor_input(direct[0], dim), rtol=5e-3, atol=5e-3)
    case = [p + 7 for p in PATCH[dim]]  # a case neither divisible nor of patch size: padding and several tiles
    logits = predictor_for(trainer).predict_sliding_window_return_logits(
        as_predictor_input(torch.randn(1, *case), dim))
    assert tuple(logits.shape) == (3, *as_predictor_input(torch.zeros(1, *case), dim).shape[1:])
    assert torch.isfinite(logits).all()


def test_adapted_patch_is_what_the_nnunet_predictor_restores(nnunet_root, tmp_path, monkeypatch):
    """The trainer's copy of the plans (plans.json, as nnU-Net's on_train_start writes it) carries the adapted patch,
    and nnU-Net's predictor rebuilds the same network from the results folder."""
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.inference import predict_from_raw_data as pfr

    plans = make_plans(2)
    original = copy.deepcopy(plans)
    trainer = TinyUNETR(plans, "2d", 0, copy.deepcopy(DATASET_JSON), device=CPU)
    assert plans == original, "the trainer must not modify the plans it was given"
    assert trainer.patch_size_plans == (40, 36)
    assert list(trainer.configuration_manager.patch_size) == [48, 48]
    trainer = make_trainer(TinyUNETR, 2)
    trainer.train_step(make_batch(trainer))
    folder = tmp_path / "TinyUNETR__nnUNetPlans__2d"
    (folder / "fold_0").mkdir(parents=True)
    save_json(trainer.plans_manager.plans, str(folder / "plans.json"), sort_keys=False)
    save_json(trainer.dataset_json, str(folder / "dataset.json"), sort_keys=False)
    trainer.save_checkpoint(str(folder / "fold_0" / "checkpoint_final.pth"))
    assert json.loads((folder / "plans.json").read_text())["configurations"]["2d"]["patch_size"] == [48, 48]

    monkeypatch.setattr(pfr, "recursive_find_trainer_class_by_name",
                        lambda name: {"TinyUNETR": TinyUNETR}[name])
    pred = pfr.nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False, device=CPU,
                               allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
    assert list(pred.configuration_manager.patch_size) == [48, 48]
    case = torch.randn(1, 1, 53, 41)
    expected = predictor_for(trainer).predict_sliding_window_return_logits(case)
    torch.testing.assert_close(pred.predict_sliding_window_return_logits(case), expected)


# ------------------------------------------------------------------------------------------------ trainers

def test_trainer_names_resolve_through_the_variants_registry():
    from xlstm_unet.nnunet.methods import METHODS
    from xlstm_unet.nnunet.variants import trainer_class

    for method in METHODS.values():
        assert trainer_class(method.trainer).__name__ == method.trainer
    cls = trainer_class("nnUNetTrainerSwinUNETR_official_5ep_10it")
    assert issubclass(cls, bt.nnUNetTrainerSwinUNETR) and cls.budget_epochs == 5 and cls.recipe == "official"
    assert trainer_class("nnUNetTrainerUMambaEnc").recipe_variant == "enc"


def test_adapt_plans_patch_size_copies_and_resolves_inheritance():
    plans = make_plans(3)
    plans["configurations"]["3d_child"] = {"inherits_from": "3d_fullres", "batch_size": 1}
    frozen = copy.deepcopy(plans)
    new, original = bt.adapt_plans_patch_size(plans, "3d_child", 32)
    assert plans == frozen
    assert original == (20, 24, 36)
    assert new["configurations"]["3d_child"]["patch_size"] == [32, 32, 64]
    assert new["configurations"]["3d_fullres"]["patch_size"] == [20, 24, 36]
    again, _ = bt.adapt_plans_patch_size(new, "3d_child", 32)
    assert again == new  # idempotent: continuing or predicting rebuilds the same network
    with pytest.raises(ValueError, match="not in the plans"):
        bt.adapt_plans_patch_size(plans, "2d", 32)


def test_monai_network_description_and_defaults(nnunet_root):
    trainer = TinySwinUNETR(make_plans(2), "2d", 0, copy.deepcopy(DATASET_JSON), device=CPU)
    desc = trainer.network_description()
    assert desc["patch_size_plans"] == [40, 36] and desc["patch_size"] == [64, 64]
    assert desc["kwargs"]["feature_size"] == 12 and desc["kwargs"]["use_v2"] is False
    assert bt.nnUNetTrainerSwinUNETRv2.network_kwargs == {}
    assert MONAI_DEFAULTS[MonaiNetwork.SWINUNETR_V2]["use_v2"] is True
    assert MONAI_DEFAULTS[MonaiNetwork.SWINUNETR]["feature_size"] == 48
    assert MONAI_DEFAULTS[MonaiNetwork.UNETR]["hidden_size"] == 768
    trainer.set_deep_supervision_enabled(True)  # nnU-Net calls it; must not fail or switch anything on
    assert trainer.enable_deep_supervision is False


# ------------------------------------------------------------------------------------------------ MONAI builders

def test_patch_divisors_follow_the_networks():
    assert patch_divisor("segresnet") == 8
    assert patch_divisor("unetr") == 16
    assert patch_divisor("swinunetr") == patch_divisor("swinunetr_v2") == 32
    assert patch_divisor("mednext") == 16
    assert patch_divisor("segresnet", {"blocks_down": (1, 2, 2)}) == 4
    assert round_up_patch_size((40, 224, 192), 32) == (64, 224, 192)
    assert round_up_patch_size((64, 64), 16) == (64, 64)
    with pytest.raises(ValueError, match="divisor"):
        round_up_patch_size((4, 4), 0)
    with pytest.raises(ValueError, match="unknown MONAI baseline"):
        patch_divisor("transunet")


def test_build_monai_network_checks_its_inputs():
    with pytest.raises(ValueError, match="divisible by 16"):
        build_monai_network("unetr", spatial_dims=2, in_channels=1, out_channels=2, patch_size=(40, 32))
    with pytest.raises(ValueError, match="spatial_dims"):
        build_monai_network("unetr", spatial_dims=4, in_channels=1, out_channels=2, patch_size=(32,) * 4)
    with pytest.raises(ValueError, match="2 entries"):
        build_monai_network("segresnet", spatial_dims=2, in_channels=1, out_channels=2, patch_size=(32, 32, 32))
    with pytest.raises(ValueError, match="must not set"):
        build_monai_network("segresnet", spatial_dims=2, in_channels=1, out_channels=2, patch_size=(32, 32),
                            overrides={"in_channels": 3})
    with pytest.warns(UserWarning, match="single voxel"):
        build_monai_network("swinunetr", spatial_dims=2, in_channels=1, out_channels=2, patch_size=(32, 32),
                            overrides={"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)})
    with pytest.raises(ValueError, match="takes only kernel_size"):
        build_monai_network("mednext", spatial_dims=3, in_channels=1, out_channels=2, patch_size=(16,) * 3,
                            overrides={"init_filters": 8})


def test_segresnet_at_paper_size_matches_monai():
    from monai.networks.nets import SegResNet

    torch.manual_seed(0)
    ours = build_monai_network("segresnet", spatial_dims=2, in_channels=1, out_channels=3, patch_size=(32, 32))
    ref = SegResNet(spatial_dims=2, init_filters=32, in_channels=1, out_channels=3)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(ours(x), ref(x))


# ------------------------------------------------------------------------------------------------ Mamba

def reference_mamba(m, x: torch.Tensor) -> torch.Tensor:
    """Mamba (Gu & Dao 2023, Alg. 2) written step by step in float64 from a mixer's parameters.

    ``x``: (B, L, D). in_proj -> (x, z); causal depthwise conv1d + SiLU; (dt, B, C) = x_proj(x);
    delta = softplus(dt_proj(dt)); h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t; y_t = C_t h_t + D x_t;
    out = out_proj(y * SiLU(z)).
    """
    p = {k: v.detach().double() for k, v in m.state_dict().items()}
    x = x.double()
    bsz, length, _ = x.shape
    ed, n = p["A_log"].shape
    k = p["conv1d.weight"].shape[-1]
    dt_rank = p["dt_proj.weight"].shape[1]
    xz = x @ p["in_proj.weight"].T
    xs, z = xz[..., :ed], xz[..., ed:]
    conv = torch.zeros_like(xs)
    for t in range(length):
        acc = p["conv1d.bias"].clone().expand(bsz, ed).clone()
        for j in range(k):  # weight[:, 0, k-1] multiplies the current step, weight[:, 0, k-1-s] the step t-s
            s = k - 1 - j
            if t - s >= 0:
                acc = acc + p["conv1d.weight"][:, 0, j] * xs[:, t - s]
        conv[:, t] = acc
    u = F.silu(conv)
    dbc = u @ p["x_proj.weight"].T
    dt, bmat, cmat = dbc[..., :dt_rank], dbc[..., dt_rank:dt_rank + n], dbc[..., dt_rank + n:]
    delta = F.softplus(dt @ p["dt_proj.weight"].T + p["dt_proj.bias"])
    a = -torch.exp(p["A_log"])
    h = torch.zeros(bsz, ed, n, dtype=torch.float64)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, t, :, None] * a) * h + delta[:, t, :, None] * bmat[:, t, None, :] * u[:, t, :, None]
        ys.append((h * cmat[:, t, None, :]).sum(-1) + p["D"] * u[:, t])
    y = torch.stack(ys, 1)
    return (y * F.silu(z)) @ p["out_proj.weight"].T


@pytest.mark.parametrize("channel_tokens", [False, True])
def test_mamba_layer_matches_a_slow_reference_scan(channel_tokens):
    torch.manual_seed(0)
    c, spatial = (5, (2, 3)) if not channel_tokens else (7, (2, 3))  # L = 6 or 7: not powers of two (pscan pads)
    dim = math.prod(spatial) if channel_tokens else c
    layer = MambaLayer(dim, d_state=4, channel_tokens=channel_tokens, backend="mambapy").double()
    with torch.no_grad():  # move LayerNorm off its identity init so that it is really tested
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, c, *spatial, dtype=torch.float64)
    out = layer(x)
    assert out.shape == x.shape and out.dtype == torch.float64

    tokens = x.flatten(2) if channel_tokens else x.flatten(2).transpose(1, 2)  # (B, L, D), raster order
    normed = F.layer_norm(tokens, (dim,), layer.norm.weight, layer.norm.bias, layer.norm.eps)
    ref = reference_mamba(layer.mamba, normed)
    ref = ref.reshape(2, c, *spatial) if channel_tokens else ref.transpose(1, 2).reshape(2, c, *spatial)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_mamba_layer_runs_in_float32_under_autocast_and_checks_its_input():
    layer = MambaLayer(4, d_state=4, backend="mambapy")
    x = torch.randn(1, 4, 3, 3, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    # computed in float32 (autocast off inside), then cast back to the input's dtype
    torch.testing.assert_close(out, layer(x.float()).to(torch.bfloat16), rtol=0, atol=0)
    with pytest.raises(ValueError, match="channels C = 5"):
        layer(torch.randn(1, 5, 3, 3))
    with pytest.raises(ValueError, match="positive int"):
        MambaLayer(0)


def test_mamba_backends_share_one_state_dict_layout():
    assert resolve_mamba_backend("mambapy") is MambaBackend.MAMBAPY
    if not torch.cuda.is_available():
        assert resolve_mamba_backend("auto") is MambaBackend.MAMBAPY
        with pytest.raises(ValueError, match="needs CUDA"):
            resolve_mamba_backend("mamba_ssm")
    with pytest.raises(ValueError, match="unknown Mamba backend"):
        resolve_mamba_backend("triton")

    layer = MambaLayer(20, backend="mambapy")  # dt_rank = ceil(20 / 16) = 2
    mixer = {k[len("mamba."):]: v for k, v in layer.state_dict().items() if k.startswith("mamba.")}
    assert set(mixer) == set(MAMBA_PARAMETER_NAMES)
    assert {k: tuple(v.shape) for k, v in mixer.items()} == mamba_parameter_shapes(20)
    converted = convert_mamba_state_dict(layer.state_dict(), to="mamba_ssm", prefix="mamba.")
    other = MambaLayer(20, backend="mambapy")
    other.load_state_dict(converted)  # strict: same keys and shapes
    x = torch.randn(1, 20, 2, 2)
    torch.testing.assert_close(other(x), layer(x))
    with pytest.raises(ValueError, match="no Mamba parameters"):
        convert_mamba_state_dict({"norm.weight": torch.ones(3)}, to="mambapy", prefix="mamba.")


# ------------------------------------------------------------------------------------------------ U-Mamba network

def test_umamba_enc_follows_umamba_rules_from_resenc_plans(nnunet_root):
    """ResEnc-style plans (n_blocks_per_stage), single blocks in the deep half, channel tokens where S <= C."""
    trainer = make_trainer(TinyUMambaEnc, 2, resenc=True, patch=[8, 8])
    net = trainer.network
    # encoder blocks [1, 2, 2] -> stages >= ceil(3 / 2) = 2 get one block; decoder stages >= ceil(1.5) = 2: none
    assert [len(st.blocks.blocks) for st in net.encoder.stages] == [1, 2, 1]
    # feature maps 8x8 (64 voxels, C=4), 4x4 (16, C=8), 2x2 (4, C=16): channel tokens at stage 2 only
    assert [st.mamba.channel_tokens for st in net.encoder.stages] == [False, False, True]
    assert [st.mamba.dim for st in net.encoder.stages] == [4, 8, 4]
    # nnU-Net's init hook left Mamba's own init (S4D-real A) alone
    a_log = net.encoder.stages[0].mamba.mamba.A_log
    torch.testing.assert_close(a_log, torch.log(torch.arange(1, 5, dtype=torch.float32)).expand_as(a_log))
    out = trainer.train_step(make_batch(trainer))
    assert np.isfinite(out["loss"]).all()


def test_umamba_unet_rejects_bad_configs():
    kw = dict(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=torch.nn.Conv2d, kernel_sizes=3,
              strides=[1, 2, 2], num_classes=2, n_conv_per_stage_decoder=1)
    with pytest.raises(ValueError, match="unknown mamba_placement"):
        UMambaUNet(**kw, n_conv_per_stage=1, mamba_placement="middle")
    with pytest.raises(ValueError, match="differ"):
        UMambaUNet(**kw, n_conv_per_stage=1, n_blocks_per_stage=2)
    with pytest.raises(ValueError, match="neither"):
        UMambaUNet(**kw)
    net = UMambaUNet(**kw, n_conv_per_stage=1, mamba_kwargs={"d_state": 4, "backend": "mambapy"})
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 1, 10, 8))



def test_umamba_and_xlstm_unet_share_the_residual_mixer_base():
    """Both are presets of ResidualMixerUNet: outside the mixer (``.mamba`` / ``.vil``, the state-dict names that plans
    and checkpoints rely on) they are the same residual U-Net, key for key and shape for shape."""
    kw = dict(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=torch.nn.Conv2d, kernel_sizes=3,
              strides=[1, 2, 2], num_classes=2, n_conv_per_stage=1, n_conv_per_stage_decoder=1, patch_size=(16, 16))
    umamba = UMambaUNet(**kw, mamba_kwargs={"d_state": 4, "backend": "mambapy"})
    xlstm = XLSTMUNet(**kw, vil_placement="bot", vil_kwargs={"num_heads": 2})
    shapes = {}
    for net, stage_class, name in ((umamba, ResidualMambaStage, "mamba"), (xlstm, ResidualViLStage, "vil")):
        assert isinstance(net, ResidualMixerUNet) and net.mixer_stages == (2,)
        stage = net.encoder.stages[2]
        assert isinstance(stage, stage_class) and stage.mixer is getattr(stage, name)
        state = net.state_dict()
        assert "encoder.stages.2.blocks.blocks.0.conv1.conv.weight" in state
        assert any(k.startswith(f"encoder.stages.2.{name}.") for k in state)
        # (UNetResDecoder holds the encoder too: its keys repeat under "decoder.encoder.")
        shapes[name] = {k: v.shape for k, v in state.items() if f"encoder.stages.2.{name}." not in k}
    assert shapes["mamba"] == shapes["vil"]
    assert "encoder.stages.2.mamba.mamba.A_log" in umamba.state_dict()
    with pytest.raises(NotImplementedError, match="_mixer_stage_indices"):
        ResidualMixerUNet(**kw)


# ------------------------------------------------------------------------------------------------ nnU-Net's loop

@pytest.mark.slow
def test_monai_baseline_runs_nnunets_training_loop_and_predictor(phantom2d_prepared, nnunet_root, tmp_path):
    """A MONAI baseline (deep supervision off) through nnU-Net's whole run: data loaders, on_train_start, one
    epoch, validation, final validation, checkpoint, plans.json; then nnU-Net's predictor on the test images."""
    from xlstm_unet.nnunet import predict, train

    fold = train(phantom2d_prepared, "segresnet", epochs=1, iterations=1, device="cpu")
    assert (fold / "checkpoint_final.pth").is_file()
    run = json.loads((fold / "run_config.json").read_text())
    assert run["trainer"] == "nnUNetTrainerSegResNet_1ep_1it"
    assert run["network"]["class"] == "monai:segresnet" and run["network"]["deep_supervision"] is False
    plans = json.loads((fold.parent / "plans.json").read_text())
    assert plans["configurations"]["2d"]["patch_size"] == run["network"]["patch_size"]
    assert all(p % 8 == 0 for p in run["network"]["patch_size"])
    raw = nnunet_root / "nnUNet_raw" / phantom2d_prepared
    out = predict(fold, raw / "imagesTs", tmp_path / "pred", device="cpu", mirroring=False)
    ending = json.loads((raw / "dataset.json").read_text())["file_ending"]
    assert sorted(p.name for p in out.glob(f"*{ending}")) == sorted(p.name for p in (raw / "labelsTs").glob(
        f"*{ending}"))
