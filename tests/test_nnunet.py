"""nnU-Net v2 integration: trainers through nnU-Net's own CLI and through the Python API, recipes, resume, NaN."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xlstm_unet.nnunet import model_folder, predict, train
from xlstm_unet.nnunet.recipes import resolve_recipe
from xlstm_unet.nnunet.trainers import NonFiniteLossError
from xlstm_unet.nnunet.variants import parse_variant_name, trainer_class, trainer_variant_name

BIN = Path(sys.executable).parent


def _read_label(path: Path) -> np.ndarray:
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    rw = determine_reader_writer_from_file_ending("".join(path.suffixes) if path.suffix == ".gz" else path.suffix,
                                                  str(path))()
    seg, _ = rw.read_seg(str(path))
    return seg


def _check_predictions(pred_dir: Path, raw_dir: Path) -> None:
    """One prediction per test case, with the label's shape and only declared label values."""
    ds = json.loads((raw_dir / "dataset.json").read_text())
    ending = ds["file_ending"]
    gts = sorted((raw_dir / "labelsTs").glob(f"*{ending}"))
    assert gts, "no test labels"
    allowed = set(int(v) for v in ds["labels"].values())
    for gt in gts:
        pred = pred_dir / gt.name
        assert pred.is_file(), f"missing prediction {pred}"
        p, g = _read_label(pred), _read_label(gt)
        assert p.shape == g.shape
        assert set(np.unique(p).astype(int)) <= allowed


# ----------------------------------------------------------------------------------------------- names, recipes

def test_variant_names_round_trip():
    name = trainer_variant_name("nnUNetTrainerXLSTMEnc", recipe="official", epochs=5, iterations=10)
    assert name == "nnUNetTrainerXLSTMEnc_official_5ep_10it"
    assert parse_variant_name(name) == {"base": "nnUNetTrainerXLSTMEnc", "recipe": "official", "epochs": 5,
                                        "iterations": 10, "lr": None, "batch_size": None, "amp": True, "seed": None}
    cls = trainer_class(name)
    assert cls.__name__ == name and cls.budget_epochs == 5 and cls.budget_iterations == 10
    assert trainer_class(name) is cls
    assert trainer_class("nnUNetTrainerXLSTMBot").vil_placement == "bot"
    assert parse_variant_name("nnUNetTrainerRecipe_lr0.001")["lr"] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="unknown trainer base"):
        parse_variant_name("nnUNetTrainerNope_5ep")
    with pytest.raises(ValueError, match="not a trainer variant"):
        parse_variant_name("nnUNetTrainerXLSTMBot_5epochs")


def test_recipes_resolve_to_the_paper_table():
    assert resolve_recipe("paper", protocol="abdomen").lr == 0.005
    assert resolve_recipe("paper", protocol="endoscopy").lr == 0.01
    assert resolve_recipe("paper", protocol="cells", variant="bot").lr == 0.007
    assert resolve_recipe("paper", protocol="cells", variant="enc").lr == 0.0015
    r = resolve_recipe("official", protocol="cells")
    assert (r.optimizer, r.lr, r.weight_decay, r.momentum, r.nesterov) == ("SGD", 5e-3, 3e-5, 0.99, True)
    with pytest.warns(UserWarning, match="no learning rate"):
        assert resolve_recipe("paper", protocol=None).lr == 0.005
    with pytest.raises(ValueError, match="unknown recipe"):
        resolve_recipe("adam")


@pytest.mark.slow
def test_env_command_lets_nnunet_find_our_trainers(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    script = (f'eval "$({BIN / "xlstm-unet"} env --data-root {tmp_path})" && {sys.executable} -c '
              '"from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; '
              "c = f('nnUNetTrainerXLSTMBot_official_3ep_4it'); print('FOUND', c.__name__, c.recipe, "
              "c.budget_epochs, c.budget_iterations)\"")
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "FOUND nnUNetTrainerXLSTMBot_official_3ep_4it official 3 4" in out.stdout
    exports = subprocess.run([str(BIN / "xlstm-unet"), "env", "--data-root", str(tmp_path)], env=env,
                             capture_output=True, text=True, check=True).stdout
    assert f"export nnUNet_raw={tmp_path / 'nnUNet_raw'}" in exports
    assert "export nnUNet_extTrainer=" in exports


# ----------------------------------------------------------------------------------------------- Python API

@pytest.fixture(scope="module")
def trained_enc(phantom2d_prepared) -> Path:
    return train(phantom2d_prepared, "xlstm_enc", epochs=1, iterations=2, device="cpu", validate=False)


@pytest.mark.slow
def test_python_api_train_and_predict(trained_enc, phantom2d_prepared, nnunet_root, tmp_path):
    assert trained_enc.name == "fold_0"
    assert trained_enc.parent.name == "nnUNetTrainerXLSTMEnc_1ep_2it__nnUNetPlans__2d"
    assert trained_enc.parent == model_folder(phantom2d_prepared, "xlstm_enc", epochs=1, iterations=2)
    assert (trained_enc / "checkpoint_final.pth").is_file()
    cfg = json.loads((trained_enc / "run_config.json").read_text())
    assert cfg["num_epochs"] == 1 and cfg["num_iterations_per_epoch"] == 2 and cfg["full_budget"] is False
    assert cfg["network"]["vil_placement"] == "enc"
    raw = nnunet_root / "nnUNet_raw" / phantom2d_prepared
    out = predict(trained_enc, raw / "imagesTs", tmp_path / "pred", device="cpu")
    _check_predictions(out, raw)


@pytest.mark.slow
def test_recipe_is_what_the_trained_trainer_used(phantom2d_prepared, nnunet_root):
    from nnunetv2.run.run_training import get_trainer_from_args

    from xlstm_unet.nnunet.env import apply_env

    apply_env()
    for name, opt_type, wd in [("nnUNetTrainerXLSTMBot_1ep_1it", torch.optim.AdamW, 0.05),
                               ("nnUNetTrainerXLSTMBot_official_1ep_1it", torch.optim.SGD, 3e-5)]:
        tr = get_trainer_from_args(phantom2d_prepared, "2d", 0, name, "nnUNetPlans", device=torch.device("cpu"))
        tr.initialize()
        assert type(tr.optimizer) is opt_type
        assert tr.optimizer.param_groups[0]["weight_decay"] == wd
        assert tr.optimizer.param_groups[0]["initial_lr"] == tr.resolved_recipe.lr
        if opt_type is torch.optim.SGD:
            assert tr.optimizer.param_groups[0]["momentum"] == 0.99 and tr.optimizer.param_groups[0]["nesterov"]


@pytest.mark.slow
def test_checkpointed_enc_trainer_builds_the_enc_network_with_checkpointing(phantom2d_prepared, nnunet_root):
    from nnunetv2.run.run_training import get_trainer_from_args

    from xlstm_unet.nnunet.env import apply_env
    from xlstm_unet.vil import ViLStage

    apply_env()
    nets = {}
    for name in ("nnUNetTrainerXLSTMEnc_1ep_1it", "nnUNetTrainerXLSTMEncCkpt_1ep_1it"):
        tr = get_trainer_from_args(phantom2d_prepared, "2d", 0, name, "nnUNetPlans", device=torch.device("cpu"))
        tr.initialize()
        nets[name] = tr.network
    plain, ckpt = nets.values()
    assert plain.state_dict().keys() == ckpt.state_dict().keys()
    vils = [m for m in ckpt.modules() if isinstance(m, ViLStage)]
    assert len(vils) == len(ckpt.vil_stages) > 0 and all(v.checkpoint for v in vils)
    assert all(m.checkpoint is None for m in plain.modules() if isinstance(m, ViLStage))  # auto (CPU pieces)
    assert trainer_class("nnUNetTrainerXLSTMEncCkpt").recipe_variant == "enc"


@pytest.mark.slow
def test_bidirectional_enc_trainer_pairs_the_vil_blocks_and_trains(phantom2d_prepared, nnunet_root):
    """The ablation ``xlstm_enc_bidir``: the enc network plus a reversed block at every ViL stage (the enc
    network's state-dict keys plus ``.vil.blocks.1.*``); one train step is finite and reaches the reversed blocks."""
    from nnunetv2.run.run_training import get_trainer_from_args

    from xlstm_unet.nnunet import get_method
    from xlstm_unet.nnunet.env import apply_env
    from xlstm_unet.vil import Direction, ViLStage

    apply_env()
    method = get_method("xlstm_enc_bidir")
    assert (method.trainer, method.label) == ("nnUNetTrainerXLSTMEncBidir", "xLSTM-UNet Enc (bidirectional)")
    trainers = {}
    for name in ("nnUNetTrainerXLSTMEnc_1ep_1it", "nnUNetTrainerXLSTMEncBidir_1ep_1it"):
        trainers[name] = get_trainer_from_args(phantom2d_prepared, "2d", 0, name, "nnUNetPlans",
                                               device=torch.device("cpu"))
        trainers[name].initialize()
    plain, tr = trainers.values()
    vils = [m for m in tr.network.modules() if isinstance(m, ViLStage)]
    assert len(vils) == len(tr.network.vil_stages) == len(plain.network.vil_stages) > 0
    for vil in vils:
        assert vil.directions is Direction.BIDIRECTIONAL and [b.reverse for b in vil.blocks] == [False, True]
    keys, plain_keys = set(tr.network.state_dict()), set(plain.network.state_dict())
    assert plain_keys < keys and all(".vil.blocks.1." in k for k in keys - plain_keys)
    assert tr.recipe_variant == "enc" and tr.network_description()["vil_kwargs"] == {"directions": "bidirectional"}

    tr.enable_deep_supervision = False
    tr.set_deep_supervision_enabled(False)
    tr.loss = tr._build_loss()
    gen = torch.Generator().manual_seed(0)
    ps = tr.configuration_manager.patch_size
    data = torch.randn((2, tr.num_input_channels, *ps), generator=gen)
    target = torch.randint(0, 2, (2, 1, *ps), generator=gen).float()
    assert np.isfinite(tr.train_step({"data": data, "target": target})["loss"])
    reversed_grads = [p.grad for n, p in tr.network.named_parameters() if ".vil.blocks.1." in n]
    assert reversed_grads and all(g is not None for g in reversed_grads)
    assert sum(g.abs().sum() for g in reversed_grads) > 0


@pytest.mark.slow
def test_nan_loss_stops_with_the_epoch(phantom2d_prepared):
    from nnunetv2.run.run_training import get_trainer_from_args

    tr = get_trainer_from_args(phantom2d_prepared, "2d", 0, "nnUNetTrainerXLSTMBot_1ep_1it", "nnUNetPlans",
                               device=torch.device("cpu"))
    tr.initialize()
    tr.enable_deep_supervision = False
    tr.set_deep_supervision_enabled(False)
    tr.loss = tr._build_loss()
    ps = tr.configuration_manager.patch_size
    data = torch.full((2, tr.num_input_channels, *ps), float("nan"))
    target = torch.zeros((2, 1, *ps))
    with pytest.raises(NonFiniteLossError, match="epoch 0"):
        tr.train_step({"data": data, "target": target})


@pytest.mark.slow
def test_resume_continues_instead_of_restarting(phantom2d_prepared):
    fold = train(phantom2d_prepared, "xlstm_bot", epochs=2, iterations=1, device="cpu", stop_after_epoch=1)
    assert (fold / "checkpoint_latest.pth").is_file() and not (fold / "checkpoint_final.pth").exists()
    ck = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    assert ck["current_epoch"] == 1
    fold2 = train(phantom2d_prepared, "xlstm_bot", epochs=2, iterations=1, device="cpu", resume=True,
                  validate=False)
    assert fold2 == fold
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2
    # one training loss per epoch: epoch 0 from the first run, epoch 1 from the resumed one (no restart)
    assert len(final["logging"]["train_losses"]) == 2
    assert {len(v) for v in final["logging"].values()} == {2}  # the pause checkpoint holds the whole epoch 0


# ----------------------------------------------------------------------------------------------- nnU-Net's CLI

@pytest.mark.slow
def test_nnunet_cli_train_and_predict_on_real_kvasir(kvasir_prepared, nnunet_root, tmp_path):
    from nnunet_cli import cli_env, run_cli

    raw = nnunet_root / "nnUNet_raw" / kvasir_prepared
    env = cli_env(nnunet_root)
    did = kvasir_prepared[7:10]
    tr = "nnUNetTrainerXLSTMBot_1ep_1it_bs2"
    run_cli(["nnUNetv2_train", did, "2d", "0", "-tr", tr, "-device", "cpu"], env)
    fold = nnunet_root / "nnUNet_results" / raw.name / f"{tr}__nnUNetPlans__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    assert json.loads((fold / "run_config.json").read_text())["recipe"]["lr"] == 0.01  # endoscopy, paper
    run_cli(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(tmp_path / "pred"), "-d", did,
             "-c", "2d", "-f", "0", "-tr", tr, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"],
            env)
    _check_predictions(tmp_path / "pred", raw)
