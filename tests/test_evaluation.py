"""Tests for xlstm_unet.evaluation: each protocol end to end on small files, the CSV/JSON content against numbers
computed independently here, bad input, and the ``xlstm-unet evaluate`` sub-command."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image
from skimage.segmentation import find_boundaries

from xlstm_unet import evaluation as E
from xlstm_unet import metrics as M


# ----------------------------------------------------------------------------------------------------------------------
# file helpers
# ----------------------------------------------------------------------------------------------------------------------
def write_nii(path: Path, arr_zyx: np.ndarray, spacing_xyz=(1.0, 1.0, 1.0)) -> None:
    img = sitk.GetImageFromArray(arr_zyx.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    sitk.WriteImage(img, str(path))


def write_png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr.astype(np.uint8)).save(path)


def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    pred, gt, out = tmp_path / "pred", tmp_path / "gt", tmp_path / "out"
    pred.mkdir()
    gt.mkdir()
    return pred, gt, out


def box(shape, start, size, value=1, base=None) -> np.ndarray:
    a = np.zeros(shape, np.uint8) if base is None else base.copy()
    a[tuple(slice(s, s + n) for s, n in zip(start, size))] = value
    return a


def read_outputs(out: Path) -> tuple[pd.DataFrame, dict]:
    assert sorted(p.name for p in out.iterdir()) == ["per_case.csv", "summary.json"]  # no temp files left
    return pd.read_csv(out / "per_case.csv"), json.loads((out / "summary.json").read_text())


def dice_np(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


# ----------------------------------------------------------------------------------------------------------------------
# generic
# ----------------------------------------------------------------------------------------------------------------------
def make_generic(tmp_path: Path):
    pred, gt, out = folders(tmp_path)
    shape = (8, 16, 16)
    spacing_xyz = (0.8, 0.9, 2.5)  # nnU-Net reads it back as (2.5, 0.9, 0.8) for axes (z, y, x)
    arrays = {}
    g1 = box(shape, (2, 3, 3), (4, 6, 6), 1)
    g1 = box(shape, (2, 10, 10), (3, 4, 4), 2, g1)
    p1 = box(shape, (2, 4, 3), (4, 6, 6), 1)
    p1 = box(shape, (3, 10, 11), (3, 4, 4), 2, p1)
    g2 = box(shape, (1, 2, 2), (5, 8, 8), 1)  # label 2 absent from both masks of case 2
    p2 = box(shape, (1, 2, 2), (5, 8, 7), 1)
    for case, (p, g) in {"case_001": (p1, g1), "case_002": (p2, g2)}.items():
        write_nii(pred / f"{case}.nii.gz", p, spacing_xyz)
        write_nii(gt / f"{case}.nii.gz", g, spacing_xyz)
        arrays[case] = (p, g)
    (gt / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "liver": 1, "tumour": 2}, "file_ending": ".nii.gz"}))
    return pred, gt, out, arrays, spacing_xyz[::-1]


def test_generic_end_to_end(tmp_path):
    pred, gt, out, arrays, sp = make_generic(tmp_path)
    summary = E.evaluate_folder(pred, gt, "generic", out, progress=False)
    df, js = read_outputs(out)
    assert js == json.loads(json.dumps(summary))
    assert list(df["case"]) == ["case_001", "case_002"]
    assert [c for c in df.columns if c.startswith("dice_")] == ["dice_liver", "dice_tumour", "dice_mean"]
    for _, row in df.iterrows():
        p, g = arrays[row["case"]]
        for lab, name in ((1, "liver"), (2, "tumour")):
            assert row[f"dice_{name}"] == pytest.approx(dice_np(p == lab, g == lab))
            assert row[f"nsd_{name}"] == pytest.approx(M.nsd(p == lab, g == lab, sp, 2.0))
            assert row[f"hd95_{name}"] == pytest.approx(M.hd95(p == lab, g == lab, sp))
        assert row["dice_mean"] == pytest.approx((row["dice_liver"] + row["dice_tumour"]) / 2)
    # case 2 has no tumour in either mask: both-empty conventions
    r2 = df.set_index("case").loc["case_002"]
    assert (r2["dice_tumour"], r2["nsd_tumour"], r2["hd95_tumour"]) == (1.0, 1.0, 0.0)
    # the header spacing matters: the in-plane shift of label 1 in case 1 is 1 voxel of 0.9 mm
    assert df.set_index("case").loc["case_001", "hd95_liver"] == pytest.approx(0.9)
    s = js["metrics"]["dice_liver"]
    assert s["mean"] == pytest.approx(df["dice_liver"].mean())
    assert s["std"] == pytest.approx(df["dice_liver"].std(ddof=0))
    assert s["median"] == pytest.approx(df["dice_liver"].median())
    assert s["n"] == 2 and js["n_cases"] == 2 and js["protocol"] == "generic"
    assert js["conventions"]["nsd_tolerance"] == 2.0
    assert set(js["software"]) >= {"monai", "scipy"}


def test_generic_without_labels_and_with_regions(tmp_path):
    pred, gt, out, arrays, sp = make_generic(tmp_path)
    (gt / "dataset.json").unlink()
    df, _ = E.score_folder(pred, gt, "generic", progress=False)
    assert "dice_1" in df and "dice_2" in df
    r2 = df.set_index("case").loc["case_002"]
    assert r2["dice_2"] == 1.0 and r2["hd95_2"] == 0.0  # filled with the both-empty values
    assert r2["dice_mean"] == pytest.approx((r2["dice_1"] + 1.0) / 2)
    df_r, js = E.score_folder(pred, gt, "generic", regions={"whole": [1, 2]}, spacing=1.0, progress=False)
    p, g = arrays["case_001"]
    assert df_r.set_index("case").loc["case_001", "dice_whole"] == pytest.approx(dice_np(p > 0, g > 0))
    assert df_r.set_index("case").loc["case_001", "hd95_whole"] == pytest.approx(M.hd95(p > 0, g > 0, 1.0))
    assert js["conventions"]["units"] == "regions"


def test_missing_extra_and_bad_files(tmp_path):
    pred, gt, out, _, _ = make_generic(tmp_path)
    (pred / "case_002.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"case_002\.nii\.gz"):
        E.evaluate_folder(pred, gt, "generic", out, progress=False)
    assert not out.exists()  # nothing written
    write_nii(pred / "case_002.nii.gz", np.zeros((8, 16, 16), np.uint8))
    write_nii(pred / "case_999.nii.gz", np.zeros((8, 16, 16), np.uint8))
    (pred / "plans.json").write_text("{}")
    with pytest.warns(UserWarning, match="case_999"):
        E.evaluate_folder(pred, gt, "generic", out, progress=False)
    (pred / "case_999.nii.gz").unlink()
    write_nii(pred / "case_002.nii.gz", np.zeros((8, 16, 15), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        E.evaluate_folder(pred, gt, "generic", progress=False)
    (pred / "case_002.nii.gz").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"case_002\.nii\.gz: could not read"):
        E.evaluate_folder(pred, gt, "generic", progress=False)
    with pytest.raises(ValueError, match="protocol"):
        E.evaluate_folder(pred, gt, "nope", progress=False)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        E.evaluate_folder(tmp_path / "missing", gt, progress=False)


# ----------------------------------------------------------------------------------------------------------------------
# abdomen
# ----------------------------------------------------------------------------------------------------------------------
def test_abdomen_tolerances_and_zrange(tmp_path):
    pred, gt, out = folders(tmp_path)
    shape = (12, 24, 24)
    g = box(shape, (1, 2, 2), (10, 10, 10), 1)  # liver
    p = box(shape, (1, 5, 2), (10, 10, 10), 1)  # shifted 3 voxels in-plane: within liver's 5 mm
    g = box(shape, (4, 16, 16), (4, 3, 3), 2, g)  # aorta on slices 4..7
    p = box(shape, (0, 16, 16), (12, 3, 3), 2, p)  # predicted on every slice
    g = box(shape, (2, 2, 16), (6, 6, 6), 3, g)  # right kidney
    p = box(shape, (2, 6, 16), (6, 6, 6), 3, p)  # shifted 4: beyond 3 mm
    write_nii(pred / "c1.nii.gz", p)
    write_nii(gt / "c1.nii.gz", g)
    labels = {"background": 0, "liver": 1, "arota": 2, "Kidney_Right": 3}  # AMOS spelling, TotalSeg-style name
    summary = E.evaluate_folder(pred, gt, "abdomen", out, labels=labels, progress=False)
    df, js = read_outputs(out)
    row = df.iloc[0]
    sp = (1.0, 1.0, 1.0)
    assert row["dice_liver"] == pytest.approx(dice_np(p == 1, g == 1))
    assert row["nsd_liver"] == pytest.approx(M.nsd(p == 1, g == 1, sp, 5.0)) and row["nsd_liver"] == 1.0
    assert row["nsd_Kidney_Right"] == pytest.approx(M.nsd(p == 3, g == 3, sp, 3.0)) and row["nsd_Kidney_Right"] < 1
    # aorta only on the ground truth's slices 4..7: the prediction is perfect there
    assert row["dice_arota"] == 1.0 and row["nsd_arota"] == 1.0
    assert row["dice_mean"] == pytest.approx(np.mean([row["dice_liver"], 1.0, row["dice_Kidney_Right"]]))
    assert js["conventions"]["nsd_tolerance_mm"] == {"liver": 5.0, "arota": 2.0, "Kidney_Right": 3.0}
    assert js["conventions"]["zrange_organs"] == ["arota"]
    assert summary["metrics"]["nsd_mean"]["n"] == 1
    # the official script's half-open range drops slice 7
    df_o, _ = E.score_folder(pred, gt, "abdomen", labels=labels, abdomen_zrange="official", progress=False)
    assert df_o.iloc[0]["dice_arota"] == 1.0
    # without z-range rule the extra slices would count
    assert dice_np(p == 2, g == 2) < 1.0


def test_abdomen_empty_conventions_and_names(tmp_path):
    pred, gt, out = folders(tmp_path)
    shape = (4, 12, 12)
    g = box(shape, (1, 2, 2), (2, 4, 4), 1)
    p = box(shape, (1, 2, 2), (2, 4, 4), 1)
    p = box(shape, (0, 8, 8), (1, 2, 2), 2, p)  # spleen predicted, absent from ground truth
    write_nii(pred / "c1.nii.gz", p)
    write_nii(gt / "c1.nii.gz", g)
    labels = {"background": 0, "liver": 1, "spleen": 2, "gall bladder": 3, "bladder": 4}
    with pytest.warns(UserWarning, match="bladder'"):
        df, js = E.score_folder(pred, gt, "abdomen", labels=labels, progress=False)
    row = df.iloc[0]
    assert (row["dice_spleen"], row["nsd_spleen"]) == (0.0, 0.0)  # gt empty, prediction not
    assert (row["dice_gall_bladder"], row["nsd_gall_bladder"]) == (1.0, 1.0)  # both empty
    assert "nsd_bladder" not in df.columns and "dice_bladder" in df.columns
    assert E.abdomen_organ("Inferior Vena Cava") == "ivc" and E.abdomen_organ("RAG") == "right_adrenal_gland"
    assert E.abdomen_organ("postcava") == "ivc" and E.abdomen_organ("bladder") is None
    with pytest.raises(ValueError, match="organ names"):
        E.score_folder(pred, gt, "abdomen", progress=False)


def test_abdomen_names_of_our_amos_converter_all_have_tolerances():
    from xlstm_unet.datasets.amos_mri import ABDOMEN_LABELS

    organs = {E.abdomen_organ(n) for n in ABDOMEN_LABELS if n != "background"}
    assert organs == set(E.ABDOMEN_NSD_TOLERANCE_MM)


# ----------------------------------------------------------------------------------------------------------------------
# endoscopy
# ----------------------------------------------------------------------------------------------------------------------
def test_endoscopy_union_of_labels(tmp_path):
    pred, gt, out = folders(tmp_path)
    g1 = box((32, 32), (4, 4), (10, 10), 1)
    p1 = box((32, 32), (7, 4), (10, 10), 1)
    g2 = box((32, 32), (4, 4), (12, 8), 1)
    p2 = box((32, 32), (4, 4), (12, 8), 1)
    p2 = box((32, 32), (20, 20), (5, 5), 2, p2)  # label 2 only in the prediction
    for case, p, g in (("img1", p1, g1), ("img2", p2, g2)):
        write_png(pred / f"{case}.png", p)
        write_png(gt / f"{case}.png", g)
    E.evaluate_folder(pred, gt, "endoscopy", out, progress=False)
    df, js = read_outputs(out)
    df = df.set_index("case")
    official = M.nsd((p1 == 1)[..., None], (g1 == 1)[..., None], (1.0, 1.0, 1.0), 2.0)
    contour = M.nsd(p1 == 1, g1 == 1, (1.0, 1.0), 2.0)
    assert df.loc["img1", "dice_1"] == pytest.approx(dice_np(p1 == 1, g1 == 1))
    assert df.loc["img1", "nsd_1"] == pytest.approx(official)
    assert math.isnan(df.loc["img1", "dice_2"])  # label 2 in neither mask of img1: not averaged
    assert df.loc["img1", "dice_mean"] == pytest.approx(df.loc["img1", "dice_1"])
    assert (df.loc["img2", "dice_2"], df.loc["img2", "nsd_2"]) == (0.0, 0.0)
    assert df.loc["img2", "dice_mean"] == pytest.approx(0.5) and df.loc["img2", "nsd_mean"] == pytest.approx(0.5)
    assert js["metrics"]["dice_2"]["n"] == 1
    assert js["conventions"]["nsd_tolerance_px"] == 2.0
    df_c, js_c = E.score_folder(pred, gt, "endoscopy", endoscopy_nsd="contour", progress=False)
    assert df_c.set_index("case").loc["img1", "nsd_1"] == pytest.approx(contour)
    assert contour < official  # the one-slice volume counts the mask's faces as surface
    assert js_c["conventions"]["nsd_surface"].startswith("contour")


# ----------------------------------------------------------------------------------------------------------------------
# cells
# ----------------------------------------------------------------------------------------------------------------------
def test_cells_f1_from_semantic_predictions(tmp_path):
    pred, gt, out = folders(tmp_path)
    inst_dir = tmp_path / "gt_instances"
    inst_dir.mkdir()
    shape = (48, 48)
    gt_inst = np.zeros(shape, np.uint16)
    gt_inst[5:17, 5:17] = 1
    gt_inst[5:17, 25:37] = 2
    gt_inst[28:40, 5:17] = 3
    gt_inst[28:40, 30:42] = 4
    sem = np.zeros(shape, np.uint8)  # cells 1 and 2 predicted as boundary ring + interior; 3 missed; 4 too small
    for (r, c) in ((5, 5), (5, 25)):
        sem[r:r + 12, c:c + 12] = 2
        sem[r + 1:r + 11, c + 1:c + 11] = 1
    sem[30:33, 32:35] = 1
    for case in ("a", "b"):
        write_png(pred / f"{case}.png", sem)
        write_png(gt / f"{case}.png", (gt_inst > 0).astype(np.uint8))  # semantic GT, only lists the cases
        tifffile.imwrite(inst_dir / f"{case}.tif", gt_inst if case == "a" else gt_inst * (gt_inst != 4))
    (gt / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "interior": 1, "boundary": 2}, "file_ending": ".png"}))
    with pytest.raises(ValueError, match="instances"):
        E.score_folder(pred, gt, "cells", progress=False)  # 3-class labels are not instances
    E.evaluate_folder(pred, gt, "cells", out, gt_instances_dir=inst_dir, progress=False)
    df, js = read_outputs(out)
    df = df.set_index("case")
    # a: tp 2 (IoU 100/144), fp 1 (the small blob), fn 2 -> p 2/3, r 1/2; b: cell 4 absent -> tp 2, fp 1, fn 1
    assert tuple(df.loc["a", ["tp", "fp", "fn"]]) == (2, 1, 2)
    assert df.loc["a", "f1"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    assert df.loc["b", "f1"] == pytest.approx(2 / 3)
    inst = M.semantic_to_instances(sem)
    assert df.loc["a", "f1"] == pytest.approx(M.cell_f1(inst, gt_inst)["f1"])
    assert df.loc["a", "dice_foreground"] == pytest.approx(dice_np(inst > 0, gt_inst > 0))
    f1 = js["metrics"]["f1"]
    assert f1["mean"] == pytest.approx(df["f1"].mean()) and f1["median"] == pytest.approx(df["f1"].median())
    # the converters' layout: labelsTs_instances next to labelsTs is found without the argument
    layout = tmp_path / "ds"
    (layout / "labelsTs").mkdir(parents=True)
    shutil.copytree(inst_dir, layout / "labelsTs_instances")
    for f in gt.iterdir():
        shutil.copy(f, layout / "labelsTs" / f.name)
    df2, _ = E.score_folder(pred, layout / "labelsTs", "cells", progress=False)
    assert df2.set_index("case")["f1"].tolist() == pytest.approx(df["f1"].tolist())


@pytest.mark.shared_data
def test_cells_on_real_ctc_instances(ctc_dir, tmp_path):
    """Real CTC nuclei: GT instances against themselves give F1 = 1, so does a copy with every nucleus eroded by its
    one-pixel inner boundary; the 3-class target built from GT and read back through the cells evaluator matches
    too (the largest nuclei lose under half of their area to the boundary ring)."""
    cases = ("GOWT1_t01", "HeLa_t13")
    pred, gt, out = folders(tmp_path)
    for case in cases:
        inst, _ = E.read_label_map(ctc_dir / "labels" / f"{case}.tif")
        assert M.cell_f1(inst, inst)["f1"] == 1.0
        eroded = np.where(find_boundaries(inst, mode="inner"), 0, inst)
        r = M.cell_f1(eroded, inst)
        assert r["f1"] == 1.0 and r["tp"] == r["n_gt"] > 0
        sem = np.where(inst > 0, 1, 0).astype(np.uint8)
        sem[find_boundaries(inst, mode="inner")] = 2
        write_png(pred / f"{case}.png", sem)
        write_png(gt / f"{case}.png", sem)
    # the instance folder holds all 10 cases; only the two listed in gt are read
    E.evaluate_folder(pred, gt, "cells", out, gt_instances_dir=ctc_dir / "labels", progress=False)
    df, js = read_outputs(out)
    assert js["n_cases"] == 2
    assert (df["f1"] > 0.95).all()


# ----------------------------------------------------------------------------------------------------------------------
# brats
# ----------------------------------------------------------------------------------------------------------------------
def test_brats_regions_and_empty_conventions(tmp_path):
    pred, gt, out = folders(tmp_path)
    shape = (10, 16, 16)
    g1 = box(shape, (2, 2, 2), (6, 10, 10), 2)
    g1 = box(shape, (3, 4, 4), (4, 5, 5), 1, g1)
    g1 = box(shape, (4, 5, 5), (2, 3, 3), 3, g1)
    p1 = box(shape, (2, 3, 2), (6, 10, 10), 2)
    p1 = box(shape, (3, 4, 4), (4, 6, 5), 1, p1)
    p1 = box(shape, (4, 5, 5), (2, 3, 3), 3, p1)
    g2 = box(shape, (2, 2, 2), (6, 10, 10), 2)  # no ET (and no TC) in either mask
    p2 = box(shape, (2, 2, 3), (6, 10, 10), 2)
    for case, p, g in (("b1", p1, g1), ("b2", p2, g2)):
        write_nii(pred / f"{case}.nii.gz", p, (1.0, 1.0, 2.0))  # header spacing is ignored: SegMamba uses 1 mm
        write_nii(gt / f"{case}.nii.gz", g, (1.0, 1.0, 2.0))
    summary = E.evaluate_folder(pred, gt, "brats", out, progress=False)
    df, js = read_outputs(out)
    df = df.set_index("case")
    for name, labs in M.BRATS_REGIONS.items():
        p, g = np.isin(p1, labs), np.isin(g1, labs)
        assert df.loc["b1", f"dice_{name.lower()}"] == pytest.approx(dice_np(p, g))
        assert df.loc["b1", f"hd95_{name.lower()}"] == pytest.approx(M.hd95(p, g, 1.0))
    assert (df.loc["b2", "dice_et"], df.loc["b2", "hd95_et"]) == (0.0, 50.0)  # SegMamba: both empty -> 0 / 50
    assert df.loc["b2", "dice_mean"] == pytest.approx((df.loc["b2", "dice_wt"] + 0 + 0) / 3)
    assert js["conventions"]["brats_both_empty"] == "segmamba"
    assert summary["metrics"]["hd95_et"]["mean"] == pytest.approx((df.loc["b1", "hd95_et"] + 50) / 2)
    df_p, js_p = E.score_folder(pred, gt, "brats", brats_both_empty="perfect", progress=False)
    row = df_p.set_index("case").loc["b2"]
    assert (row["dice_et"], row["hd95_et"], row["dice_tc"]) == (1.0, 0.0, 1.0)
    assert "Dice 1, HD95 0" in js_p["conventions"]["both_empty"]
    # one side empty: 0 / 50 whatever the both-empty choice
    write_nii(pred / "b1.nii.gz", np.where(p1 == 3, 1, p1).astype(np.uint8))
    df_1, _ = E.score_folder(pred, gt, "brats", brats_both_empty="perfect", progress=False)
    assert tuple(df_1.set_index("case").loc["b1", ["dice_et", "hd95_et"]]) == (0.0, 50.0)


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------
def test_cli_evaluate(tmp_path, capsys):
    from xlstm_unet.cli import main

    pred, gt, out, arrays, sp = make_generic(tmp_path)
    rc = main(["evaluate", str(pred), str(gt), "--protocol", "generic", "--out", str(out), "--no-progress",
               "--nsd-tolerance", "1.0"])
    assert rc == 0
    df, js = read_outputs(out)
    p, g = arrays["case_001"]
    assert df.set_index("case").loc["case_001", "nsd_liver"] == pytest.approx(M.nsd(p == 1, g == 1, sp, 1.0))
    assert "dice_mean" in capsys.readouterr().out
    (pred / "case_001.nii.gz").unlink()
    rc = main(["evaluate", str(pred), str(gt), "--out", str(tmp_path / "o2"), "--no-progress"])
    assert rc == 1
    assert "case_001.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


# ----------------------------------------------------------------------------------------------------------------------
# files and writing
# ----------------------------------------------------------------------------------------------------------------------
def test_read_label_map_2d_and_3d(tmp_path):
    write_png(tmp_path / "a.png", box((6, 9), (1, 2), (2, 3), 2))
    arr, sp = E.read_label_map(tmp_path / "a.png")
    assert arr.shape == (6, 9) and sp == (1.0, 1.0) and arr.max() == 2
    img = sitk.GetImageFromArray(box((6, 9), (1, 2), (2, 3), 1))
    img.SetSpacing((0.5, 0.25))  # x, y
    sitk.WriteImage(img, str(tmp_path / "b.nii.gz"))
    arr, sp = E.read_label_map(tmp_path / "b.nii.gz")
    assert arr.shape == (6, 9) and sp == pytest.approx((0.25, 0.5))  # nnU-Net's 999 placeholder axis dropped
    write_nii(tmp_path / "c.nii.gz", box((3, 6, 9), (0, 1, 2), (1, 2, 3), 4), (0.5, 0.25, 3.0))
    arr, sp = E.read_label_map(tmp_path / "c.nii.gz")
    assert arr.shape == (3, 6, 9) and sp == pytest.approx((3.0, 0.25, 0.5)) and arr.dtype == np.int64
    write_nii(tmp_path / "d.nii.gz", box((1, 6, 9), (0, 1, 2), (1, 2, 3), 1), (0.5, 0.25, 3.0))
    arr, sp = E.read_label_map(tmp_path / "d.nii.gz")  # a real one-slice volume: no placeholder spacing, stays 3D
    assert arr.shape == (1, 6, 9) and sp == pytest.approx((3.0, 0.25, 0.5))


def test_read_image_channels_and_the_same_2d_rule(tmp_path):
    rgb = np.arange(6 * 9 * 3, dtype=np.uint8).reshape(6, 9, 3)
    Image.fromarray(rgb).save(tmp_path / "a_0000.png")
    img, sp = E.read_image([tmp_path / "a_0000.png"])
    assert img.shape == (3, 6, 9) and sp == (1.0, 1.0)
    np.testing.assert_array_equal(img, np.moveaxis(rgb, -1, 0))
    vols = [box((1, 6, 9), (0, 1, 2), (1, 2, 3), v) for v in (3, 7)]
    for i, v in enumerate(vols):
        write_nii(tmp_path / f"b_{i:04d}.nii.gz", v, (0.5, 0.25, 3.0))
    img, sp = E.read_image([tmp_path / "b_0000.nii.gz", tmp_path / "b_0001.nii.gz"])
    assert img.shape == (2, 1, 6, 9) and sp == pytest.approx((3.0, 0.25, 0.5))  # one-slice volume stays 3D
    np.testing.assert_array_equal(img[1], vols[1])
    with pytest.raises(ValueError, match="c_0000.png"):
        E.read_image([tmp_path / "c_0000.png"])


def test_write_results_leaves_nothing_half_written(tmp_path):
    df = pd.DataFrame({"case": ["a"], "dice_mean": [0.5]})
    out = tmp_path / "out"
    with pytest.raises(ValueError):  # NaN is not valid JSON: the summary fails after the CSV temp was written
        E.write_results(df, {"bad": float("nan")}, out)
    assert list(out.iterdir()) == []
    E.write_results(df, {"ok": 1}, out)
    assert pd.read_csv(out / "per_case.csv").equals(df)
    assert json.loads((out / "summary.json").read_text()) == {"ok": 1}


# ----------------------------------------------------------------------------------------------------------------------
# real data
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_endoscopy_on_real_kvasir_masks(kvasir_dir, tmp_path):
    """Kvasir-SEG masks: against themselves every score is 1; a copy eroded by one pixel keeps NSD = 1 at the 2 px
    tolerance while its Dice drops below 1."""
    pred, gt, out = folders(tmp_path)
    table = pd.read_csv(kvasir_dir / "cases.csv").sort_values("mask_pixels")
    masks = [kvasir_dir / "masks" / f"{i}.png" for i in table["id"].iloc[[0, len(table) // 2]]]  # small, median
    for f in masks:
        m = np.asarray(Image.open(f))
        write_png(gt / f.name, m)
        write_png(pred / f.name, np.where(find_boundaries(m, mode="inner"), 0, m))
    df, js = E.score_folder(pred, gt, "endoscopy", progress=False)
    assert len(df) == 2
    assert (df["nsd_mean"] == 1.0).all() and (df["dice_mean"] < 1.0).all() and (df["dice_mean"] > 0.8).all()
    df_c, _ = E.score_folder(pred, gt, "endoscopy", endoscopy_nsd="contour", progress=False)
    assert (df_c["nsd_mean"] == 1.0).all()
    df_self, _ = E.score_folder(gt, gt, "endoscopy", progress=False)
    assert (df_self[["dice_mean", "nsd_mean"]] == 1.0).all().all()


@pytest.mark.shared_data
def test_generic_on_real_mri_uses_header_spacing(pgbm_dir, tmp_path):
    """PGBM tumour mask (0.6875 x 0.6875 x 6.5 mm): a copy shifted by one slice scores its HD95 in 6.5 mm units, a
    copy shifted by one column in 0.6875 mm units, both as computed here from the header spacing."""
    pred, gt, out = folders(tmp_path)
    src = pgbm_dir / "PGBM-001_1991-11-19" / "seg.nii.gz"
    img = sitk.ReadImage(str(src))
    seg = sitk.GetArrayFromImage(img)  # (z, y, x)
    sp_zyx = img.GetSpacing()[::-1]
    shutil.copy(src, gt / "z.nii.gz")
    shutil.copy(src, gt / "x.nii.gz")
    for name, shifted in (("z", np.roll(seg, 1, axis=0)), ("x", np.roll(seg, 1, axis=2))):
        out_img = sitk.GetImageFromArray(shifted)
        out_img.CopyInformation(img)
        sitk.WriteImage(out_img, str(pred / f"{name}.nii.gz"))
    df, js = E.score_folder(pred, gt, "generic", labels={"background": 0, "tumour": 1}, progress=False)
    df = df.set_index("case")
    for name, axis in (("z", 0), ("x", 2)):
        p, g = np.roll(seg, 1, axis=axis) == 1, seg == 1
        assert df.loc[name, "hd95_tumour"] == pytest.approx(M.hd95(p, g, sp_zyx), rel=1e-6)
        assert df.loc[name, "dice_tumour"] == pytest.approx(dice_np(p, g))
        assert df.loc[name, "nsd_tumour"] == pytest.approx(M.nsd(p, g, sp_zyx, 2.0), rel=1e-6)
    assert df.loc["z", "hd95_tumour"] == pytest.approx(sp_zyx[0], rel=1e-3)
    assert df.loc["x", "hd95_tumour"] == pytest.approx(sp_zyx[2], rel=1e-3)
    assert df.loc["x", "nsd_tumour"] == 1.0 and df.loc["z", "nsd_tumour"] < 1.0


def test_evaluation_protocols_are_the_converters_protocols():
    from xlstm_unet.datasets import Protocol

    assert E.PROTOCOLS == tuple(p.value for p in Protocol)
