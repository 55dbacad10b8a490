"""``xlstm-unet export`` / ``import``: nnU-Net's zip plus run_config.json, and the checks for untrusted zips."""

from __future__ import annotations

import io
import json
import re
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures_datasets import read_png
from xlstm_unet.cli import main
from xlstm_unet.inference import predict_images
from xlstm_unet.nnunet.share import UnsafeModelError, export_model, import_model, load_checkpoint_safely

MODEL = "Dataset999_Fake/nnUNetTrainerRecipe__nnUNetPlans__2d"
PLANS = {"configurations": {"2d": {"architecture": {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {"conv_op": "torch.nn.modules.conv.Conv2d", "nonlin": "torch.nn.LeakyReLU", "dropout_op": None},
    "_kw_requires_import": ["conv_op", "nonlin", "dropout_op"]}}}}


@pytest.fixture
def fresh_nnunet(tmp_path, monkeypatch) -> Path:
    """nnU-Net's three folders, new and empty, for this test only."""
    root = tmp_path / "fresh"
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / k).mkdir(parents=True)
        monkeypatch.setenv(k, str(root / k))
    return root / "nnUNet_results"


def _checkpoint(**extra) -> bytes:
    """A checkpoint in nnU-Net 2.8's layout (numpy scalars in the log, a torch.device in init_args)."""
    ckpt = {"network_weights": {"w": torch.arange(4.0)}, "optimizer_state": {"state": {}, "param_groups": []},
            "grad_scaler_state": None, "logging": {"mean_fg_dice": [np.float32(0.5)], "lrs": [0.01]},
            "_best_ema": np.float32(0.4), "current_epoch": 1,
            "init_args": {"plans": PLANS, "configuration": "2d", "fold": 0, "device": torch.device("cpu")},
            "trainer_name": "nnUNetTrainerRecipe", "inference_allowed_mirroring_axes": (0, 1), **extra}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes], *, symlinks: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            if name in symlinks:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, data)
    return path


def _model_members(**replace: bytes) -> dict[str, bytes]:
    members = {f"{MODEL}/plans.json": json.dumps(PLANS).encode(),
               f"{MODEL}/dataset.json": b'{"channel_names": {"0": "CT"}, "labels": {"background": 0, "fg": 1}, '
                                        b'"file_ending": ".png"}',
               f"{MODEL}/fold_0/checkpoint_final.pth": _checkpoint(),
               f"{MODEL}/fold_0/run_config.json": b"{}"}
    return {**members, **replace}


class _OpensAFile:
    """Unpickling this calls ``open(marker, "w")``: a harmless stand-in for code a zip could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


# ----------------------------------------------------------------------------------------------- safety rules

@pytest.mark.parametrize("member, symlink, match", [
    ("Dataset999_Fake/../../evil.txt", False, r"'\.\.' in the path"),
    ("/tmp/Dataset999_Fake/evil.txt", False, "absolute path"),
    ("C:/Dataset999_Fake/evil.txt", False, "absolute path"),
    ("Dataset999_Fake\\..\\evil.txt", False, "backslash"),
    (f"{MODEL}/fold_0/evil.txt", True, "symbolic link"),
    ("evil.txt", False, "not an nnU-Net model zip"),
])
def test_zip_members_that_could_leave_the_folder_are_refused(tmp_path, fresh_nnunet, member, symlink, match):
    z = _zip(tmp_path / "m.zip", {**_model_members(), member: b"/etc/passwd" if symlink else b"x"},
             symlinks=(member,) if symlink else ())
    with pytest.raises(UnsafeModelError) as err:
        import_model(z)
    assert f"m.zip: member {member!r}: " in str(err.value) and re.search(match, str(err.value))
    assert not list(fresh_nnunet.iterdir())  # nothing installed, no temporary folder left
    assert not [p for p in tmp_path.rglob("evil.txt")]
    assert main(["import", str(z)]) == 2


def test_checkpoint_that_would_run_code_is_refused_unless_trusted(tmp_path, fresh_nnunet):
    marker = tmp_path / "code_ran"
    evil = _checkpoint(extra=_OpensAFile(marker))
    z = _zip(tmp_path / "m.zip", _model_members(**{f"{MODEL}/fold_0/checkpoint_final.pth": evil}))
    with pytest.raises(UnsafeModelError, match=rf"m\.zip: {MODEL}/fold_0/checkpoint_final\.pth: refused: .*"
                                               r"\((io|builtins)\.open\).*can run arbitrary code"):
        import_model(z)
    assert not marker.exists() and not list(fresh_nnunet.iterdir())
    with pytest.raises(UnsafeModelError, match=r"\((io|builtins)\.open\)"):
        predict_images(z, tmp_path, tmp_path / "out")
    assert not marker.exists()
    # the crafted file is really dangerous: a plain torch.load runs the call
    torch.load(io.BytesIO(evil), weights_only=False)
    assert marker.exists()
    marker.unlink()
    assert import_model(z, trust=True) == [fresh_nnunet / MODEL]  # trust skips the check (and loads nothing)
    assert not marker.exists()


def test_pickle_files_and_foreign_plans_are_refused(tmp_path, fresh_nnunet):
    z = _zip(tmp_path / "a.zip", _model_members(**{f"{MODEL}/crossval_results_folds_0/postprocessing.pkl": b"x"}))
    with pytest.raises(UnsafeModelError, match=r"a\.zip: .*/postprocessing\.pkl: refused: pickle files can run"):
        import_model(z)
    plans = json.loads(json.dumps(PLANS))
    plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["nonlin"] = "os.system"
    z = _zip(tmp_path / "b.zip", _model_members(**{f"{MODEL}/plans.json": json.dumps(plans).encode()}))
    with pytest.raises(UnsafeModelError, match=rf"b\.zip: {MODEL}/plans\.json: refused: configuration '2d' "
                                               r"names 'os\.system'"):
        import_model(z)
    assert not list(fresh_nnunet.iterdir())


def test_installed_model_is_only_replaced_with_overwrite(tmp_path, fresh_nnunet):
    z = _zip(tmp_path / "m.zip", _model_members())
    assert main(["import", str(z)]) == 0
    installed = fresh_nnunet / MODEL
    ckpt = load_checkpoint_safely(installed / "fold_0" / "checkpoint_final.pth")
    assert ckpt["_best_ema"] == np.float32(0.4) and torch.equal(ckpt["network_weights"]["w"], torch.arange(4.0))
    (installed / "fold_0" / "run_config.json").write_text('{"edited": true}')
    with pytest.raises(FileExistsError, match=rf"already installed .*{MODEL}.*overwrite=True"):
        import_model(z)
    assert (installed / "fold_0" / "run_config.json").read_text() == '{"edited": true}'
    assert import_model(z, overwrite=True) == [installed]
    assert (installed / "fold_0" / "run_config.json").read_text() == "{}"
    assert sorted(p.name for p in fresh_nnunet.iterdir()) == ["Dataset999_Fake"]  # no temporary folders left


def test_export_needs_what_nnunets_exporter_packs(tmp_path, fresh_nnunet):
    model = fresh_nnunet / MODEL
    for name, data in _model_members().items():
        (fresh_nnunet / name).parent.mkdir(parents=True, exist_ok=True)
        (fresh_nnunet / name).write_bytes(data)
    with pytest.raises(FileNotFoundError, match=r"dataset_fingerprint\.json is missing"):
        export_model(model, tmp_path / "m.zip")
    (model / "dataset_fingerprint.json").write_text("{}")
    (model / "fold_0" / "progress.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"fold_0/validation/summary\.json is missing.*validate=True"):
        export_model(model / "fold_0", tmp_path / "m.zip")
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob(".m.zip*"))


# ----------------------------------------------------------------------------------------------- round trip

@pytest.mark.slow
def test_export_import_predict_round_trip(phantom2d_model, phantom2d_prepared, nnunet_root, tmp_path,
                                          monkeypatch):
    raw = nnunet_root / "nnUNet_raw" / phantom2d_prepared
    images = raw / "imagesTs"
    ckpt = load_checkpoint_safely(phantom2d_model / "checkpoint_final.pth")  # nnU-Net's real format loads safely
    assert {"network_weights", "optimizer_state", "logging", "init_args", "trainer_name"} <= set(ckpt)
    z = tmp_path / "shared" / "model.zip"
    assert main(["export", str(phantom2d_model.parent), str(z)]) == 0
    rel = f"{phantom2d_prepared}/{phantom2d_model.parent.name}"
    names = zipfile.ZipFile(z).namelist()
    assert {f"{rel}/fold_0/checkpoint_final.pth", f"{rel}/fold_0/run_config.json", f"{rel}/plans.json"} <= set(names)
    with pytest.raises(FileExistsError):
        export_model(phantom2d_model, z)
    before = predict_images(phantom2d_model, images, tmp_path / "before", progress=False)

    fresh = tmp_path / "fresh"
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, str(fresh / k))
    installed = import_model(z)
    assert installed == [fresh / "nnUNet_results" / rel]
    assert (installed[0] / "fold_0" / "run_config.json").read_bytes() == \
        (phantom2d_model / "run_config.json").read_bytes()
    after = predict_images(installed[0], images, tmp_path / "after", progress=False)
    from_zip = predict_images(z, images, tmp_path / "from_zip", progress=False)
    assert [p.name for p in after] == [p.name for p in before] == [p.name for p in from_zip]
    for a, b, c in zip(before, after, from_zip):
        np.testing.assert_array_equal(read_png(a), read_png(b))
        np.testing.assert_array_equal(read_png(a), read_png(c))
    assert main(["import", str(z)]) == 2  # installed already
    assert main(["import", str(z), "--overwrite"]) == 0
