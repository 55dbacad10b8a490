"""Bad input: every case fails with an error naming the file, leaves no output, and never touches the sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures_datasets import make_amos, make_brats23, make_kvasir, snapshot_mtimes, write_nifti, write_png
from xlstm_unet.datasets import DatasetFormatError, convert


def _fails(name: str, src: Path, out: Path, match: str, **options) -> DatasetFormatError:
    """Convert and expect a DatasetFormatError matching ``match``; check nothing was written or modified."""
    before = snapshot_mtimes(src)
    with pytest.raises(DatasetFormatError, match=match) as exc:
        convert(name, source=src, out_root=out, progress=False, **options)
    assert not out.exists() or list(out.iterdir()) == [], "a failed conversion must leave nothing behind"
    assert snapshot_mtimes(src) == before, "sources must never be modified"
    return exc.value


@pytest.fixture()
def kvasir(tmp_path) -> Path:
    return make_kvasir(tmp_path / "kvasir", n=4)


@pytest.fixture()
def brats(tmp_path) -> Path:
    return make_brats23(tmp_path / "brats", n=3, shape=(8, 9, 6))


CASE = "BraTS-GLI-00001-000"


# --- missing folder or modality -----------------------------------------------------------------------------------

def test_missing_folder(kvasir, tmp_path):
    for p in (kvasir / "masks").iterdir():
        p.unlink()
    (kvasir / "masks").rmdir()
    err = _fails("kvasir_seg", kvasir, tmp_path / "out", r"kvasir/masks: missing folder")
    assert err.path == kvasir / "masks"


def test_missing_source_root(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"nowhere: missing folder"):
        convert("brats23", source=tmp_path / "nowhere", out_root=tmp_path / "out")


def test_missing_modality(brats, tmp_path):
    (brats / CASE / f"{CASE}-t2f.nii.gz").unlink()
    _fails("brats23", brats, tmp_path / "out", rf"{CASE}-t2f\.nii\.gz: missing modality 't2f'")


def test_missing_label(kvasir, tmp_path):
    mask = sorted((kvasir / "masks").iterdir())[1]
    mask.unlink()
    _fails("kvasir_seg", kvasir, tmp_path / "out", rf"{mask.stem}\.jpg: no label for this image")


# --- shape / spacing mismatch ---------------------------------------------------------------------------------------

def test_shape_mismatch_2d(kvasir, tmp_path):
    mask = sorted((kvasir / "masks").iterdir())[2]
    write_png(mask, np.zeros((20, 20), np.uint8))
    _fails("kvasir_seg", kvasir, tmp_path / "out", rf"{mask.name}: image/label shape mismatch")


def test_shape_mismatch_3d(brats, tmp_path):
    write_nifti(brats / CASE / f"{CASE}-t1c.nii.gz", np.zeros((8, 9, 7), np.int16))
    _fails("brats23", brats, tmp_path / "out", rf"{CASE}-t1c\.nii\.gz: shape mismatch")


def test_spacing_mismatch(brats, tmp_path):
    write_nifti(brats / CASE / f"{CASE}-t2w.nii.gz", np.zeros((8, 9, 6), np.int16), spacing=(1.0, 1.0, 2.0))
    _fails("brats23", brats, tmp_path / "out", rf"{CASE}-t2w\.nii\.gz: spacing mismatch")


# --- label values outside the declared set --------------------------------------------------------------------------

def test_label_values_outside_2d(kvasir, tmp_path):
    mask = sorted((kvasir / "masks").iterdir())[0]
    m = np.zeros((24, 32), np.uint8)
    m[2:5, 2:5] = 3
    write_png(mask, m)
    _fails("kvasir_seg", kvasir, tmp_path / "out", rf"{mask.name}: .*label values \[3\] outside the declared set")


def test_label_values_outside_3d(brats, tmp_path):
    seg = np.zeros((8, 9, 6), np.uint8)
    seg[2:4, 2:4, 2:4] = 4  # BraTS <= 2021 used 4 for enhancing tumour; 2023 uses 3
    write_nifti(brats / CASE / f"{CASE}-seg.nii.gz", seg)
    _fails("brats23", brats, tmp_path / "out", rf"{CASE}-seg\.nii\.gz: .*label values \[4\]")


def test_amos_label_values_outside(tmp_path):
    src = make_amos(tmp_path / "amos")
    lab = np.zeros((10, 12, 6), np.uint8)
    lab[0, 0, 0] = 16
    write_nifti(src / "labelsVa" / "amos_0541.nii.gz", lab, (1.2, 1.2, 6.0))
    with pytest.warns(UserWarning):
        _fails("amos_mri", src, tmp_path / "out", r"amos_0541\.nii\.gz: label values \[16\] outside the AMOS set")


# --- unreadable / corrupt files -----------------------------------------------------------------------------------

def test_corrupt_jpeg(kvasir, tmp_path):
    img = sorted((kvasir / "images").iterdir())[3]
    img.write_bytes(img.read_bytes()[:200])
    _fails("kvasir_seg", kvasir, tmp_path / "out", rf"{img.name}: unreadable or corrupt image")


def test_corrupt_nifti(brats, tmp_path):
    p = brats / CASE / f"{CASE}-t1n.nii.gz"
    p.write_bytes(p.read_bytes()[:120])  # truncated gzip stream
    _fails("brats23", brats, tmp_path / "out", rf"{CASE}-t1n\.nii\.gz: unreadable or corrupt NIfTI")


def test_not_an_image(brats, tmp_path):
    (brats / CASE / f"{CASE}-t1c.nii.gz").write_text("not a nifti")
    _fails("brats23", brats, tmp_path / "out", rf"{CASE}-t1c\.nii\.gz: unreadable or corrupt")


# --- NaN intensities ----------------------------------------------------------------------------------------------

def test_nan_intensities(brats, tmp_path):
    arr = np.ones((8, 9, 6), np.float32)
    arr[1, 2, 3] = np.nan
    write_nifti(brats / CASE / f"{CASE}-t1n.nii.gz", arr)
    _fails("brats23", brats, tmp_path / "out", rf"{CASE}-t1n\.nii\.gz: .*NaN")


# --- empty dataset / duplicate case ids ---------------------------------------------------------------------------

def test_empty_dataset(kvasir, tmp_path):
    for p in (kvasir / "images").iterdir():
        p.unlink()
    for p in (kvasir / "masks").iterdir():
        p.unlink()
    _fails("kvasir_seg", kvasir, tmp_path / "out", r"kvasir/images: empty dataset")


def test_empty_dataset_3d(tmp_path):
    (tmp_path / "brats").mkdir()
    _fails("brats23", tmp_path / "brats", tmp_path / "out", r"brats: empty dataset")


def test_duplicate_case_ids(kvasir, tmp_path):
    first = sorted((kvasir / "images").iterdir())[0]
    write_png(first.with_suffix(".png"), np.zeros((24, 32, 3), np.uint8))
    _fails("kvasir_seg", kvasir, tmp_path / "out", rf"{first.stem}\.(jpg|png): duplicate case id '{first.stem}'")


def test_duplicate_case_ids_across_folders(tmp_path):
    src = make_amos(tmp_path / "amos")
    for sub in ("images", "labels"):
        (src / f"{sub}Va" / "amos_0541.nii.gz").rename(src / f"{sub}Va" / "amos_0507.nii.gz")
    _fails("amos_mri", src, tmp_path / "out", r"imagesVa/amos_0507\.nii\.gz: duplicate case id 'amos_0507'")


def test_failure_while_writing_keeps_existing_output(brats, tmp_path):
    """A content error found while writing (corrupt data after a valid header) removes the partial output and
    keeps a previous conversion at the destination untouched."""
    out = tmp_path / "out"
    folder = convert("brats23", source=brats, out_root=out, progress=False)
    before = snapshot_mtimes(folder)
    arr = np.ones((8, 9, 6), np.float32)
    arr[0, 0, 0] = np.inf
    write_nifti(brats / CASE / f"{CASE}-t2w.nii.gz", arr)
    with pytest.raises(DatasetFormatError, match=rf"{CASE}-t2w\.nii\.gz"):
        convert("brats23", source=brats, out_root=out, overwrite=True, progress=False)
    assert snapshot_mtimes(folder) == before
    assert [p.name for p in out.iterdir()] == [folder.name]


# --- splits: all-train and all-test conversions, and errors that say what to do ------------------------------------

def test_splits_allow_all_train_and_all_test():
    from xlstm_unet.datasets._common import seeded_group_split, seeded_split
    from xlstm_unet.datasets.brats23 import brats_split

    ids = ["c", "a", "b"]
    assert seeded_split(ids, 0, seed=1) == (["a", "b", "c"], [])
    assert seeded_split(["a"], 1.0, seed=1) == ([], ["a"])
    train, test = seeded_split(ids, 0.5, seed=1)
    assert len(test) == 2 and sorted(train + test) == ["a", "b", "c"]
    groups = {"P1": ["P1_s2", "P1_s1"], "P2": ["P2_s1"]}
    assert seeded_group_split(groups, 0, seed=0) == (["P1_s1", "P1_s2", "P2_s1"], [])
    assert seeded_group_split(groups, 2, seed=0) == ([], ["P1_s1", "P1_s2", "P2_s1"])
    assert seeded_group_split({"P1": ["a", "b"]}, 1, seed=0) == ([], ["a", "b"])  # one new patient
    tr, te = seeded_group_split(groups, 1, seed=0)
    assert {c.split("_")[0] for c in tr}.isdisjoint({c.split("_")[0] for c in te}) and len(tr + te) == 3
    assert brats_split(["x"], seed=0, fractions=(1, 0, 0)) == (["x"], [], [])
    assert brats_split(["x", "y"], seed=0, fractions=(0, 0, 1)) == ([], [], ["x", "y"])


@pytest.mark.parametrize("call, match", [
    (lambda s: s.seeded_split(["a"], 0.2, 0), r"got 1: add cases, or pass test_fraction=0 \(all train\) or "
                                              r"test_fraction=1 \(all test"),
    (lambda s: s.seeded_split(["a", "b"], 1.5, 0), r"use a fraction such as 0\.2, 0 \(all cases train\) or 1"),
    (lambda s: s.seeded_group_split({"P1": ["a"]}, 2, 0, option="n_test_patients"),
     r"n_test_patients must be in \[0, 1\] for 1 groups, got 2: use 0 \(all train\), 1 \(all test\)"),
    (lambda s: s.limit_cases(["a"], 0), r"max_cases must be >= 1, got 0: pass a positive number, or None"),
])
def test_split_errors_say_what_to_do(call, match):
    from xlstm_unet.datasets import _common

    with pytest.raises(ValueError, match=match):
        call(_common)


def test_converters_split_errors_and_all_test_conversion(kvasir, tmp_path):
    from xlstm_unet.datasets.brats23 import brats_split

    with pytest.raises(ValueError, match=r"fractions=\(1, 0, 0\) \(all train\) or fractions=\(0, 0, 1\)"):
        brats_split(["x"], seed=0)
    with pytest.raises(ValueError, match=r"n_train=0: all test"):
        convert("phantom2d", out_root=tmp_path / "p", n_train=0, n_test=0, progress=False)
    with pytest.warns(UserWarning, match="no training cases; its images can be predicted"):
        folder = convert("kvasir_seg", source=kvasir, out_root=tmp_path / "out", test_fraction=1, progress=False)
    assert len(list((folder / "imagesTs").iterdir())) == 4 and not list((folder / "imagesTr").iterdir())
    with pytest.raises(ValueError, match=r"test_fraction=0 \(all train\)"):
        convert("kvasir_seg", source=kvasir, out_root=tmp_path / "one", max_cases=1, progress=False)
