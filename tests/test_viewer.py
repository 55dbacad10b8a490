"""Slice viewer: data model, widgets driven from Python, loading from the results layout, and its notebook."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest

from xlstm_unet.colors import label_colors
from xlstm_unet.paths import REPO_ROOT
from xlstm_unet.viewer import ViewerCase, SliceViewer, ViewAxis, ViewerData, case_dice, demo_data

NOTEBOOK = REPO_ROOT / "notebooks" / "viewer_demo.ipynb"


def _np_dice_mean(pred: np.ndarray, gt: np.ndarray) -> float:
    """Independent reference: mean over labels present in either map of 2|A∩B|/(|A|+|B|)."""
    labels = sorted((set(np.unique(pred)) | set(np.unique(gt))) - {0})
    vals = [2.0 * np.sum((pred == k) & (gt == k)) / (np.sum(pred == k) + np.sum(gt == k)) for k in labels]
    return float(np.mean(vals)) if vals else math.nan


@pytest.fixture()
def data3d() -> ViewerData:
    rng = np.random.default_rng(0)
    shape = (6, 10, 12)  # (D, H, W)
    images, gts, preds = {}, {}, {"a": {}, "b": {}}
    for i, name in enumerate(["c0", "c1"]):
        gt = rng.integers(0, 3, size=shape)
        images[name] = rng.normal(size=(2, *shape)).astype(np.float32) + i  # (C=2, D, H, W)
        gts[name] = gt
        preds["a"][name] = np.where(rng.random(shape) < 0.2, 0, gt)
        preds["b"][name] = np.roll(gt, 1, axis=0)
    return ViewerData.from_arrays(images, gts, preds, labels={1: "one", 2: "two"},
                                  spacing={"c0": (3.0, 1.0, 1.0), "c1": (3.0, 1.0, 1.0)})


def test_viewer_widgets_drive_displayed_arrays(data3d: ViewerData) -> None:
    v = SliceViewer(data3d)
    c0 = data3d.case("c0")
    # start: axial, the slice with the most GT foreground
    assert v.axis.value == "axial"
    best = int(np.argmax((c0.gt > 0).sum(axis=(1, 2))))
    assert v.slice.value == best and v.slice.max == 5
    s = v.current_slices()
    assert list(s) == ["image", "ground truth", "a", "b"]
    np.testing.assert_array_equal(s["ground truth"], c0.gt[best])
    np.testing.assert_array_equal(s["b"], c0.predictions["b"][best])
    np.testing.assert_array_equal(s["image"], c0.image[0, best])

    # slice slider
    before = v.image.value
    v.slice.value = (best + 1) % 6
    np.testing.assert_array_equal(v.current_slices()["ground truth"], c0.gt[(best + 1) % 6])
    assert v.image.value != before  # re-rendered

    # channel
    v.channel.value = 1
    np.testing.assert_array_equal(v.current_slices()["image"], c0.image[1, (best + 1) % 6])

    # axis: sagittal fixes array axis 2 and flips z so that it points up
    v.axis.value = "sagittal"
    assert v.slice.max == 11
    x = v.slice.value
    np.testing.assert_array_equal(v.current_slices()["ground truth"], c0.gt[:, :, x][::-1])
    assert v.current_view().aspect == pytest.approx(3.0)
    v.axis.value = "coronal"
    y = v.slice.value
    np.testing.assert_array_equal(v.current_slices()["a"], c0.predictions["a"][:, y, :][::-1])

    # method toggles
    v.method_toggles["a"].value = False
    assert list(v.current_panels()) == ["image", "ground truth", "b"]
    assert "a: Dice" not in v.title.value and "b: Dice" in v.title.value

    # case
    v.case.value = "c1"
    c1 = data3d.case("c1")
    assert v.axis.value == "coronal"
    np.testing.assert_array_equal(v.current_slices()["ground truth"], c1.gt[:, v.slice.value, :][::-1])
    assert "<b>c1</b>" in v.title.value


def test_viewer_dice_and_colours(data3d: ViewerData) -> None:
    v = SliceViewer(data3d, methods=["a"], opacity=0.4)
    c0 = data3d.case("c0")
    dice = v.current_dice()
    assert list(dice) == ["a"]
    assert dice["a"] == pytest.approx(_np_dice_mean(c0.predictions["a"], c0.gt))
    assert f"a: Dice {dice['a']:.3f}" in v.title.value

    panels = v.current_panels()
    gt_slice = v.current_slices()["ground truth"]
    grey = panels["image"][..., 0]
    np.testing.assert_allclose(panels["image"][..., 1], grey)
    colours = label_colors(3)
    for k in (1, 2):
        m = gt_slice == k
        want = 0.6 * grey[m][:, None] + 0.4 * colours[k][None, :]
        np.testing.assert_allclose(panels["ground truth"][m], want)
    np.testing.assert_allclose(panels["ground truth"][gt_slice == 0], panels["image"][gt_slice == 0])
    gt_before = panels["ground truth"].copy()
    v.opacity.value = 0.9
    after = v.current_panels()
    assert not np.allclose(after["ground truth"], gt_before)
    np.testing.assert_allclose(after["image"], panels["image"])


def test_viewer_png_is_not_blank(data3d: ViewerData) -> None:
    from PIL import Image

    png = SliceViewer(data3d).render_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
    assert arr.std() > 10


def test_viewer_2d_hides_slice_controls() -> None:
    data = demo_data("2d", num_cases=2, size=32)
    assert "SYNTHETIC" in data.source
    v = SliceViewer(data)
    assert v.slice.layout.display == "none" and v.axis.layout.display == "none"
    c = data.case("synthetic_001")
    v.case.value = "synthetic_001"
    np.testing.assert_array_equal(v.current_slices()["ground truth"], c.gt)
    assert v.current_view().index is None
    assert all(p.shape == (32, 32, 3) for p in v.current_panels().values())


def test_case_dice_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        gt = rng.integers(0, 4, (9, 9))
        pred = rng.integers(0, 4, (9, 9))
        assert case_dice(pred, gt) == pytest.approx(_np_dice_mean(pred, gt))
    assert math.isnan(case_dice(np.zeros((3, 3), int), np.zeros((3, 3), int)))
    # a label only in the prediction counts (Dice 0 for it)
    gt = np.zeros((4, 4), int)
    gt[0, 0] = 1
    pred = gt.copy()
    pred[3, 3] = 2
    assert case_dice(pred, gt) == pytest.approx(0.5)


def test_bad_input_errors() -> None:
    with pytest.raises(ValueError, match="prediction shape"):
        ViewerCase("x", np.zeros((4, 4)), np.zeros((4, 4), int), {"m": np.zeros((4, 5), int)})
    with pytest.raises(ValueError, match="image must be"):
        ViewerCase("x", np.zeros((2, 4, 5)), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="same cases"):
        ViewerData.from_arrays({"a": np.zeros((4, 4))}, {"b": np.zeros((4, 4), int)})
    data = demo_data("2d", num_cases=1, size=16)
    with pytest.raises(ValueError, match="unknown case"):
        data.case("nope")
    with pytest.raises(ValueError, match="unknown methods"):
        SliceViewer(data, methods=["nope"])
    d3 = demo_data("3d", num_cases=1, size=16)
    with pytest.raises(ValueError, match="slice index"):
        d3.view("synthetic_000", ViewAxis.AXIAL, index=99)


def _write_dataset_json(raw: Path, ending: str, channels: dict, labels: dict) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "dataset.json").write_text(json.dumps(
        {"channel_names": channels, "labels": labels, "numTraining": 0, "file_ending": ending}))


def test_from_results_2d_png(tmp_path: Path) -> None:
    from skimage.io import imsave

    rng = np.random.default_rng(2)
    raw, res = tmp_path / "raw" / "Dataset990_T", tmp_path / "res" / "Dataset990_T"
    _write_dataset_json(raw, ".png", {"0": "R", "1": "G", "2": "B"}, {"background": 0, "polyp": 1})
    (raw / "imagesTs").mkdir()
    (raw / "labelsTs").mkdir()
    truth = {}
    for case in ("k1", "k2"):
        rgb = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
        gt = (rng.random((20, 24)) < 0.3).astype(np.uint8)
        imsave(raw / "imagesTs" / f"{case}_0000.png", rgb, check_contrast=False)
        imsave(raw / "labelsTs" / f"{case}.png", gt, check_contrast=False)
        truth[case] = (rgb, gt)
    for method, flip in (("nnunet", False), ("xlstm_enc", True)):
        (res / method / "predictions").mkdir(parents=True)
        for case in ("k1",) if method == "nnunet" else ("k1", "k2"):
            gt = truth[case][1]
            imsave(res / method / "predictions" / f"{case}.png", gt[:, ::-1] if flip else gt, check_contrast=False)
    data = ViewerData.from_results(res, raw)
    assert data.case_names == ["k1", "k2"]
    assert data.methods == ["nnunet", "xlstm_enc"]
    assert data.labels[1] == "polyp" and data.is_rgb()
    c = data.case("k2")
    assert c.ndim == 2
    np.testing.assert_array_equal(c.image, np.moveaxis(truth["k2"][0], -1, 0))
    np.testing.assert_array_equal(c.gt, truth["k2"][1])
    assert "nnunet" not in c.predictions
    assert data.dice("k1", "nnunet") == pytest.approx(1.0)
    assert data.dice("k2", "xlstm_enc") == pytest.approx(_np_dice_mean(truth["k2"][1][:, ::-1], truth["k2"][1]))
    v = SliceViewer(data)
    assert v.channel.value is None and v.current_slices()["image"].shape == (20, 24, 3)
    assert math.isnan(data.dice("k2", "nnunet"))


def test_from_results_3d_nifti(tmp_path: Path) -> None:
    import SimpleITK as sitk

    rng = np.random.default_rng(3)
    raw, res = tmp_path / "raw" / "Dataset991_V", tmp_path / "res" / "Dataset991_V"
    _write_dataset_json(raw, ".nii.gz", {"0": "t1", "1": "flair"}, {"background": 0, "tumour": 1})
    for sub in ("imagesTs", "labelsTs"):
        (raw / sub).mkdir()
    (res / "xlstm_bot" / "predictions").mkdir(parents=True)

    def write(arr: np.ndarray, path: Path) -> None:
        img = sitk.GetImageFromArray(arr)  # arr is (z, y, x)
        img.SetSpacing((0.5, 0.7, 4.0))  # (x, y, z)
        sitk.WriteImage(img, str(path))

    vol = [rng.normal(size=(5, 8, 9)).astype(np.float32) for _ in range(2)]
    gt = (rng.random((5, 8, 9)) < 0.2).astype(np.uint8)
    write(vol[0], raw / "imagesTs" / "p1_0000.nii.gz")
    write(vol[1], raw / "imagesTs" / "p1_0001.nii.gz")
    write(gt, raw / "labelsTs" / "p1.nii.gz")
    write(np.roll(gt, 1, axis=1), res / "xlstm_bot" / "predictions" / "p1.nii.gz")
    data = ViewerData.from_results(res, raw)
    c = data.case("p1")
    assert c.ndim == 3 and data.channel_names == ["t1", "flair"]
    np.testing.assert_allclose(c.image[1], vol[1])
    np.testing.assert_array_equal(c.gt, gt)
    assert c.spacing == pytest.approx((4.0, 0.7, 0.5))  # array order (z, y, x)
    assert data.view("p1", "axial", 2).aspect == pytest.approx(0.7 / 0.5)
    assert data.dice("p1", "xlstm_bot") == pytest.approx(_np_dice_mean(np.roll(gt, 1, axis=1), gt))
    with pytest.raises(ValueError, match="no predictions folder"):
        ViewerData.from_results(res, raw, methods=["nope"])
    with pytest.raises(ValueError, match="dataset.json"):
        ViewerData.from_results(res, tmp_path)


# ------------------------------------------------------------------------------------------ the notebook

_PARAM_LINE = re.compile(r"^[A-Za-z_]\w*: [A-Za-z_][\w\[\], |]* = .+  # .+$")


def test_viewer_notebook_committed_clean() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    for line in code[0].source.strip().splitlines():
        assert _PARAM_LINE.match(line), f"parameter line not 'name: type = default  # help': {line!r}"
    for c in code:
        assert c.outputs == [] and c.execution_count is None, "commit the notebook without outputs"


@pytest.mark.slow
def test_viewer_notebook_runs_under_papermill(tmp_path: Path) -> None:
    import papermill as pm

    out = tmp_path / "viewer_demo.ipynb"
    pm.execute_notebook(str(NOTEBOOK), str(out), parameters={"demo_kind": "2d"}, kernel_name="python3",
                        progress_bar=False, cwd=str(tmp_path))
    nb = nbformat.read(out, as_version=4)
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "SYNTHETIC demo (2d" in text
    assert "application/vnd.jupyter.widget-view+json" in text  # the widget was displayed


def test_from_results_uses_the_evaluators_2d_rule(tmp_path: Path) -> None:
    """A real one-slice volume stays 3D (as the evaluator scores it); only nnU-Net's 2D placeholder axis is dropped."""
    import SimpleITK as sitk

    from xlstm_unet.evaluation import read_label_map

    raw, res = tmp_path / "raw" / "Dataset992_S", tmp_path / "res" / "Dataset992_S"
    _write_dataset_json(raw, ".nii.gz", {"0": "t1"}, {"background": 0, "a": 1})
    for sub in ("imagesTs", "labelsTs"):
        (raw / sub).mkdir()
    (res / "m" / "predictions").mkdir(parents=True)
    gt = np.zeros((1, 6, 7), np.uint8)
    gt[0, 1:4, 2:5] = 1
    for arr, path in ((gt.astype(np.float32), raw / "imagesTs" / "s_0000.nii.gz"), (gt, raw / "labelsTs" / "s.nii.gz"),
                      (gt, res / "m" / "predictions" / "s.nii.gz")):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.5, 0.5, 5.0))
        sitk.WriteImage(img, str(path))
    c = ViewerData.from_results(res, raw).case("s")
    assert c.ndim == read_label_map(raw / "labelsTs" / "s.nii.gz")[0].ndim == 3
    assert c.gt.shape == (1, 6, 7) and c.spacing == pytest.approx((5.0, 0.5, 0.5))
