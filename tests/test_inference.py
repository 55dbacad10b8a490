"""``xlstm-unet predict``: any file names, checks against the model's dataset.json, masks named like the inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fixtures_datasets import read_png, snapshot_mtimes, write_nifti, write_png
from xlstm_unet.cli import main
from xlstm_unet.datasets import DatasetFormatError
from xlstm_unet.inference import ModelInputs, find_cases, predict_images
from xlstm_unet.nnunet import predict


def _fake_model(root: Path, channels: list[str], ending: str, dims: int) -> Path:
    """A model folder with the files the input checks read (no weights: the checks run before loading)."""
    model = root / "Dataset999_Fake" / "nnUNetTrainerRecipe__nnUNetPlans__2d"
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text("{}")
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    ds = {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": {"background": 0, "fg": 1},
          "file_ending": ending, "xlstm_unet": {"dims": dims}}
    (model / "dataset.json").write_text(json.dumps(ds))
    return model


def _check_overlay(img: np.ndarray, lab: np.ndarray, over: np.ndarray) -> None:
    """Grey image (intensity-normalised) where ``lab`` is background, coloured (R != G or G != B) where it is not."""
    bg = lab == 0
    assert np.all(over[bg][:, 0] == over[bg][:, 1]) and np.all(over[bg][:, 1] == over[bg][:, 2])
    grey = (img.astype(float) - img.min()) / max(np.ptp(img.astype(float)), 1)
    if bg.sum() > 10 and np.ptp(grey[bg]) > 0:
        assert np.corrcoef(over[bg][:, 0], grey[bg])[0, 1] > 0.95
    fg = ~bg
    assert np.all((over[fg][:, 0] != over[fg][:, 1]) | (over[fg][:, 1] != over[fg][:, 2]))


def test_overlay_is_the_grey_image_with_label_colours(tmp_path):
    from xlstm_unet.inference import _overlay

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    lab = np.zeros((40, 48), np.uint8)
    lab[5:15, 5:20], lab[20:35, 30:45] = 1, 2
    write_png(tmp_path / "img.png", img)
    write_png(tmp_path / "mask.png", lab)
    _overlay([tmp_path / "img.png"], tmp_path / "mask.png", ModelInputs(("grey",), ".png", 2, 3), tmp_path / "o.png")
    over = read_png(tmp_path / "o.png")
    assert over.shape == (40, 48, 3) and over.dtype == np.uint8
    _check_overlay(img, lab, over)
    # the two labels get different colours
    assert np.abs(over[lab == 1].mean(0) - over[lab == 2].mean(0)).max() > 10


# ----------------------------------------------------------------------------------------------- phantom, trained

@pytest.mark.slow
def test_predict_matches_nnunet_on_renamed_phantom_images(phantom2d_model, phantom2d_prepared, nnunet_root,
                                                          tmp_path):
    raw = nnunet_root / "nnUNet_raw" / phantom2d_prepared
    sources = sorted((raw / "imagesTs").glob("*_0000.png"))
    inp = tmp_path / "my images"
    names = [f"scan {i + 1}.png" for i in range(len(sources))]
    for src, name in zip(sources, names):
        write_png(inp / name, read_png(src))
    before = snapshot_mtimes(inp)
    masks = predict_images(phantom2d_model.parent, inp, tmp_path / "out", overlay=True, progress=False)
    assert [m.name for m in masks] == names
    ref = predict(phantom2d_model, raw / "imagesTs", tmp_path / "ref")  # nnU-Net's own folder naming
    for src, mask in zip(sources, masks):
        np.testing.assert_array_equal(read_png(mask), read_png(ref / src.name.replace("_0000", "")))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*names, "overlays"])  # masks only
    assert snapshot_mtimes(inp) == before  # inputs untouched
    # an overlay per mask, of the image's size (its colours: test_overlay_is_the_grey_image_with_label_colours)
    for name, mask in zip(names, masks):
        over = read_png(tmp_path / "out" / "overlays" / name)
        assert over.shape == (*read_png(mask).shape, 3) and over.dtype == np.uint8
        _check_overlay(read_png(inp / name), read_png(mask), over)

    # again without --overwrite: refused, files untouched; with it: same masks
    out_mtimes = snapshot_mtimes(tmp_path / "out")
    assert main(["predict", str(phantom2d_model), str(inp), str(tmp_path / "out"), "--quiet"]) == 2
    assert snapshot_mtimes(tmp_path / "out") == out_mtimes
    one = tmp_path / "one"
    assert main(["predict", str(phantom2d_model), str(inp / names[1]), str(one), "--quiet"]) == 0
    np.testing.assert_array_equal(read_png(one / names[1]), read_png(masks[1]))
    assert sorted(p.name for p in one.iterdir()) == [names[1]]


@pytest.mark.slow
def test_predict_3d_case_folder_with_named_channel_files(phantom3d_prepared, nnunet_root, tmp_path):
    """A new 3D case as a folder of channel files named after the model's channels (BraTS style), with a seg file
    to ignore: the same mask as nnU-Net's predictor on the converted case, and an overlay."""
    from xlstm_unet.nnunet import train
    from xlstm_unet.datasets.phantom import PHANTOM3D_CHANNELS

    fold = train(phantom3d_prepared, "nnunet", configuration="3d_fullres", epochs=1, iterations=1, device="cpu",
                 validate=False)
    raw = nnunet_root / "nnUNet_raw" / phantom3d_prepared
    case = sorted((raw / "labelsTs").glob("*.nii.gz"))[0].name[: -len(".nii.gz")]
    study = tmp_path / "new patients" / "BraTS-GLI-00042-000"
    study.mkdir(parents=True)
    for c, name in sorted(PHANTOM3D_CHANNELS.items()):
        shutil.copy(raw / "imagesTs" / f"{case}_{int(c):04d}.nii.gz", study / f"{study.name}-{name}.nii.gz")
    shutil.copy(raw / "labelsTs" / f"{case}.nii.gz", study / f"{study.name}-seg.nii.gz")
    masks = predict_images(fold, study.parent, tmp_path / "out", overlay=True, progress=False)
    assert [m.name for m in masks] == ["BraTS-GLI-00042-000.nii.gz"]
    ref = predict(fold, raw / "imagesTs", tmp_path / "ref")
    import SimpleITK as sitk

    got, want = (sitk.ReadImage(str(p)) for p in (masks[0], ref / f"{case}.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(want))
    assert got.GetSpacing() == pytest.approx(want.GetSpacing())
    assert read_png(tmp_path / "out" / "overlays" / "BraTS-GLI-00042-000.png").shape[2] == 3


# ----------------------------------------------------------------------------------------------- input rules

def test_input_errors_name_the_file_and_write_nothing(tmp_path):
    grey = _fake_model(tmp_path / "grey", ["CT"], ".png", 2)
    rgb = _fake_model(tmp_path / "rgb", ["R", "G", "B"], ".png", 2)
    out = tmp_path / "out"
    cases = [
        (grey, write_png(tmp_path / "in1" / "photo 1.png", np.zeros((8, 8, 3), np.uint8)),
         r"photo 1\.png: an RGB image with 3 channels, but the model expects 1 channel \(CT\); convert it to grey"),
        (rgb, write_png(tmp_path / "in2" / "scan.png", np.zeros((8, 8), np.uint8)),
         r"scan\.png: a grey image with 1 channel, but the model expects 3 channels \(R, G, B\); give an RGB"),
        (grey, write_nifti(tmp_path / "in3" / "brain.nii.gz", np.zeros((4, 4, 4), np.float32)),
         r"brain\.nii\.gz: a 3D volume \(\.nii\.gz\), but this model segments 2D images"),
        (grey, tmp_path / "in4" / "notes.txt", r"notes\.txt: unsupported file type '\.txt'"),
    ]
    (tmp_path / "in4").mkdir()
    (tmp_path / "in4" / "notes.txt").write_text("hello")
    write_png(tmp_path / "in4" / "ok.png", np.zeros((8, 8), np.uint8))
    for model, path, match in cases:
        with pytest.raises(DatasetFormatError, match=match):
            predict_images(model, path.parent, out, progress=False)
        assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
    vol = _fake_model(tmp_path / "vol", ["t1", "flair"], ".nii.gz", 3)
    with pytest.raises(DatasetFormatError, match=r"scan\.png: a 2D image \(\.png\), but this model segments 3D"):
        predict_images(vol, tmp_path / "in2", out, progress=False)
    case = tmp_path / "in5" / "patient7"
    write_nifti(case / "patient7_t1.nii.gz", np.zeros((4, 4, 4), np.float32), spacing=(1.0, 1.0, 2.0))
    write_nifti(case / "seg.nii.gz", np.zeros((4, 4, 4), np.uint8), spacing=(1.0, 1.0, 2.0))
    with pytest.raises(DatasetFormatError, match=r"patient7: no file for channel 'flair'"):
        predict_images(vol, case.parent, out, progress=False)
    write_nifti(case / "patient7_flair.nii.gz", np.zeros((4, 4, 5), np.float32), spacing=(1.0, 1.0, 2.0))
    with pytest.raises(DatasetFormatError, match=r"patient7_flair\.nii\.gz: geometry \(4, 4, 5\)"):
        predict_images(vol, case.parent, out, progress=False)
    write_nifti(tmp_path / "in6" / "a.nii.gz", np.zeros((4, 4, 4), np.float32), spacing=(1.0, 1.0, 2.0))
    with pytest.raises(DatasetFormatError, match=r"a\.nii\.gz: a case of 1 volume with 1 channel, but the model "
                                                 r"expects 2 channels \(t1, flair\); give each case a folder"):
        predict_images(vol, tmp_path / "in6", out, progress=False)
    write_png(tmp_path / "in7" / "a.png", np.zeros((8, 8), np.uint8))
    write_png(tmp_path / "in7" / "a.jpg", np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetFormatError, match=r"a\.png: its mask would have the same name as the mask of a\.jpg"):
        predict_images(grey, tmp_path / "in7", out, progress=False)
    assert not out.exists()
    assert main(["predict", str(grey), str(tmp_path / "in1"), str(out)]) == 2


def test_failure_while_predicting_leaves_output_as_it_was(tmp_path, monkeypatch):
    import xlstm_unet.nnunet.api as api

    class FailsOnSecondCase:
        calls = 0

        def predict_from_files_sequential(self, files, outputs, **kwargs):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("out of memory")
            write_png(Path(outputs[0] + ".png"), np.ones((8, 8), np.uint8))

    monkeypatch.setattr(api, "load_predictor", lambda *a, **k: FailsOnSecondCase())
    model = _fake_model(tmp_path / "m", ["CT"], ".png", 2)
    for name in ("a.png", "b.png"):
        write_png(tmp_path / "in" / name, np.zeros((8, 8), np.uint8))
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="out of memory"):
        predict_images(model, tmp_path / "in", out, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="out of memory"):
        predict_images(model, tmp_path / "in", out, overlay=True, progress=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and not list(tmp_path.glob(".out.partial-*"))


def test_case_folders_channels_by_name_or_index_and_3d_staging(tmp_path):
    from xlstm_unet.inference import _stage_3d

    spec = ModelInputs(channel_names=("t1", "t1c", "t2", "flair"), file_ending=".nii.gz", dims=3, num_classes=2)
    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    study = tmp_path / "new patient" / "PGBM-009_2001-01-01"  # the PGBM raw layout, with its seg
    for i, m in enumerate(["t1", "t1c", "t2", "flair", "seg"]):
        write_nifti(study / f"{m}.nii.gz", vol + i, spacing=(1.0, 1.0, 2.0))
    other = tmp_path / "new patient" / "case2"  # nnU-Net channel indices, one as plain .nii
    for i in range(4):
        write_nifti(other / f"case2_{i:04d}.nii{'' if i == 2 else '.gz'}", vol - i, spacing=(1.0, 1.0, 2.0))
    cases = find_cases(tmp_path / "new patient", spec)
    assert [c.name for c in cases] == ["PGBM-009_2001-01-01", "case2"]
    assert [f.name for f in cases[0].files] == ["t1.nii.gz", "t1c.nii.gz", "t2.nii.gz", "flair.nii.gz"]
    assert [f.name for f in cases[1].files] == [f"case2_000{i}.nii{'' if i == 2 else '.gz'}" for i in range(4)]
    one = find_cases(study, spec)  # the case folder itself
    assert [(c.name, c.files) for c in one] == [(cases[0].name, cases[0].files)]
    stage = tmp_path / "stage"
    stage.mkdir()
    staged = _stage_3d(cases[1], spec, stage / "case0001")
    assert [p.name for p in staged] == [f"case0001_000{i}.nii.gz" for i in range(4)]
    assert staged[0].is_symlink() and not staged[2].is_symlink()  # .nii converted to the model's .nii.gz
    import SimpleITK as sitk

    for i, p in enumerate(staged):
        img = sitk.ReadImage(str(p))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img), np.transpose(vol - i, (2, 1, 0)))
        assert img.GetSpacing() == pytest.approx((1.0, 1.0, 2.0))


def test_3d_overlay_shows_the_slice_with_the_largest_mask(tmp_path):
    import SimpleITK as sitk

    from xlstm_unet.figures import label_colors
    from xlstm_unet.inference import _overlay

    spec = ModelInputs(channel_names=("CT",), file_ending=".nii.gz", dims=3, num_classes=3)
    img = np.zeros((6, 8, 10), np.float32)  # (Z, Y, X) as SimpleITK arrays
    img[:, :, 5:] = 100.0
    lab = np.zeros((6, 8, 10), np.uint8)
    lab[1, 0:2, 0:2] = 1
    lab[4, 2:6, 0:4] = 2  # 16 voxels: the largest slice
    for arr, name in ((img, "img.nii.gz"), (lab, "mask.nii.gz")):
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / name))
    _overlay([tmp_path / "img.nii.gz"], tmp_path / "mask.nii.gz", spec, tmp_path / "o.png")
    over = read_png(tmp_path / "o.png")
    assert over.shape == (8, 10, 3)
    expected = np.round(255 * 0.5 * label_colors(3)[2]).astype(np.uint8)  # dark image + 50 % label-2 colour
    np.testing.assert_array_equal(over[3, 1], expected)
    np.testing.assert_array_equal(over[0, 0], [0, 0, 0])  # label 1 is on another slice
    np.testing.assert_array_equal(over[0, 9], [255, 255, 255])


# ----------------------------------------------------------------------------------------------- real Kvasir files

@pytest.fixture(scope="module")
def kvasir_model(kvasir_prepared) -> Path:
    from xlstm_unet.nnunet import train

    return train(kvasir_prepared, "nnunet", epochs=1, iterations=1, device="cpu", validate=False)


@pytest.mark.slow
@pytest.mark.shared_data
def test_predict_real_kvasir_jpgs_under_user_names(kvasir_model, kvasir_prepared, kvasir_dir, nnunet_root,
                                                   phantom2d_model, tmp_path):
    raw = nnunet_root / "nnUNet_raw" / kvasir_prepared
    test_ids = json.loads((raw / "split.json").read_text())["test"][:2]
    inp = tmp_path / "endoscopy"
    inp.mkdir()
    for i, cid in enumerate(test_ids):
        shutil.copy(kvasir_dir / "images" / f"{cid}.jpg", inp / f"polyp {i + 1}.jpg")
    masks = predict_images(kvasir_model, inp, tmp_path / "out", overlay=True, progress=False)
    assert [m.name for m in masks] == ["polyp 1.png", "polyp 2.png"]
    ref = predict(kvasir_model, raw / "imagesTs", tmp_path / "ref")  # the converter's PNGs, nnU-Net's naming
    for cid, mask in zip(test_ids, masks):
        m = read_png(mask)
        assert m.shape == read_png(raw / "imagesTs" / f"{cid}_0000.png").shape[:2]
        assert set(np.unique(m)) <= {0, 1}
        np.testing.assert_array_equal(m, read_png(ref / f"{cid}.png"))  # JPEG staged exactly as converted
        assert read_png(tmp_path / "out" / "overlays" / mask.name).shape == (*m.shape, 3)
    with pytest.raises(DatasetFormatError, match=r"polyp 1\.jpg: an RGB image with 3 channels, but the model "
                                                 r"expects 1 channel"):
        predict_images(phantom2d_model, inp, tmp_path / "grey", progress=False)
