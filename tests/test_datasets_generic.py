"""The generic folder converter and the ``xlstm-unet convert`` command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from fixtures_datasets import read_png, tree_digest, verify_nnunet, write_nifti, write_png
from xlstm_unet.cli import main
from xlstm_unet.datasets import DATASETS, DatasetFormatError, convert
from xlstm_unet.datasets.generic import parse_label_map


def make_generic_2d(root: Path, n: int = 5, rgb: bool = True, mask_scale: int = 1) -> Path:
    rng = np.random.default_rng(0)
    for k in range(n):
        shape = (24, 32, 3) if rgb else (24, 32)
        write_png(root / "images" / f"case{k:02d}.png", rng.integers(0, 256, shape, dtype=np.uint8))
        mask = np.zeros((24, 32), np.uint8)
        mask[4:12, 5:20] = 1
        mask[14:20, 2:8] = 2
        write_png(root / "masks" / f"case{k:02d}.png", mask * mask_scale)
    return root


def make_generic_3d(root: Path, n: int = 4, channels=("t1", "t2"), spacing=(0.8, 0.8, 3.0)) -> Path:
    rng = np.random.default_rng(1)
    for k in range(n):
        for c in channels:
            write_nifti(root / "images" / f"sub{k}_{c}.nii.gz", rng.normal(size=(10, 12, 6)).astype(np.float32),
                        spacing)
        lab = np.zeros((10, 12, 6), np.uint8)
        lab[2:6, 3:8, 1:4] = 1
        write_nifti(root / "masks" / f"sub{k}.nii.gz", lab, spacing)
    return root


def test_generic_2d_rgb(tmp_path, monkeypatch):
    src = make_generic_2d(tmp_path / "src")
    folder = convert("generic", source=src, out_root=tmp_path / "out", labels={"background": 0, "a": 1, "b": 2},
                     dataset_name="Toy", progress=False)
    assert folder.name == "Dataset990_Toy"
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "R", "1": "G", "2": "B"} and dj["file_ending"] == ".png"
    split = json.loads((folder / "split.json").read_text())
    assert len(split["test"]) == 1 and len(split["train"]) == 4
    cid = split["train"][0]
    np.testing.assert_array_equal(read_png(folder / "imagesTr" / f"{cid}_0000.png"),
                                  read_png(src / "images" / f"{cid}.png"))
    np.testing.assert_array_equal(read_png(folder / "labelsTr" / f"{cid}.png"), read_png(src / "masks" / f"{cid}.png"))
    verify_nnunet(folder, monkeypatch)


def test_generic_mask_values_remap(tmp_path):
    src = make_generic_2d(tmp_path / "src", n=3, rgb=False, mask_scale=100)  # masks 0/100/200
    with pytest.raises(DatasetFormatError, match=r"case0\d\.png.*\[100, 200\]"):
        convert("generic", source=src, out_root=tmp_path / "out", labels="background=0,a=1,b=2", progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    folder = convert("generic", source=src, out_root=tmp_path / "out", labels="background=0,a=1,b=2",
                     mask_values={100: 1, 200: 2}, progress=False)
    lab = read_png(folder / "labelsTr" / "case00.png") if (folder / "labelsTr" / "case00.png").exists() \
        else read_png(folder / "labelsTs" / "case00.png")
    assert set(np.unique(lab)) == {0, 1, 2}
    assert json.loads((folder / "dataset.json").read_text())["channel_names"] == {"0": "grey"}


def test_generic_3d_multichannel(tmp_path, monkeypatch):
    import SimpleITK as sitk

    src = make_generic_3d(tmp_path / "src")
    folder = convert("generic", source=src, out_root=tmp_path / "out", labels={"background": 0, "lesion": 1},
                     channels=["t1", "t2"], dataset_id=55, progress=False)
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "t1", "1": "t2"} and dj["file_ending"] == ".nii.gz"
    split = json.loads((folder / "split.json").read_text())
    cid = split["train"][0]
    assert (folder / "imagesTr" / f"{cid}_0001.nii.gz").read_bytes() == \
        (src / "images" / f"{cid}_t2.nii.gz").read_bytes()
    img = sitk.ReadImage(str(folder / "imagesTr" / f"{cid}_0000.nii.gz"))
    assert np.allclose(img.GetSpacing(), (0.8, 0.8, 3.0))
    verify_nnunet(folder, monkeypatch)


def test_generic_needs_labels_and_consistent_channels(tmp_path):
    src = make_generic_3d(tmp_path / "src", n=3)
    with pytest.raises(ValueError, match="label map"):
        convert("generic", source=src, out_root=tmp_path / "o")
    with pytest.raises(DatasetFormatError, match=r"sub0_t1\.nii\.gz.*channel suffixes"):
        convert("generic", source=src, out_root=tmp_path / "o", labels="background=0,x=1", channels=["t2"])
    (src / "images" / "sub1_t2.nii.gz").unlink()
    with pytest.raises(DatasetFormatError, match=r"sub1_t2\.nii\.gz.*missing channel 't2'"):
        convert("generic", source=src, out_root=tmp_path / "o", labels="background=0,x=1", channels=["t1", "t2"])
    assert parse_label_map("background=0, tumor = 1") == {"background": 0, "tumor": 1}
    with pytest.raises(ValueError, match="name=value"):
        parse_label_map("background")


@pytest.mark.slow
def test_cli_help_lists_every_dataset(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["convert", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in DATASETS:
        assert name in out
    for name in ("phantom2d", "phantom3d", "kvasir_seg", "ctc_nuclei", "pgbm_brain_mri", "amos_mri", "endovis17",
                 "neurips_cells", "brats23", "generic"):
        assert name in DATASETS


def test_cli_convert_phantom_and_generic(tmp_path, capsys):
    assert main(["convert", "phantom2d", "--out-root", str(tmp_path), "--quiet", "-o", "n_train=2", "-o",
                 "n_test=1", "-o", "shape=[32, 48]"]) == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert folder == tmp_path / "Dataset901_Phantom2D"
    assert read_png(folder / "imagesTr" / "phantom2d_000_0000.png").shape == (32, 48)
    # same command again: refuses to overwrite, then --overwrite gives byte-identical output
    before = tree_digest(folder)
    assert main(["convert", "phantom2d", "--out-root", str(tmp_path), "--quiet", "-o", "n_train=2", "-o",
                 "n_test=1", "-o", "shape=[32, 48]"]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(["convert", "phantom2d", "--out-root", str(tmp_path), "--quiet", "--overwrite", "-o", "n_train=2",
                 "-o", "n_test=1", "-o", "shape=[32, 48]"]) == 0
    assert tree_digest(folder) == before

    src = make_generic_2d(tmp_path / "src", n=3, rgb=False, mask_scale=255)
    assert main(["convert", "generic", "--source", str(src), "--out-root", str(tmp_path), "--quiet", "--labels",
                 "background=0,fg=1", "--name", "Masks", "-o", "mask_values={255: 1, 510: 2}"]) == 2
    err = capsys.readouterr().err
    # 2 * 255 wraps to 254 in uint8, so 510 maps nothing and 254 stays: an error naming the mask file
    assert re.search(r"case0\d\.png", err) and "outside the declared set" in err
    assert main(["convert", "generic", "--source", str(src), "--out-root", str(tmp_path), "--quiet", "--labels",
                 "background=0,a=1,b=2", "--name", "Masks", "-o", "mask_values={255: 1, 254: 2}"]) == 0
    assert (tmp_path / "Dataset990_Masks" / "dataset.json").is_file()
    assert main(["convert", "phantom2d", "--labels", "background=0"]) == 2
    assert main(["convert", "phantom2d", "-o", "not an option"]) == 2


def test_generic_float_tiff_goes_to_tif(tmp_path, monkeypatch):
    """Float 2D images cannot be PNG: TIFF sources give ``.tif`` output with the float values kept exactly."""
    import tifffile

    rng = np.random.default_rng(7)
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    for k in range(3):
        tifffile.imwrite(src / "images" / f"s{k}.tif", rng.normal(size=(16, 20)).astype(np.float32))
        mask = np.zeros((16, 20), np.uint8)
        mask[3:9, 4:12] = 1
        tifffile.imwrite(src / "masks" / f"s{k}.tif", mask)
    folder = convert("generic", source=src, out_root=tmp_path / "a", labels="background=0,fg=1", progress=False)
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["file_ending"] == ".tif" and dj["channel_names"] == {"0": "grey"}
    cid = json.loads((folder / "split.json").read_text())["train"][0]
    np.testing.assert_array_equal(tifffile.imread(folder / "imagesTr" / f"{cid}_0000.tif"),
                                  tifffile.imread(src / "images" / f"{cid}.tif"))
    verify_nnunet(folder, monkeypatch)
    again = convert("generic", source=src, out_root=tmp_path / "b", labels="background=0,fg=1", progress=False)
    assert tree_digest(again) == tree_digest(folder)
