"""Every experiment notebook executes under papermill with smoke parameters."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from xlstm_unet.paths import REPO_ROOT

NB = REPO_ROOT / "notebooks"


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
    _run("00_quickstart.ipynb", tmp_path, dataset="phantom2d", methods=methods, epochs=1, iterations=2,
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
        _run("00_quickstart.ipynb", tmp_path, dataset="kvasir_seg", source=str(tmp_path / "nope"),
             output_dir=str(tmp_path / "r"), figure_dir=str(tmp_path / "f"))
