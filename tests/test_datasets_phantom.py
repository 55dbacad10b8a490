"""The SYNTHETIC phantoms and the shared writing machinery (atomic output, overwrite, determinism, registry)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from fixtures_datasets import read_png, tree_digest, verify_nnunet
from xlstm_unet.datasets import DATASETS, CasePlan, DatasetFormatError, convert, write_dataset
from xlstm_unet.datasets.phantom import PHANTOM3D_LABELS, build_phantom2d


@pytest.fixture(scope="module")
def phantom2d_default(tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("raw")
    t0 = time.perf_counter()
    folder = convert("phantom2d", out_root=out, progress=False)
    return folder, time.perf_counter() - t0


@pytest.fixture(scope="module")
def phantom3d_default(tmp_path_factory) -> Path:
    return convert("phantom3d", out_root=tmp_path_factory.mktemp("raw"), progress=False)


@pytest.mark.slow
def test_phantom2d_layout_and_labels(phantom2d_default, monkeypatch, record_property):
    folder, seconds = phantom2d_default
    record_property("phantom2d_default_seconds", round(seconds, 2))
    assert folder.name == "Dataset901_Phantom2D"
    dj = json.loads((folder / "dataset.json").read_text())
    assert "SYNTHETIC" in dj["name"] and "SYNTHETIC" in dj["description"]
    assert dj["xlstm_unet"]["synthetic"] is True and dj["xlstm_unet"]["protocol"] == "generic"
    assert dj["numTraining"] == 24 and dj["xlstm_unet"]["numTest"] == 8
    split = json.loads((folder / "split.json").read_text())
    assert split["seed"] == 0 and len(split["train"]) == 24 and len(split["test"]) == 8
    assert not set(split["train"]) & set(split["test"])
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == [f"{c}_0000.png" for c in split["test"]]
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == [f"{c}.png" for c in split["test"]]
    counts = np.zeros(4, dtype=np.int64)
    for cid in split["train"]:
        img = read_png(folder / "imagesTr" / f"{cid}_0000.png")
        lab = read_png(folder / "labelsTr" / f"{cid}.png")
        assert img.shape == lab.shape == (128, 128) and img.dtype == lab.dtype == np.uint8
        counts += np.bincount(lab.ravel(), minlength=4)[:4]
        assert lab.max() <= 3
    assert np.all(counts > 0), f"every class must occur, got pixel counts {counts}"
    verify_nnunet(folder, monkeypatch)


def test_phantom2d_classes_differ_in_intensity(phantom2d_default):
    """Each class has its own mean intensity (so the phantom is learnable), yet bias and noise make them overlap."""
    folder, _ = phantom2d_default
    vals: dict[int, list[np.ndarray]] = {k: [] for k in range(4)}
    for p in sorted((folder / "labelsTr").iterdir()):
        lab = read_png(p)
        img = read_png(folder / "imagesTr" / f"{p.stem}_0000.png").astype(float)
        for k in range(4):
            vals[k].append(img[lab == k])
    means = {k: np.concatenate(v).mean() for k, v in vals.items()}
    stds = {k: np.concatenate(v).std() for k, v in vals.items()}
    assert means[2] > means[1] > means[3], means  # organ_small brightest, lesion darker than its organ
    assert all(s > 5 for s in stds.values()), stds  # texture/noise/bias: not flat


def test_phantom3d_regions_spacing_and_contrast(phantom3d_default, monkeypatch):
    import SimpleITK as sitk
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    folder = phantom3d_default
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["xlstm_unet"]["synthetic"] is True and dj["xlstm_unet"]["protocol"] == "brats"
    assert dj["labels"] == PHANTOM3D_LABELS and dj["regions_class_order"] == [2, 1, 3]
    assert len(dj["channel_names"]) == 4 and dj["numTraining"] == 8 and dj["xlstm_unet"]["numTest"] == 4
    lm = LabelManager(dj["labels"], dj["regions_class_order"])
    assert lm.has_regions and lm.all_labels == [0, 1, 2, 3]
    lab_img = sitk.ReadImage(str(folder / "labelsTr" / "phantom3d_000.nii.gz"))
    assert lab_img.GetSize() == (64, 64, 32) and np.allclose(lab_img.GetSpacing(), (1.0, 1.0, 2.0))
    lab = sitk.GetArrayFromImage(lab_img)  # (Z, Y, X)
    chans = [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "imagesTr" / f"phantom3d_000_{c:04d}.nii.gz")))
             for c in range(4)]
    wt, tc, et = np.isin(lab, [1, 2, 3]), np.isin(lab, [1, 3]), lab == 3
    assert wt.sum() > tc.sum() > et.sum() > 0 and (lab == 1).sum() > 0
    brain = (chans[0] > 0) & ~wt
    t1c, t2f = chans[1], chans[3]
    assert t1c[et].mean() > 1.3 * t1c[brain].mean()  # enhancing tumour bright on t1c
    assert t1c[lab == 1].mean() < t1c[brain].mean()  # necrosis dark on t1c
    assert t2f[lab == 2].mean() > 1.5 * t2f[brain].mean()  # edema bright on FLAIR
    # the label reconstructs from the three regions with regions_class_order (what nnU-Net's inference does)
    recon = np.zeros_like(lab)
    for region_mask, value in zip((wt, tc, et), dj["regions_class_order"]):
        recon[region_mask] = value
    np.testing.assert_array_equal(recon, lab)
    verify_nnunet(folder, monkeypatch)


def test_phantom_is_seeded_and_byte_identical(tmp_path):
    a = convert("phantom2d", out_root=tmp_path / "a", n_train=3, n_test=1, progress=False)
    b = convert("phantom2d", out_root=tmp_path / "b", n_train=3, n_test=1, progress=False)
    c = convert("phantom2d", out_root=tmp_path / "c", n_train=3, n_test=1, seed=1, progress=False)
    assert tree_digest(a) == tree_digest(b)
    assert tree_digest(a)["labelsTr/phantom2d_000.png"] != tree_digest(c)["labelsTr/phantom2d_000.png"]
    d = convert("phantom3d", out_root=tmp_path / "d", n_train=1, n_test=1, shape_zyx=(8, 16, 16), progress=False)
    e = convert("phantom3d", out_root=tmp_path / "e", n_train=1, n_test=1, shape_zyx=(8, 16, 16), progress=False)
    assert tree_digest(d) == tree_digest(e)


def test_registry_and_convert_errors(tmp_path):
    assert DATASETS["phantom2d"].default_id == 901 and DATASETS["phantom3d"].default_id == 902
    with pytest.raises(ValueError, match="known: .*phantom2d"):
        convert("no_such_set", out_root=tmp_path)
    with pytest.raises(ValueError, match="takes no source"):
        convert("phantom2d", source=tmp_path, out_root=tmp_path)
    with pytest.raises(ValueError, match="unexpected keyword argument"):
        convert("phantom2d", out_root=tmp_path, no_such_option=1)
    with pytest.raises(ValueError, match="dataset_id"):
        convert("phantom2d", out_root=tmp_path, dataset_id=1000)


def test_overwrite_and_custom_id(tmp_path):
    folder = convert("phantom2d", out_root=tmp_path, dataset_id=42, n_train=2, n_test=1, progress=False)
    assert folder == tmp_path / "Dataset042_Phantom2D"
    with pytest.raises(FileExistsError, match="overwrite"):
        convert("phantom2d", out_root=tmp_path, dataset_id=42, n_train=2, n_test=1, progress=False)
    folder = convert("phantom2d", out_root=tmp_path, dataset_id=42, n_train=3, n_test=1, overwrite=True,
                     progress=False)
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset042_Phantom2D"]  # no temp/old folders left


def test_failed_conversion_leaves_nothing(tmp_path):
    """A case that fails half-way (bad label values) leaves neither the dataset nor a temp folder; an existing
    dataset with the same name survives untouched."""
    plan = build_phantom2d(n_train=3, n_test=1)
    good = plan.cases[0]

    def bad_load():
        data = good.load()
        lab = data.label.copy()
        lab[0, 0] = 7
        return type(data)(channels=data.channels, label=lab, label_file=Path("fake/bad_label.png"))

    cases = plan.cases[:2] + (CasePlan("phantom2d_bad", "train", bad_load),) + plan.cases[3:]
    bad_plan = type(plan)(**{**plan.__dict__, "cases": cases})
    with pytest.raises(DatasetFormatError, match=r"bad_label\.png.*\[7\]"):
        write_dataset(bad_plan, tmp_path / "Dataset900_X", progress=False)
    assert list(tmp_path.iterdir()) == []
    existing = write_dataset(plan, tmp_path / "Dataset900_X", progress=False)
    before = tree_digest(existing)
    with pytest.raises(DatasetFormatError):
        write_dataset(bad_plan, existing, overwrite=True, progress=False)
    assert tree_digest(existing) == before
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset900_X"]
