"""Converters of the real shared datasets (kvasir_seg, ctc_nuclei, pgbm_brain_mri) on the real files.

These use the ``kvasir_dir`` / ``ctc_dir`` / ``pgbm_dir`` fixtures: they skip locally without the data and fail in
CI. Subsets (``max_cases`` / ``cases`` / ``patients``) keep them quick.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from fixtures_datasets import read_png, snapshot_mtimes, tree_digest, verify_nnunet
from xlstm_unet.datasets import convert, instances_to_3class, percentile_to_uint8

pytestmark = pytest.mark.shared_data
log = logging.getLogger(__name__)


def test_kvasir_seg_real(kvasir_dir, tmp_path, monkeypatch):
    from PIL import Image

    before = snapshot_mtimes(kvasir_dir)
    folder = convert("kvasir_seg", source=kvasir_dir, out_root=tmp_path, max_cases=10, progress=False)
    assert folder.name == "Dataset911_KvasirSEG"
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "R", "1": "G", "2": "B"} and dj["labels"] == {"background": 0, "polyp": 1}
    assert dj["xlstm_unet"]["protocol"] == "endoscopy" and dj["xlstm_unet"]["synthetic"] is False
    split = json.loads((folder / "split.json").read_text())
    ids = sorted(p.stem for p in (kvasir_dir / "images").glob("*.jpg"))[:10]
    assert sorted(split["train"] + split["test"]) == ids and len(split["test"]) == 2
    for cid in ids:
        sub = "Tr" if cid in split["train"] else "Ts"
        img = read_png(folder / f"images{sub}" / f"{cid}_0000.png")
        with Image.open(kvasir_dir / "images" / f"{cid}.jpg") as im:
            np.testing.assert_array_equal(img, np.asarray(im.convert("RGB")))  # lossless copy of decoded pixels
        np.testing.assert_array_equal(read_png(folder / f"labels{sub}" / f"{cid}.png"),
                                      read_png(kvasir_dir / "masks" / f"{cid}.png"))
    verify_nnunet(folder, monkeypatch)
    again = convert("kvasir_seg", source=kvasir_dir, out_root=tmp_path / "again", max_cases=10, progress=False)
    assert tree_digest(again) == tree_digest(folder)  # idempotent, byte for byte
    assert snapshot_mtimes(kvasir_dir) == before  # sources untouched


def test_ctc_nuclei_real(ctc_dir, tmp_path, monkeypatch):
    import tifffile

    cases = ["GOWT1_t01", "GOWT1_t21", "HeLa_t13", "HeLa_t52"]
    before = snapshot_mtimes(ctc_dir)
    folder = convert("ctc_nuclei", source=ctc_dir, out_root=tmp_path, cases=cases, progress=False)
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "interior": 1, "boundary": 2}
    assert dj["xlstm_unet"]["protocol"] == "cells" and dj["xlstm_unet"]["test_instances"] == "labelsTs_instances"
    split = json.loads((folder / "split.json").read_text())
    assert {c.split("_")[0] for c in split["test"]} == {"GOWT1", "HeLa"}  # stratified by cell line
    for cid in cases:
        sub = "Tr" if cid in split["train"] else "Ts"
        src_img = tifffile.imread(ctc_dir / "images" / f"{cid}.tif")
        src_inst = tifffile.imread(ctc_dir / "labels" / f"{cid}.tif")
        img = read_png(folder / f"images{sub}" / f"{cid}_0000.png")
        assert img.dtype == np.uint8 and img.shape == src_img.shape
        np.testing.assert_array_equal(img, percentile_to_uint8(src_img))
        # independent check of the normalisation: monotone in the source values, full 0..255 range, <= ~1% saturated
        order = np.argsort(src_img.ravel(), kind="stable")
        assert np.all(np.diff(img.ravel()[order].astype(np.int16)) >= 0)
        assert img.min() == 0 and img.max() == 255 and np.mean(img == 255) < 0.02
        np.testing.assert_array_equal(read_png(folder / f"labels{sub}" / f"{cid}.png"),
                                      instances_to_3class(src_inst))
        inst_file = folder / "labelsTs_instances" / f"{cid}.png"
        assert inst_file.is_file() == (sub == "Ts")
        if sub == "Ts":
            np.testing.assert_array_equal(read_png(inst_file), src_inst)
    verify_nnunet(folder, monkeypatch)
    assert snapshot_mtimes(ctc_dir) == before


def test_ctc_round_trip_f1(ctc_dir, record_property):
    """instances -> 3 classes -> instances (connected components of the interior, the official protocol)
    recovers nearly all nuclei: F1 at IoU >= 0.5 per image, on all 10 real frames."""
    import tifffile

    from xlstm_unet.metrics import cell_f1, semantic_to_instances

    f1 = {}
    for path in sorted((ctc_dir / "labels").glob("*.tif")):
        inst = tifffile.imread(path)
        sem = instances_to_3class(inst)
        # the 3-class map itself, checked independently of the rule's implementation:
        assert set(np.unique(sem)) <= {0, 1, 2}
        assert np.all(sem[inst == 0] != 1)  # interior only inside instances
        touching = (inst[:, 1:] != inst[:, :-1]) & (inst[:, 1:] > 0) & (inst[:, :-1] > 0)
        assert np.all(sem[:, 1:][touching] == 2)  # pixels where two nuclei touch are boundary
        f1[path.stem] = cell_f1(semantic_to_instances(sem), inst)["f1"]
    mean_f1 = float(np.mean(list(f1.values())))
    record_property("ctc_round_trip_f1_mean", round(mean_f1, 4))
    record_property("ctc_round_trip_f1_per_image", {k: round(v, 4) for k, v in f1.items()})
    log.info("CTC round-trip F1 mean %.4f, per image %s", mean_f1, f1)
    assert len(f1) == 10
    assert mean_f1 > 0.95 and min(f1.values()) > 0.9, f1


def test_pgbm_brain_mri_real(pgbm_dir, tmp_path, monkeypatch):
    import SimpleITK as sitk

    before = snapshot_mtimes(pgbm_dir)
    folder = convert("pgbm_brain_mri", source=pgbm_dir, out_root=tmp_path, patients=["PGBM-001", "PGBM-006"],
                     progress=False)
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "t1", "1": "t1c", "2": "t2", "3": "flair"}
    assert dj["labels"] == {"background": 0, "tumor": 1} and dj["file_ending"] == ".nii.gz"
    split = json.loads((folder / "split.json").read_text())
    patients_of = {s: [c.split("_")[0] for c in split[s]] for s in ("train", "test")}
    assert not set(patients_of["train"]) & set(patients_of["test"])  # by patient, never by study
    assert sorted(split["train"] + split["test"]) == ["PGBM-001_1991-11-19", "PGBM-001_1992-04-02",
                                                      "PGBM-006_1996-12-10"]
    assert split["groups"]["PGBM-001"] == ["PGBM-001_1991-11-19", "PGBM-001_1992-04-02"]
    for cid in split["train"] + split["test"]:
        sub = "Tr" if cid in split["train"] else "Ts"
        # NIfTI sources are copied byte for byte: header (spacing, orientation) and stored dtype kept exactly
        for c, mod in enumerate(["t1", "t1c", "t2", "flair"]):
            out = folder / f"images{sub}" / f"{cid}_{c:04d}.nii.gz"
            assert out.read_bytes() == (pgbm_dir / cid / f"{mod}.nii.gz").read_bytes()
        assert (folder / f"labels{sub}" / f"{cid}.nii.gz").read_bytes() == (pgbm_dir / cid / "seg.nii.gz").read_bytes()
    img = sitk.ReadImage(str(folder / "imagesTs" / f"{split['test'][0]}_0000.nii.gz"))
    src = sitk.ReadImage(str(pgbm_dir / split["test"][0] / "t1.nii.gz"))
    np.testing.assert_allclose(img.GetSpacing(), src.GetSpacing())
    assert img.GetSpacing()[2] == pytest.approx(6.5, abs=1e-3)  # slice step from the data README
    verify_nnunet(folder, monkeypatch)
    assert snapshot_mtimes(pgbm_dir) == before


def test_pgbm_one_new_patient_converts_all_test_or_all_train(pgbm_dir, tmp_path):
    """A single patient (two studies), as for predicting a new patient: all test by default, all train with
    n_test_patients=0; other counts fail with an error that says what to pass."""
    src = tmp_path / "one patient"
    for study in sorted(pgbm_dir.glob("PGBM-001_*")):
        (src / study.name).mkdir(parents=True)
        for f in study.glob("*.nii.gz"):
            (src / study.name / f.name).symlink_to(f)
    studies = ["PGBM-001_1991-11-19", "PGBM-001_1992-04-02"]
    with pytest.warns(UserWarning, match="no training cases"):
        folder = convert("pgbm_brain_mri", source=src, out_root=tmp_path / "test", progress=False)
    split = json.loads((folder / "split.json").read_text())
    assert split["train"] == [] and split["test"] == studies
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == [f"{s}_{c:04d}.nii.gz" for s in studies
                                                                       for c in range(4)]
    assert (folder / "imagesTs" / f"{studies[1]}_0003.nii.gz").read_bytes() == \
        (pgbm_dir / studies[1] / "flair.nii.gz").read_bytes()
    folder = convert("pgbm_brain_mri", source=src, out_root=tmp_path / "train", n_test_patients=0, progress=False)
    split = json.loads((folder / "split.json").read_text())
    assert split["train"] == studies and split["test"] == []
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2
    with pytest.raises(ValueError, match=r"n_test_patients must be in \[0, 1\] for 1 groups, got 2: use 0 \(all "
                                         r"train\), 1 \(all test\)"):
        convert("pgbm_brain_mri", source=src, out_root=tmp_path / "bad", n_test_patients=2, progress=False)
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").iterdir())
