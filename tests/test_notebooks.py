"""Every experiment notebook executes under papermill with smoke parameters."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from xlstm_unet.paths import REPO_ROOT

NB = REPO_ROOT / "notebooks"
# every test runs a notebook in a fresh kernel under papermill, most of them training: all slow
pytestmark = pytest.mark.slow


def _run(name: str, tmp_path: Path, **params) -> nbformat.NotebookNode:
    out = tmp_path / name
    pm.execute_notebook(str(NB / name), str(out), parameters=params, cwd=str(NB), progress_bar=False,
                        kernel_name="python3")
    return nbformat.read(out, as_version=4)


def test_quickstart_end_to_end(phantom2d_prepared, tmp_path):
    from PIL import Image
    import numpy as np
    import pandas as pd

    methods = ["nnunet", "xlstm_bot", "xlstm_enc"]
    _run("00_quickstart.ipynb", tmp_path, dataset="phantom2d", methods=methods, epochs=1, iterations_per_epoch=2,
         output_dir=str(tmp_path / "results"), figure_dir=str(tmp_path / "fig"), convert_options={})
    table = pd.read_csv(tmp_path / "fig" / "results.csv", index_col=0)
    assert list(table.index) == methods
    for m in methods:
        summary = json.loads((tmp_path / "results" / phantom2d_prepared / m / "summary.json").read_text())
        assert 0.0 <= summary["metrics"]["dice_mean"]["mean"] <= 1.0
    png = np.asarray(Image.open(tmp_path / "fig" / "fig2_panel.png").convert("L"), dtype=float)
    assert png.std() > 5  # not blank
    assert (tmp_path / "fig" / "fig2_panel.pdf").stat().st_size > 1000


def test_quickstart_rejects_unknown_method(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="unknown method 'transformer9000'"):
        _run("00_quickstart.ipynb", tmp_path, methods=["transformer9000"], output_dir=str(tmp_path / "r"),
             figure_dir=str(tmp_path / "f"))


def test_quickstart_rejects_unknown_dataset_and_missing_path(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="unknown dataset 'mnist'"):
        _run("00_quickstart.ipynb", tmp_path, dataset="mnist", output_dir=str(tmp_path / "r"),
             figure_dir=str(tmp_path / "f"))
    with pytest.raises(pm.PapermillExecutionError, match="does not exist"):
        _run("00_quickstart.ipynb", tmp_path, dataset="kvasir_seg", data_dir=str(tmp_path / "nope"),
             output_dir=str(tmp_path / "r"), figure_dir=str(tmp_path / "f"))


# ------------------------------------------------------------------------------------------------------------
# Every experiment notebook, with smoke parameters: one method, one epoch of one iteration, no test-time mirroring.
# The real-data notebooks read $XLSTM_UNET_SHARED_DATA (subsets); the paper notebooks read tiny format-faithful
# fixtures of the real releases (tests/fixtures_datasets.py), since the releases cannot be downloaded here.

SMOKE = dict(methods=["xlstm_enc"], epochs=1, iterations_per_epoch=1, batch_size=2, mirroring=False)


def _check_results(tmp_path: Path, methods=("xlstm_enc",)) -> None:
    import pandas as pd

    table = pd.read_csv(tmp_path / "fig" / "results.csv", index_col=0)
    assert list(table.index) == list(methods)
    assert (tmp_path / "fig" / "fig2_panel.png").is_file()
    summaries = list((tmp_path / "results").glob(f"*/{methods[0]}/summary.json"))
    assert len(summaries) == 1
    assert json.loads(summaries[0].read_text())["n_cases"] >= 1
    (run,) = (tmp_path / "results").glob(f"*/{methods[0]}/seed*/run.json")
    assert json.loads(run.read_text())["budget"]["batch_size"] == 2  # the notebook's batch_size parameter


@pytest.fixture
def smoke_dirs(tmp_path):
    return dict(output_dir=str(tmp_path / "results"), figure_dir=str(tmp_path / "fig"))


@pytest.mark.parametrize("name,shared,options,fold,configuration", [
    ("10_kvasir_seg.ipynb", "kvasir_seg", {"max_cases": 10}, 0, "2d"),
    # nnU-Net plans 768x1152 for these 700x1100 frames; the study's 256x256 patch keeps one CPU step short
    ("11_ctc_nuclei.ipynb", "ctc_nuclei", {"cases": ["HeLa_t13", "HeLa_t52", "HeLa_t75"]}, "all", "2d_p256x256"),
    # 3d_fullres plans a 24x256x256 patch here, too slow for a smoke run on 2 cores: the 2d configuration at half
    # the resolution (3D runs are covered by the BraTS and abdomen notebooks on fixtures below)
    ("12_pgbm_brain_mri.ipynb", "pgbm_brain_mri", {}, "all", "2d_sp1.375x1.375"),
])
def test_real_data_notebooks(name, shared, options, fold, configuration, shared_data, nnunet_root, tmp_path,
                             smoke_dirs):
    # xLSTM-UNet Bot on the Kvasir images (Enc at full resolution is covered on the phantom); nnU-Net's CNN on the
    # CTC frames and PGBM slices, whose sliding-window prediction covers many windows: the notebook, converter and
    # evaluation protocol are what this checks there
    method = "xlstm_bot" if shared == "kvasir_seg" else "nnunet"
    _run(name, tmp_path, data_dir=str(shared_data / shared), convert_options=options, fold=fold,
         configuration=configuration, **{**SMOKE, "methods": [method]}, **smoke_dirs)
    _check_results(tmp_path, methods=(method,))


def _paper_fixture(dataset: str, root: Path) -> tuple[Path, dict]:
    import fixtures_datasets as fx

    if dataset == "amos_mri":
        return fx.make_amos(root / "amos22"), {}
    if dataset == "endovis17":  # full-size frames, converted small: the pipeline is the same, the network tiny
        return (fx.make_endovis17(root / "endovis17", train_videos=(1, 2, 3), frames=(0, 1)),
                {"downscale": 8, "crop_hw": [64, 96]})
    if dataset == "neurips_cells":
        return fx.make_neurips_cells(root / "cells"), {}
    if dataset == "brats23":
        return fx.make_brats23(root / "brats23", n=10), {}
    raise AssertionError(dataset)


# The notebooks default to the paper's patch sizes (2d_p320x320, 3d_fullres_p48x160x224): one CPU iteration at
# 48x160x224 needs most of this machine's memory, so the smoke runs take nnU-Net's own plan of the small fixtures.
# tests/test_paper_path.py covers the patch-size overrides.
@pytest.mark.parametrize("name,dataset,configuration", [
    # 20 and 24 read the same AMOS fixture (2D and 3D): 24 runs by default, 20 with make test-all
    pytest.param("20_abdomen_mri_2d.ipynb", "amos_mri", "2d", marks=pytest.mark.extended),
    # the same notebook template as 20, on converters that tests/test_datasets_paper.py checks: make test-all
    pytest.param("21_endoscopy.ipynb", "endovis17", "2d", marks=pytest.mark.extended),
    pytest.param("22_microscopy_cells.ipynb", "neurips_cells", "2d", marks=pytest.mark.extended),
    ("23_brats_3d.ipynb", "brats23", "3d_fullres"),
    ("24_abdomen_mri_3d.ipynb", "amos_mri", "3d_fullres"),
])
def test_paper_notebooks_on_format_fixtures(name, dataset, configuration, nnunet_root, tmp_path, smoke_dirs):
    src, options = _paper_fixture(dataset, tmp_path / "raw")
    # the fixtures have fewer than 5 training cases: nnU-Net cannot make 5 folds, so train on "all"
    _run(name, tmp_path, data_dir=str(src), convert_options=options, dataset=dataset, fold="all",
         configuration=configuration, **SMOKE, **smoke_dirs)
    _check_results(tmp_path)


def test_results_tables_notebook_shows_not_run_without_results(tmp_path):
    import pandas as pd

    from xlstm_unet.figures import NOT_RUN

    _run("30_results_tables.ipynb", tmp_path, results_root=str(tmp_path / "none"), figure_dir=str(tmp_path / "t"))
    for t in ("1", "2", "3", "real"):
        table = pd.read_csv(tmp_path / "t" / f"table_{t}.csv", index_col=0)
        measured = table[[c for c in table.columns if c.endswith("measured")]]
        assert (measured == NOT_RUN).all().all()
    t1 = pd.read_csv(tmp_path / "t" / "table_1.csv", index_col=0)
    assert t1.loc["xlstm_enc", "abdomen_mri_2d · dice_mean · paper"] == "0.7747 ± 0.0950"  # the paper's Table 1


def test_efficiency_notebook_on_the_committed_benchmarks(tmp_path):
    from xlstm_unet.paths import REPO_ROOT

    for name in ("vil_scaling_cpu.json", "train_step_cpu.json"):
        assert (REPO_ROOT / "benchmarks" / "results" / name).is_file(), f"run `make bench` ({name} missing)"
    _run("31_efficiency_report.ipynb", tmp_path, figure_dir=str(tmp_path / "eff"))
    for stem in ("vil_scaling", "train_step", "accuracy_vs_cost_kvasir_seg"):  # the committed cpu_real study
        assert (tmp_path / "eff" / f"{stem}.png").stat().st_size > 5000
        assert (tmp_path / "eff" / f"{stem}.md").is_file()
