"""Converters of the paper's four datasets (AMOS MRI, EndoVis 2017, NeurIPS 2022 cells, BraTS 2023) on tiny
format-faithful fixtures (see ``fixtures_datasets``), checked against independent computations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fixtures_datasets import (
    ENDOVIS_MASKS,
    make_amos,
    make_brats23,
    make_endovis17,
    make_neurips_cells,
    make_umamba_amos_test,
    read_png,
    snapshot_mtimes,
    tree_digest,
    verify_nnunet,
)
from xlstm_unet.datasets import convert, instances_to_3class
from xlstm_unet.datasets.brats23 import brats_split


def test_brats23(tmp_path, monkeypatch):
    src = make_brats23(tmp_path / "src", n=10)
    before = snapshot_mtimes(src)
    folder = convert("brats23", source=src, out_root=tmp_path / "out", seed=3, progress=False)
    assert folder.name == "Dataset704_BraTS2023"
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "t1n", "1": "t1c", "2": "t2w", "3": "t2f"}
    assert dj["labels"]["whole_tumor"] == [1, 2, 3] and dj["labels"]["tumor_core"] == [1, 3]
    assert dj["labels"]["enhancing_tumor"] == [3] and dj["regions_class_order"] == [2, 1, 3]
    split = json.loads((folder / "split.json").read_text())
    assert len(split["train"]) == 8 and len(split["val"]) == 1 and len(split["test"]) == 2  # 70/10/20
    assert set(split["val"]) <= set(split["train"]) and not set(split["train"]) & set(split["test"])
    tr, va, te = brats_split([f"BraTS-GLI-{k:05d}-000" for k in range(10)], seed=3)
    assert (sorted(tr + va), te) == (split["train"], split["test"])
    cid = split["test"][0]
    for c, m in enumerate(("t1n", "t1c", "t2w", "t2f")):
        assert (folder / "imagesTs" / f"{cid}_{c:04d}.nii.gz").read_bytes() == \
            (src / cid / f"{cid}-{m}.nii.gz").read_bytes()
    assert (folder / "labelsTs" / f"{cid}.nii.gz").read_bytes() == (src / cid / f"{cid}-seg.nii.gz").read_bytes()
    verify_nnunet(folder, monkeypatch)
    assert snapshot_mtimes(src) == before
    again = convert("brats23", source=src, out_root=tmp_path / "again", seed=3, progress=False)
    assert tree_digest(again) == tree_digest(folder)


def test_brats_split_proportions():
    ids = [f"c{k:04d}" for k in range(1251)]  # the paper's BraTS 2023 size
    tr, va, te = brats_split(ids, seed=0)
    assert (len(tr), len(va), len(te)) == (875, 125, 251)
    assert sorted(tr + va + te) == ids
    assert brats_split(ids, seed=0) == (tr, va, te) and brats_split(ids, seed=1) != (tr, va, te)


def test_amos_mri_release_layout(tmp_path, monkeypatch):
    import nibabel as nib

    src = make_amos(tmp_path / "src")
    test_src = make_umamba_amos_test(tmp_path / "umamba")
    folder = convert("amos_mri", source=src, test_source=test_src, out_root=tmp_path / "out", progress=False)
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["labels"]["liver"] == 1 and dj["labels"]["left kidney"] == 13 and len(dj["labels"]) == 14
    assert dj["xlstm_unet"]["protocol"] == "abdomen"
    split = json.loads((folder / "split.json").read_text())
    # MRI only (ids > 500) from Tr + Va for training, U-Mamba's test cases for testing; CT amos_0001/0002 dropped
    assert split["train"] == ["amos_0507", "amos_0508", "amos_0510", "amos_0540", "amos_0541"]
    assert split["test"] == ["amos_0600", "amos_0601"]
    src_lab = np.asanyarray(nib.load(str(src / "labelsTr" / "amos_0507.nii.gz")).dataobj)
    out_lab = np.asanyarray(nib.load(str(folder / "labelsTr" / "amos_0507.nii.gz")).dataobj)
    expected = {0: 0, 6: 1, 1: 3, 3: 13, 14: 0}  # AMOS background, liver, spleen, left kidney, bladder
    for amos_value, out_value in expected.items():
        assert np.all(out_lab[src_lab == amos_value] == out_value), amos_value
    out_img = nib.load(str(folder / "imagesTr" / "amos_0507_0000.nii.gz"))
    assert np.allclose(out_img.header.get_zooms(), (1.2, 1.2, 6.0))
    assert (folder / "labelsTs" / "amos_0600.nii.gz").read_bytes() == \
        (test_src / "labelsTs" / "amos_0600.nii.gz").read_bytes()  # U-Mamba labels already in the 13-organ order
    verify_nnunet(folder, monkeypatch)


def test_amos_mri_without_test_labels_warns(tmp_path):
    src = make_amos(tmp_path / "src")
    with pytest.warns(UserWarning, match="not the paper's 50-case test set"):
        folder = convert("amos_mri", source=src, out_root=tmp_path / "out", progress=False)
    split = json.loads((folder / "split.json").read_text())
    assert len(split["train"]) + len(split["test"]) == 5 and len(split["test"]) == 2


def test_endovis17(tmp_path, monkeypatch):
    src = make_endovis17(tmp_path / "src")
    folder = convert("endovis17", source=src, out_root=tmp_path / "out", progress=False)
    split = json.loads((folder / "split.json").read_text())
    assert split["train"] == ["v01_frame000", "v01_frame001", "v02_frame000", "v02_frame001"]
    assert split["test"] == ["v09_frame000", "v09_frame001"]
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["labels"]["Bipolar Forceps"] == 1 and dj["labels"]["Ultrasound Probe"] == 7 and len(dj["labels"]) == 8
    img = read_png(folder / "imagesTr" / "v02_frame001_0000.png")
    lab = read_png(folder / "labelsTr" / "v02_frame001.png")
    assert img.shape == (384, 640, 3) and lab.shape == (384, 640)
    # independent geometry: output (i, j) <- full frame (28 + 2 * (64 + i), 320 + 2 * j) after the official crop,
    # 2x downscale of 1280 x 1024 and a centred 384 x 640 crop (rows 64..448 of 512)
    full = np.zeros((1080, 1920), np.uint8)
    for name, (r0, r1), (c0, c1), _ in sorted(ENDOVIS_MASKS):  # documented: later folders (sorted) win
        full[r0:r1, c0:c1] = {"Maryland_Bipolar_Forceps_labels": 1, "Right_Prograsp_Forceps_labels": 2,
                              "Other_labels": 7}[name]
    rows = 28 + 2 * (64 + np.arange(384))
    cols = 320 + 2 * np.arange(640)
    np.testing.assert_array_equal(lab, full[np.ix_(rows, cols)])
    assert set(np.unique(lab)) == {0, 1, 2, 7}
    # image: block means of the cropped frame (red = column // 8, constant within 2x2 blocks here)
    src_img = read_png(src / "train" / "instrument_dataset_2" / "left_frames" / "frame001.png")
    np.testing.assert_array_equal(img[:, :, 0], src_img[np.ix_(rows, cols)][:, :, 0])
    assert np.all(img[:, :, 2] == 41)  # 20 * video + frame
    verify_nnunet(folder, monkeypatch)


def test_neurips_cells(tmp_path, monkeypatch):
    import tifffile

    src = make_neurips_cells(tmp_path / "src")
    folder = convert("neurips_cells", source=src, out_root=tmp_path / "out", progress=False)
    split = json.loads((folder / "split.json").read_text())
    assert split["train"] == [f"train_cell_0000{k}" for k in range(1, 5)]
    assert split["test"] == ["tuning_cell_00001", "tuning_cell_00002"]
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert dj["xlstm_unet"]["protocol"] == "cells" and dj["xlstm_unet"]["test_instances"] == "labelsTs_instances"
    for cid in split["train"] + split["test"]:
        sub = "Tr" if cid in split["train"] else "Ts"
        img = read_png(folder / f"images{sub}" / f"{cid}_0000.png")
        assert img.shape == (48, 64, 3) and img.dtype == np.uint8
        assert img.max() == 255 and img.min() == 0  # percentile-stretched
        set_dir = "Training-labeled" if sub == "Tr" else "Tuning"
        inst = tifffile.imread(src / set_dir / "labels" / f"{cid.split('_', 1)[1]}_label.tiff")
        np.testing.assert_array_equal(read_png(folder / f"labels{sub}" / f"{cid}.png"), instances_to_3class(inst))
        cells = inst > 0
        assert img[cells].mean() > img[~cells].mean() + 100  # bright cells survive normalisation
    np.testing.assert_array_equal(
        read_png(folder / "labelsTs_instances" / "tuning_cell_00002.png"),
        tifffile.imread(src / "Tuning" / "labels" / "cell_00002_label.tiff"))
    assert not (folder / "labelsTs_instances" / "train_cell_00001.png").exists()
    verify_nnunet(folder, monkeypatch)
