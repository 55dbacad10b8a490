"""Results tables (paper format), the paper's numbers, Fig. 2 panels, efficiency tables and plots, colours."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xlstm_unet import paper_results
from xlstm_unet.figures import (
    NOT_RUN,
    fig2_panel,
    label_colormap,
    label_colors,
    load_benchmark,
    overlay_labels,
    plot_train_step,
    plot_vil_scaling,
    results_table,
    save_table,
    train_step_table,
    vil_scaling_table,
)
from xlstm_unet.metrics import paired_comparison
from xlstm_unet.viewer import demo_data

# ------------------------------------------------------------------------------------------ colours


def test_label_colours_are_shared_and_stable() -> None:
    c4, c12 = label_colors(4), label_colors(12)
    np.testing.assert_array_equal(c4, c12[:4])
    assert len({tuple(c) for c in c12}) == 12  # all distinct
    cmap = label_colormap(4)
    assert cmap(0)[3] == 0.0  # background transparent
    np.testing.assert_allclose(cmap(2)[:3], c4[2])
    img = np.full((2, 2), 0.5)
    lab = np.array([[0, 1], [2, 0]])
    out = overlay_labels(img, lab, opacity=0.25, num_classes=3)
    np.testing.assert_allclose(out[0, 0], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(out[1, 0], 0.75 * 0.5 + 0.25 * c4[2])
    with pytest.raises(ValueError, match="out of range"):
        overlay_labels(img, lab, num_classes=2)


def test_colour_names_are_one_definition_reexported_by_figures() -> None:
    from xlstm_unet import colors, figures

    for name in colors.__all__:
        assert getattr(figures, name) is getattr(colors, name), name
        assert name in figures.__all__


# ------------------------------------------------------------------------------------------ the paper's numbers

_PM = re.compile(r"(\d+\.\d+)\s*(?:\\pm|±)\s*(\d+\.\d+)")


def test_paper_values_match_the_paper_text(shared_data: Path) -> None:
    """Re-read Tables 1-3 from the paper's text and compare with the transcription, cell by cell."""
    text = (shared_data.parent / "paper" / "xlstm-unet-paper.txt").read_text(encoding="utf-8")
    lines = text.splitlines()

    def rows_after(title: str, n: int) -> list[str]:
        start = next(i for i, ln in enumerate(lines) if ln.startswith(f"{title}."))
        body = [ln for ln in lines[start + 1:] if ln.strip()]
        return body[2 if title != "Table 3" else 1: (2 if title != "Table 3" else 1) + n]

    by_table = {"Table 1": 8, "Table 2": 8, "Table 3": 6}
    checked = 0
    for table, n in by_table.items():
        for row in rows_after(table, n):
            label = row.split("\t")[0].strip()
            vals = [v for v in paper_results.PAPER_VALUES if v.table == table and v.row == label]
            assert vals, f"{table}: row {label!r} not transcribed"
            if table == "Table 2":
                printed = [float(x) for x in row.split("\t")[1:] if x.strip()]
                assert [v.mean for v in vals] == printed
            else:
                printed = [(float(a), float(b)) for a, b in _PM.findall(row)]
                assert [(v.mean, v.std) for v in vals] == printed
            checked += len(vals)
    assert checked == len(paper_results.PAPER_VALUES) == 8 * 5 + 8 * 8 + 6 * 2


def test_paper_lookup_and_dataset_matching() -> None:
    v = paper_results.paper_value("endoscopy", "xlstm_enc", "dice_mean")
    assert (v.mean, v.std, v.table, v.row) == (0.6843, 0.3024, "Table 1", "Ours_enc")
    b = paper_results.paper_value("brats2023", "xlstm_bot", "dice_WT")
    assert b.mean_fraction == pytest.approx(0.9384) and b.note
    assert paper_results.paper_value("brats2023", "segresnet", "hd95_mean").mean_fraction == 4.01
    assert paper_results.paper_value("abdomen_mri_3d", "xlstm_enc", "dice_mean") is None
    with pytest.raises(ValueError, match="unknown paper dataset"):
        paper_results.paper_value("kvasir", "nnunet", "dice_mean")
    assert paper_results.match_dataset("Dataset702_Endoscopy") == "endoscopy"
    assert paper_results.match_dataset("Dataset703_AbdomenMRI_3D") == "abdomen_mri_3d"
    assert paper_results.match_dataset("Dataset901_Phantom2D") is None
    assert paper_results.match_dataset("Dataset910_KvasirSEG") is None


# ------------------------------------------------------------------------------------------ results table


def _write_method(root: Path, dataset: str, method: str, cases: list[str], cols: dict[str, np.ndarray]) -> None:
    d = root / dataset / method
    d.mkdir(parents=True)
    pd.DataFrame({"case": cases, **cols}).to_csv(d / "per_case.csv", index=False)


def test_results_table_numbers_not_run_and_p_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cases = [f"case_{i:02d}" for i in range(12)]
    ref = {"dice_mean": rng.uniform(0.5, 0.9, 12), "nsd_mean": rng.uniform(0.5, 0.9, 12)}
    other = {k: np.clip(v - rng.uniform(0.0, 0.1, 12), 0, 1) for k, v in ref.items()}
    other["dice_mean"][3] = np.nan  # an undefined case is left out, not counted
    _write_method(tmp_path, "Dataset702_Endoscopy", "xlstm_enc", cases, ref)
    order = rng.permutation(12)  # other method's CSV in another case order: pairing must follow case names
    _write_method(tmp_path, "Dataset702_Endoscopy", "nnunet", [cases[i] for i in order],
                  {k: v[order] for k, v in other.items()})
    methods = ["nnunet", "umamba_bot", "xlstm_enc"]
    table = results_table(tmp_path, ["Dataset702_Endoscopy"], methods, ["dice_mean", "nsd_mean"])

    ds = "Dataset702_Endoscopy"
    # measured = mean ± std (ddof=0) of the per_case values, NaN left out
    finite = other["dice_mean"][np.isfinite(other["dice_mean"])]
    assert table.loc["nnunet", (ds, "dice_mean", "measured")] == f"{finite.mean():.4f} ± {finite.std():.4f}"
    r = ref["nsd_mean"]
    assert table.loc["xlstm_enc", (ds, "nsd_mean", "measured")] == f"{r.mean():.4f} ± {r.std():.4f}"
    # missing method: "not run" everywhere except the paper's column
    assert table.loc["umamba_bot", (ds, "dice_mean", "measured")] == NOT_RUN
    assert table.loc["umamba_bot", (ds, "dice_mean", "p vs xlstm_enc")] == NOT_RUN
    assert table.loc["umamba_bot", (ds, "dice_mean", "paper")] == "0.6540 ± 0.3008"
    assert table.loc["xlstm_enc", (ds, "dice_mean", "paper")] == "0.6843 ± 0.3024"
    assert table.loc["xlstm_enc", (ds, "dice_mean", "p vs xlstm_enc")] == "ref"
    # p-value: paired over case names, NaN case dropped
    keep = np.isfinite(other["dice_mean"])
    p = paired_comparison(other["dice_mean"][keep], ref["dice_mean"][keep], n_boot=1000, seed=0)["p_value"]
    cell = table.loc["nnunet", (ds, "dice_mean", "p vs xlstm_enc")]
    assert float(cell) == pytest.approx(p, rel=1e-2)
    # no numbers anywhere in a not-run row
    assert all(not re.search(r"\d", v) for k, v in table.loc["umamba_bot"].items() if k[2] != "paper")

    paths = save_table(table, tmp_path / "out" / "table1")
    md = paths["md"].read_text()
    assert md.count("\n") == 2 + len(methods)
    assert "| umamba_bot | not run |" in md
    csv = pd.read_csv(paths["csv"], index_col=0)
    assert csv.shape == (3, 6)


def test_results_table_from_records_without_paper() -> None:
    rec = pd.DataFrame({"dataset": "D", "method": ["a", "a"], "case": ["x", "y"], "metric": "f1",
                        "value": [0.2, 0.4]})
    table = results_table(rec, ["D"], ["a", "b"], ["f1"], paper=False, reference=None)
    assert list(table.columns) == [("D", "f1", "measured")]
    assert table.loc["a"].iloc[0] == "0.3000 ± 0.1000" and table.loc["b"].iloc[0] == NOT_RUN


# ------------------------------------------------------------------------------------------ Fig. 2


def test_fig2_panel_writes_png_and_pdf(tmp_path: Path) -> None:
    from PIL import Image

    data = demo_data("2d", num_cases=3, size=32)
    res = fig2_panel(data, tmp_path / "figs" / "fig2", cases=["synthetic_000", "synthetic_002"],
                     methods=["synthetic_shifted", "synthetic_noisy"], dpi=60, labels={"synthetic_noisy": "Noisy"})
    assert [ax.get_title() for ax in res.figure.axes[:4]] == ["image", "ground truth", "synthetic_shifted", "Noisy"]
    assert res.rows == 2 and res.columns == ("image", "ground truth", "synthetic_shifted", "synthetic_noisy")
    assert len(res.figure.axes) == 2 * 4
    assert res.figure.axes[2].get_xlabel() == f"Dice {data.dice('synthetic_000', 'synthetic_shifted'):.3f}"
    png = np.asarray(Image.open(res.png).convert("RGB"), dtype=float)
    assert png.std() > 10
    assert png.shape[1] > png.shape[0]  # 4 columns, 2 rows: wider than tall
    assert res.pdf.read_bytes()[:5] == b"%PDF-"
    data3 = demo_data("3d", num_cases=1, size=24)
    res3 = fig2_panel(data3, tmp_path / "fig2_3d", axis="coronal", slice_index=5, dpi=50)
    assert len(res3.columns) == 2 + len(data3.methods)
    assert "coronal 5" in res3.figure.axes[0].get_ylabel()
    with pytest.raises(ValueError, match="unknown methods"):
        fig2_panel(data, tmp_path / "x", methods=["nope"])
    res = fig2_panel(data, tmp_path / "f1", cases=["synthetic_000"], methods=["synthetic_shifted", "synthetic_noisy"],
                     dpi=40, pdf=False, scores={"synthetic_shifted": {"synthetic_000": 0.25}}, score_name="F1")
    assert [ax.get_xlabel() for ax in res.figure.axes[2:4]] == ["F1 0.250", "F1 n/a"]


# ------------------------------------------------------------------------------------------ efficiency

VIL = {"device": "cpu", "dim": 256, "batch": 2, "max_abs_diff_vs_parallel": 1e-6, "rows": [
    {"backend": "chunkwise", "S": 1024, "fwd_bwd_s": 0.05, "peak_mb": 300.0},
    {"backend": "chunkwise", "S": 4096, "fwd_bwd_s": 0.15, "peak_mb": 500.0},
    {"backend": "chunkwise", "S": 16384, "fwd_bwd_s": 0.36, "peak_mb": 900.0},
    {"backend": "parallel", "S": 1024, "fwd_bwd_s": 0.4, "peak_mb": 700.0},
    {"backend": "parallel", "S": 4096, "fwd_bwd_s": 5.0, "peak_mb": 5800.0},
]}
STEP = {"device": "cpu", "rows": [
    {"model": m, "dim": d, "size": s, "batch": 2, "params": p, "step_s": t, "peak_mb": mb}
    for (m, p, t, mb) in (("resenc", 20_000_000, 7.3, 1700.0), ("bot", 25_000_000, 3.8, 2100.0))
    for d, s in ((2, [256, 256]), (3, [32, 96, 96]))
] + [{"model": "enc", "dim": 2, "size": [256, 256], "batch": 2, "params": None, "step_s": None, "peak_mb": None,
      "error": "out of memory"}]}


def test_efficiency_tables_and_plots(tmp_path: Path) -> None:
    (tmp_path / "vil.json").write_text(json.dumps(VIL))
    t = vil_scaling_table(tmp_path / "vil.json")
    assert list(t.index) == [1024, 4096, 16384]
    assert t.loc[4096, ("fwd_bwd_s", "parallel")] == 5.0
    assert np.isnan(t.loc[16384, ("peak_mb", "parallel")])  # not run at that size: a gap, not a number
    fig = plot_vil_scaling(VIL, tmp_path / "vil")
    assert len(fig.axes) == 2 and (tmp_path / "vil.png").stat().st_size > 1000
    assert len(fig.axes[0].lines) == 2

    s = train_step_table(STEP)
    assert list(s.columns) == ["model", "dim", "size", "batch", "params (M)", "step_s", "peak_mb"]
    assert s.loc[0, "params (M)"] == 20.0 and s.loc[1, "size"] == "32×96×96"
    assert s.iloc[-1][["params (M)", "step_s", "peak_mb"]].isna().all()  # did not finish: NaN, not a number
    fig = plot_train_step(STEP, tmp_path / "step")
    assert len(fig.axes) == 3 and (tmp_path / "step.pdf").is_file()
    heights = [p.get_height() for p in fig.axes[0].patches]  # 3 models x 2 configurations
    assert len(heights) == 6 and sorted(h for h in heights if np.isfinite(h)) == [3.8, 3.8, 7.3, 7.3]


def test_benchmark_schema_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": [{"backend": "chunkwise", "S": "big", "fwd_bwd_s": 1, "peak_mb": 1}]}))
    with pytest.raises(ValueError, match=r"bad\.json.*'S'"):
        load_benchmark(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_benchmark(bad)
    with pytest.raises(ValueError, match="rows must be"):
        load_benchmark({"rows": [{"x": 1}]})


def test_paper_table_reads_the_notebook_results_layout(tmp_path):
    import numpy as np

    from xlstm_unet.figures import NOT_RUN, paper_table

    scores = {"xlstm_enc": [0.9, 0.8, 0.7], "nnunet": [0.6, 0.5, 0.65]}
    for method, vals in scores.items():
        d = tmp_path / "endoscopy" / "Dataset702_EndoVis17" / method
        d.mkdir(parents=True)
        d.joinpath("per_case.csv").write_text(
            "case,dice_mean,nsd_mean\n" + "".join(f"c{i},{v},{v}\n" for i, v in enumerate(vals)))
    t = paper_table("1", tmp_path)
    ds = "Dataset702_EndoVis17"
    want = f"{np.mean(scores['nnunet']):.4f} ± {np.std(scores['nnunet']):.4f}"
    assert t.loc["nnunet", (ds, "dice_mean", "measured")] == want
    assert t.loc["nnunet", (ds, "dice_mean", "paper")] == "0.6264 ± 0.3024"  # Table 1, endoscopy DSC
    assert t.loc["umamba_bot", (ds, "dice_mean", "measured")] == NOT_RUN
    # blocks without results: every measured cell "not run", never a number
    assert (t["abdomen_mri_2d"].xs("measured", axis=1, level=1) == NOT_RUN).all().all()
    assert t.loc["xlstm_enc", (ds, "dice_mean", "p vs xlstm_enc")] == "ref"
    with pytest.raises(ValueError, match="unknown table"):
        paper_table("9", tmp_path)


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    import os

    from xlstm_unet.figures import save_table

    old = os.umask(0o022)
    try:
        paths = save_table(pd.DataFrame({"a": [1]}), tmp_path / "t")
    finally:
        os.umask(old)
    for p in paths.values():
        assert p.stat().st_mode & 0o777 == 0o644, oct(p.stat().st_mode)  # not mkstemp's 0600


def test_atomic_write_replaces_on_success_and_leaves_the_old_file_on_error(tmp_path):
    from xlstm_unet._io import atomic_write

    dest = tmp_path / "r.json"
    dest.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_write(dest) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".r.json.")
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert dest.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    with atomic_write(dest, suffix=".png") as tmp:
        assert tmp.suffix == ".png"
        tmp.write_text("new")
    assert dest.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_replace_path_swaps_files_and_folders_without_leftovers(tmp_path):
    from xlstm_unet._io import replace_path

    new, dest = tmp_path / ".new", tmp_path / "out"
    new.mkdir()
    (new / "a.txt").write_text("new")
    replace_path(new, dest)  # no dest yet: a plain rename
    assert (dest / "a.txt").read_text() == "new" and not new.exists()
    new.mkdir()
    (new / "b.txt").write_text("newer")
    replace_path(new, dest)  # an existing folder is replaced as a whole
    assert sorted(p.name for p in dest.iterdir()) == ["b.txt"]
    (tmp_path / ".f").write_text("file")
    (tmp_path / "g").write_text("old")
    replace_path(tmp_path / ".f", tmp_path / "g")
    assert (tmp_path / "g").read_text() == "file" and sorted(p.name for p in tmp_path.iterdir()) == ["g", "out"]


def test_saved_pdf_has_no_creation_date_so_the_same_figure_gives_the_same_bytes(tmp_path):
    import time

    from matplotlib.figure import Figure

    from xlstm_unet._io import save_figure

    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    first = save_figure(fig, tmp_path / "a", dpi=50)["pdf"].read_bytes()
    time.sleep(1.1)  # a creation date would differ by now
    assert save_figure(fig, tmp_path / "a", dpi=50)["pdf"].read_bytes() == first
    assert b"CreationDate" not in first
