"""The paper's setting, decided on CPU: splits, pinned patch sizes and spacings, batch size, AMP, compile, seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xlstm_unet.nnunet import model_folder, predict, prepare, train, write_splits
from xlstm_unet.nnunet.plans import ConfigurationOverride, parse_configuration
from xlstm_unet.nnunet.trainers import CURVE_FILE, force_fp32
from xlstm_unet.nnunet.variants import parse_variant_name, trainer_class, trainer_variant_name

SPLIT_ID = 905


def _trainer(dataset: str, name: str, configuration: str = "2d", fold=0, device: str = "cpu"):
    from nnunetv2.run.run_training import get_trainer_from_args

    from xlstm_unet.nnunet.env import apply_env

    apply_env()
    return get_trainer_from_args(dataset, configuration, fold, name, "nnUNetPlans", device=torch.device(device))


def _weights(fold_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]


# ----------------------------------------------------------------------------------------------- names

def test_trainer_grammar_has_batch_size_precision_and_seed():
    name = trainer_variant_name("nnUNetTrainerXLSTMEnc", epochs=5, iterations=10, batch_size=2, amp=False, seed=3)
    assert name == "nnUNetTrainerXLSTMEnc_5ep_10it_bs2_noamp_seed3"
    spec = parse_variant_name(name)
    assert (spec["batch_size"], spec["amp"], spec["seed"]) == (2, False, 3)
    assert parse_variant_name("nnUNetTrainerXLSTMEnc_seed0")["seed"] == 0
    assert parse_variant_name("nnUNetTrainerXLSTMEnc")["amp"] is True
    cls = trainer_class(name)
    assert (cls.batch_size_override, cls.amp, cls.seed, cls.budget_epochs) == (2, False, 3, 5)
    for bad in ("nnUNetTrainerXLSTMEnc_bs0", "nnUNetTrainerXLSTMEnc_seed1_bs2", "nnUNetTrainerXLSTMEnc_seed01",
                "nnUNetTrainerXLSTMEnc_noamp_noamp"):
        with pytest.raises(ValueError, match="not a trainer variant name"):
            parse_variant_name(bad)


def test_configuration_names_parse_and_check_their_dimensions():
    assert parse_configuration("2d") == ConfigurationOverride("2d")
    assert not parse_configuration("3d_fullres").is_override
    c = parse_configuration("3d_fullres_p48x160x224")
    assert (c.base, c.patch_size, c.spacing) == ("3d_fullres", (48, 160, 224), None)
    c = parse_configuration("2d_p128x128_sp2x2")
    assert (c.patch_size, c.spacing, c.name) == ((128, 128), (2.0, 2.0), "2d_p128x128_sp2x2")
    assert parse_configuration("3d_fullres_sp6.5x1.375x1.375").spacing == (6.5, 1.375, 1.375)
    with pytest.raises(ValueError, match="needs 2 values"):
        parse_configuration("2d_p32x32x32")
    with pytest.raises(ValueError, match="needs 3 values"):
        parse_configuration("3d_fullres_sp1x1")


# ----------------------------------------------------------------------------------------------- 1. splits

@pytest.fixture(scope="module")
def split_dataset(nnunet_root: Path) -> str:
    from xlstm_unet.datasets import convert

    raw = convert("phantom2d", out_root=nnunet_root / "nnUNet_raw", dataset_id=SPLIT_ID, seed=0, n_train=7,
                  n_val=2, n_test=1, shape=(32, 32), progress=False)
    prepare(SPLIT_ID, configurations=("2d",), num_processes=1)
    return raw.name


@pytest.mark.slow
def test_converter_split_is_nnunets_fold_0(split_dataset, nnunet_root):
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    split = json.loads((nnunet_root / "nnUNet_raw" / split_dataset / "split.json").read_text())
    assert split["val"] == ["phantom2d_005", "phantom2d_006"]
    tr, val = _trainer(split_dataset, "nnUNetTrainerRecipe_1ep_1it", fold=0).do_split()
    assert sorted(val) == split["val"]
    assert sorted(tr) == [c for c in split["train"] if c not in split["val"]]
    # the other folds are nnU-Net's own seeded 5-fold split of every training case
    tr1, val1 = _trainer(split_dataset, "nnUNetTrainerRecipe_1ep_1it", fold=1).do_split()
    expected = generate_crossval_split(sorted(split["train"]), seed=12345, n_splits=5)[1]
    assert (sorted(tr1), sorted(val1)) == (sorted(expected["train"]), sorted(expected["val"]))
    # prepare() again keeps the file; a dataset without a validation part gets none from us
    out = write_splits(split_dataset)
    assert json.loads(out.read_text())[0]["val"] == split["val"]


@pytest.mark.slow
def test_prepare_command_writes_the_split_too(split_dataset, nnunet_root, capsys):
    from xlstm_unet.cli import main

    splits = nnunet_root / "nnUNet_preprocessed" / split_dataset / "splits_final.json"
    splits.unlink()
    assert main(["prepare", str(SPLIT_ID), "-c", "2d", "-np", "1"]) == 0
    assert json.loads(splits.read_text())[0]["val"] == ["phantom2d_005", "phantom2d_006"]
    assert capsys.readouterr().out.strip().endswith(split_dataset)


@pytest.mark.slow
def test_no_validation_part_leaves_nnunets_split(phantom2d_prepared):
    assert write_splits(phantom2d_prepared) is None


@pytest.mark.slow
def test_fold_all_trains_on_every_case_and_predicts(phantom2d_prepared, nnunet_root, tmp_path):
    tr, val = _trainer(phantom2d_prepared, "nnUNetTrainerRecipe_1ep_1it", fold="all").do_split()
    raw = nnunet_root / "nnUNet_raw" / phantom2d_prepared
    assert sorted(tr) == sorted(val) == json.loads((raw / "split.json").read_text())["train"]
    fold = train(phantom2d_prepared, "nnunet", fold="all", epochs=1, iterations=1, device="cpu", validate=False)
    assert fold.name == "fold_all" and (fold / "checkpoint_final.pth").is_file()
    out = predict(fold, raw / "imagesTs", tmp_path / "pred", device="cpu", mirroring=False)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in (raw / "labelsTs").glob("*.png"))


# ----------------------------------------------------------------------------------------------- 2. patch, spacing, batch

@pytest.mark.slow
def test_pinned_patch_spacing_and_batch_reach_trainer_and_predictor(phantom2d_prepared, nnunet_root, tmp_path):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from PIL import Image

    config = "2d_p32x32_sp2x2"
    pre = prepare(phantom2d_prepared, configurations=(config,), num_processes=1)
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    entry = plans["configurations"][config]
    assert entry["inherits_from"] == "2d" and entry["patch_size"] == [32, 32] and entry["spacing"] == [2.0, 2.0]
    # nnU-Net preprocessed the cases at the new spacing: 64 x 64 phantom slices -> 32 x 32
    tr = _trainer(phantom2d_prepared, "nnUNetTrainerRecipe_1ep_1it_bs3", configuration=config)
    assert list(tr.configuration_manager.patch_size) == [32, 32]
    assert tr.configuration_manager.batch_size == 3
    tr.initialize()
    assert tr.batch_size == 3
    ds = tr.dataset_class(tr.preprocessed_dataset_folder)
    data, _, _, _ = ds.load_case(sorted(ds.identifiers)[0])
    assert tuple(data.shape[-2:]) == (32, 32)

    fold = train(phantom2d_prepared, "nnunet", configuration=config, epochs=1, iterations=1, batch_size=3,
                 device="cpu", validate=False)
    run_config = json.loads((fold / "run_config.json").read_text())
    assert (run_config["patch_size"], run_config["batch_size"], run_config["spacing"]) == ([32, 32], 3, [2.0, 2.0])
    assert json.loads((fold.parent / "plans.json").read_text())["configurations"][config]["batch_size"] == 3
    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False)
    predictor.initialize_from_trained_model_folder(str(fold.parent), [0])
    assert list(predictor.configuration_manager.patch_size) == [32, 32]
    raw = nnunet_root / "nnUNet_raw" / phantom2d_prepared
    out = predict(fold, raw / "imagesTs", tmp_path / "pred", device="cpu", mirroring=False)
    for gt in (raw / "labelsTs").glob("*.png"):  # exported back at the original resolution
        assert np.asarray(Image.open(out / gt.name)).shape == np.asarray(Image.open(gt)).shape == (64, 64)


# ----------------------------------------------------------------------------------------------- 3. compile

@pytest.mark.slow
def test_compile_is_off_unless_asked(phantom2d_prepared, monkeypatch):
    monkeypatch.delenv("nnUNet_compile", raising=False)
    with pytest.warns(UserWarning):  # GradScaler("cuda") warns without CUDA; nothing here touches a GPU
        tr = _trainer(phantom2d_prepared, "nnUNetTrainerXLSTMBot_1ep_1it", device="cuda")
    assert tr._do_i_compile() is False
    assert "torch.compile off" in Path(tr.log_file).read_text()
    monkeypatch.setenv("nnUNet_compile", "1")
    assert tr._do_i_compile() is True  # nnU-Net's own rule: CUDA on Linux compiles


# ----------------------------------------------------------------------------------------------- 4. precision

@pytest.mark.slow
def test_noamp_reaches_grad_scaler_and_autocast(phantom2d_prepared):
    with pytest.warns(UserWarning):
        default = _trainer(phantom2d_prepared, "nnUNetTrainerXLSTMBot_1ep_1it", device="cuda")
        fp32 = _trainer(phantom2d_prepared, "nnUNetTrainerXLSTMBot_1ep_1it_noamp", device="cuda")
    assert isinstance(default.grad_scaler, torch.amp.GradScaler) and fp32.grad_scaler is None
    nets = {}
    for tr in (default, fp32):  # the build the trainer and nnU-Net's predictor both call
        nets[tr] = type(tr).build_network_architecture(tr.plans_manager, tr.configuration_manager, 1,
                                                       tr.label_manager.num_segmentation_heads, False)
    x = torch.randn(1, 1, *default.configuration_manager.patch_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # stands in for nnU-Net's CUDA autocast
        assert nets[default](x).dtype == torch.bfloat16
        assert nets[fp32](x).dtype == torch.float32
    assert nets[fp32].state_dict().keys() == nets[default].state_dict().keys()
    assert force_fp32(nets[fp32]) is nets[fp32]  # idempotent


@pytest.mark.slow
def test_noamp_changes_nothing_on_cpu_and_seeds_reproduce(phantom2d_prepared):
    runs = {amp: train(phantom2d_prepared, "nnunet", epochs=1, iterations=2, amp=amp, seed=0, device="cpu",
                       validate=False) for amp in (True, False)}
    assert runs[True].parent.name.startswith("nnUNetTrainerRecipe_1ep_2it_seed0__")
    assert runs[False].parent.name.startswith("nnUNetTrainerRecipe_1ep_2it_noamp_seed0__")
    a, b = _weights(runs[True]), _weights(runs[False])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # another seed starts from other weights
    inits = []
    for name in ("nnUNetTrainerRecipe_1ep_1it_seed0", "nnUNetTrainerRecipe_1ep_1it_seed1"):
        tr = _trainer(phantom2d_prepared, name)
        tr.initialize()
        inits.append(next(iter(tr.network.parameters())).detach().clone())
    assert not torch.equal(*inits)


@pytest.mark.slow
def test_training_curve_matches_nnunets_log(phantom2d_prepared):
    fold = model_folder(phantom2d_prepared, "nnunet", epochs=1, iterations=2, seed=0) / "fold_0"
    if not (fold / "checkpoint_final.pth").is_file():
        fold = train(phantom2d_prepared, "nnunet", epochs=1, iterations=2, seed=0, device="cpu", validate=False)
    import pandas as pd

    curve = pd.read_csv(fold / CURVE_FILE)
    log = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
    assert list(curve["epoch"]) == list(range(len(log["train_losses"])))
    np.testing.assert_allclose(curve["train_loss"], log["train_losses"], rtol=1e-5)
    np.testing.assert_allclose(curve["epoch_s"], np.subtract(log["epoch_end_timestamps"],
                                                             log["epoch_start_timestamps"]), rtol=1e-4)
    assert (curve["epoch_cpu_s"] > 0).all()


# ----------------------------------------------------------------------------------------------- 5. paper tables

def test_every_converters_folder_name_finds_its_paper_dataset():
    from xlstm_unet.datasets import DATASETS
    from xlstm_unet.paper_results import match_dataset

    expected = {"amos_mri": ("abdomen_mri_2d", "abdomen_mri_3d"), "endovis17": ("endoscopy", "endoscopy"),
                "neurips_cells": ("microscopy_cells", "microscopy_cells"), "brats23": ("brats2023", "brats2023")}
    for name, info in DATASETS.items():
        folder = f"Dataset{info.default_id:03d}_{info.folder_name}"  # what the converter writes
        got = (match_dataset(folder, "2d"), match_dataset(folder, "3d_fullres_p48x160x224"))
        assert got == expected.get(name, (None, None)), f"{name} ({folder}): {got}"
    assert match_dataset("Dataset701_AMOSMRI") is None  # 2D or 3D: the configuration decides


def test_paper_tables_show_every_paper_row_with_footnotes(tmp_path):
    from xlstm_unet import paper_results
    from xlstm_unet.figures import PAPER_TABLES, paper_table, table_to_markdown

    for key, table_id in (("abdomen_mri_2d", "1"), ("endoscopy", "1"), ("microscopy_cells", "1"),
                          ("brats2023", "2"), ("abdomen_mri_3d", "3")):
        paper_rows = {v.method for v in paper_results.PAPER_VALUES if v.dataset == key} - {"xlstm"}
        assert paper_rows <= set(PAPER_TABLES[table_id]["methods"]), (table_id, paper_rows)
    t2 = paper_table("2", tmp_path)
    assert t2.loc["segmamba", ("brats_3d", "dice_wt", "paper")] in ("0.9361*", "0.9361**")
    assert t2.loc["segmamba", ("brats_3d", "dice_wt", "measured")] == "not run"
    assert t2.loc["uxnet", ("brats_3d", "dice_wt", "paper")] == "0.9313"
    md = table_to_markdown(t2)
    assert "SegMamba's own published BraTS 2023 results" in md and "Ours" in md
    t3 = paper_table("3", tmp_path)
    assert t3.loc["nnunet", ("abdomen_mri_3d", "dice_mean", "paper")] == "0.8309 ± 0.0769"


def test_gpu_paper_config_pins_the_papers_setting():
    from xlstm_unet.batch import load_config
    from xlstm_unet.paths import REPO_ROOT

    cfg = {e.name: e.parameters for e in load_config(REPO_ROOT / "experiments" / "gpu_paper.yaml").experiments}
    assert all(p["fold"] == "all" and p["epochs"] == 1000 and p["iterations_per_epoch"] == 250 for p in cfg.values())
    assert cfg["abdomen_mri_2d"]["configuration"] == "2d_p320x320"
    assert cfg["abdomen_mri_3d"]["configuration"] == "3d_fullres_p48x160x224"
    for name in ("brats_3d", "abdomen_mri_3d"):
        assert {"nnunet", "uxnet", "segmamba", "segformer3d"} <= set(cfg[name]["methods"])


# ----------------------------------------------------------------------------------------------- 6. the GPU check

@pytest.mark.slow
def test_paper_path_check_runs_a_method_through_nnunets_cli(tmp_path):
    import subprocess
    import sys

    from xlstm_unet.paths import REPO_ROOT

    out = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "paper_path.py"), "--json", "--device",
                          "cpu", "--methods", "nnunet", "--dims", "2", "--configuration-2d", "2d", "--epochs", "1",
                          "--iterations", "1", "--workers", "1", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    (row,) = result["rows"]
    assert (row["method"], row["configuration"], row["status"]) == ("nnunet", "2d", "ok")
    assert row["trainer"] == "nnUNetTrainerRecipe_1ep_1it"
    assert row["step_s"] > 0 and row["peak_mem_mb"] > 0 and 0 <= row["dice_mean"] <= 1
    assert "nnUNetv2_train 941 2d all" in (tmp_path / "paper_path.log").read_text()


def test_training_shows_an_epoch_progress_bar(phantom2d_prepared, capsys):
    train(phantom2d_prepared, "nnunet", epochs=2, iterations=1, seed=5, device="cpu", validate=False)
    err = capsys.readouterr().err
    assert "nnUNetTrainerRecipe_2ep_1it_seed5" in err and "2/2" in err and "epoch" in err
