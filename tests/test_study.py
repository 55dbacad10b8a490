"""`xlstm-unet tables`: study tables and figures regenerated from committed results (a small fixture)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from xlstm_unet.cli import main
from xlstm_unet.metrics import holm
from xlstm_unet.study import load_runs, study_numbers, study_table

DATASET = "Dataset901_Phantom2D"


def _seed_run(root: Path, method: str, seed: int, scores: dict[str, float], train_s: float) -> Path:
    d = root / "phantom" / DATASET / method / f"seed{seed}"
    d.mkdir(parents=True)
    cases = sorted(scores)
    pd.DataFrame({"case": cases, "dice_mean": [scores[c] for c in cases],
                  "nsd_mean": [min(1.0, scores[c] + 0.05) for c in cases]}).to_csv(d / "per_case.csv", index=False)
    pd.DataFrame({"epoch": [0, 1], "train_loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "pseudo_dice": [0.2, 0.4],
                  "ema_pseudo_dice": [0.2, 0.22], "lr": [0.01, 0.005], "epoch_s": [train_s / 2] * 2,
                  "epoch_cpu_s": [train_s] * 2, "peak_mem_mb": [100.0, 100.0]}).to_csv(d / "training_curve.csv",
                                                                                       index=False)
    run = {"params": {"method": method, "dataset": DATASET, "trainer": "t", "configuration": "2d", "fold": "all",
                      "split_seed": 0, "seed": seed},
           "budget": {"epochs": 2, "iterations_per_epoch": 1, "batch_size": 2, "patch_size": [64, 64]},
           "protocol": "generic", "timing": {"train_s": train_s, "train_cpu_s": 2 * train_s},
           "code": {"commit": "abc", "dirty": False}}
    (d / "run.json").write_text(json.dumps(run))
    return d


@pytest.fixture()
def study(tmp_path: Path) -> tuple[Path, dict]:
    rng = np.random.default_rng(0)
    cases = [f"phantom2d_{k:03d}" for k in range(8, 20)]
    truth = {"xlstm_enc": 0.7, "nnunet": 0.6, "unetr": 0.68}
    scores = {}
    for method, seeds in (("nnunet", [0, 1, 2]), ("xlstm_enc", [0, 1]), ("unetr", [0])):
        for s in seeds:
            scores[(method, s)] = {c: float(np.clip(truth[method] + rng.normal(0, 0.08), 0, 1)) for c in cases}
            _seed_run(tmp_path, method, s, scores[(method, s)], 3600.0 * (1 + s))
    # an unfinished run (no run.json) does not count
    (tmp_path / "phantom" / DATASET / "unetr" / "seed1").mkdir()
    return tmp_path, scores


def test_numbers_match_an_independent_computation(study):
    root, scores = study
    runs = load_runs(root)
    assert sorted(runs.groupby("method")["seed"].count().items()) == [("nnunet", 3), ("unetr", 1),
                                                                       ("xlstm_enc", 2)]
    nums = study_numbers(root, "phantom", n_boot=2000)
    avg = {m: pd.DataFrame({s: pd.Series(v) for (mm, s), v in scores.items() if mm == m}).mean(axis=1)
           for m in ("nnunet", "xlstm_enc", "unetr")}
    ref = avg["xlstm_enc"]
    for m, a in avg.items():
        assert nums.loc[m, "dice_mean_mean"] == pytest.approx(a.mean())
        assert nums.loc[m, "dice_mean_std"] == pytest.approx(a.std(ddof=0))
        assert nums.loc[m, "dice_mean_median"] == pytest.approx(a.median())
        seed_means = [np.mean(list(v.values())) for (mm, s), v in scores.items() if mm == m]
        assert nums.loc[m, "dice_mean_seed_std"] == pytest.approx(np.std(seed_means))
    p = {m: stats.wilcoxon(avg[m] - ref).pvalue for m in ("nnunet", "unetr")}
    assert nums.loc["nnunet", "dice_mean_p"] == pytest.approx(p["nnunet"])
    np.testing.assert_allclose(nums.loc[["nnunet", "unetr"], "dice_mean_p_holm"], holm([p["nnunet"], p["unetr"]]))
    diff = (avg["nnunet"] - ref).mean()
    assert nums.loc["nnunet", "dice_mean_diff"] == pytest.approx(diff)
    assert nums.loc["nnunet", "dice_mean_ci_low"] < diff < nums.loc["nnunet", "dice_mean_ci_high"]
    assert nums.loc["nnunet", "train_h"] == pytest.approx(2.0)  # median over seeds of 1, 2, 3 h
    assert nums.loc["xlstm_enc", "seeds"] == 2


def test_quiet_step_cost_from_a_benchmark_of_the_experiments_own_plans(study):
    root, _ = study
    row = dict(dim=2, size=[64, 64], batch=2, params=1_000_000, peak_mb=10.0)

    def bench(configuration: str, dataset: str, step_s: float) -> dict:
        return {"device": "cpu", "plans": {"file": f"/x/nnUNet_preprocessed/{dataset}/nnUNetPlans.json",
                                           "configuration": configuration},
                "rows": [{"model": "nnunet", "step_s": step_s, **row}, {"model": "xlstm_enc", "step_s": 2.0, **row}]}
    (root / "a_other_configuration.json").write_text(json.dumps(bench("2d_sp2x2", DATASET, 9.0)))
    (root / "b_other_dataset.json").write_text(json.dumps(bench("2d", "Dataset902_Other", 9.0)))
    (root / "c_not_a_benchmark.json").write_text("[1, 2]")
    assert study_numbers(root, "phantom", n_boot=200)["step_s"].isna().all()  # none measured at these plans
    (root / "d_budget.json").write_text(json.dumps(bench("2d", DATASET, 0.9)))
    nums = study_numbers(root, "phantom", n_boot=200)
    assert nums.attrs["step_cost_file"] == "d_budget.json"
    assert nums.loc["nnunet", "step_s"] == 0.9 and np.isnan(nums.loc["unetr", "step_s"])  # unetr: no row
    assert nums.loc["xlstm_enc", "step_h"] == pytest.approx(2.0 * 2 / 3600)  # 2 epochs x 1 iteration
    table = study_table(nums)
    assert table["s/step (quiet)"].to_dict() == {"nnU-Net": "0.90", "UNETR": "", "xLSTM-UNet Enc": "2.00"}
    assert "train h (CPU)" in table and "train h (quiet)" not in table  # UNETR has no step cost
    both = nums.drop(index="unetr")  # every method has a step cost: the quiet hours replace the CPU hours
    both["step_h"] = both["step_s"] * 1000 / 3600  # as for a 1000-step run
    table = study_table(both)
    assert table["train h (quiet)"].to_dict() == {"nnU-Net": "0.25", "xLSTM-UNet Enc": "0.56"}
    assert "train h (CPU)" not in table


def test_statement_names_differences_within_the_seed_spread():
    from xlstm_unet.study import _statement

    m = "dice_mean"
    numbers = pd.DataFrame({"seeds": [3, 2, 1, 1], "n": [50] * 4, f"{m}_mean": [0.50, 0.53, 0.49, 0.40],
                            f"{m}_diff": [0.0, 0.03, -0.01, -0.10], f"{m}_p_holm": [np.nan, 0.001, 0.5, 0.001],
                            f"{m}_seed_std": [0.02, 0.04, 0.0, 0.0]},
                           index=pd.Index(["nnunet", "xlstm_bot", "unetr", "segresnet"], name="method"))
    numbers.attrs.update(metrics=[m], reference="nnunet")
    text = _statement(numbers)
    # |0.03| < 0.04 (its own spread), |-0.01| < 0.02 (the reference's); 0.10 is beyond both; a single seed has none
    assert "seeds (one more seed could reverse it, whatever the p-value): xLSTM-UNet Bot, UNETR." in text
    assert "Significantly better than nnU-Net (paired Wilcoxon, Holm-corrected p < 0.05): xLSTM-UNet Bot." in text
    numbers[f"{m}_seed_std"] = [0.0, 0.0, 0.0, 0.0]
    numbers["seeds"] = 1
    assert "one more seed" not in _statement(numbers)


def test_too_few_cases_for_a_paired_test_rank_nothing():
    from xlstm_unet.study import _min_testable_n, _min_wilcoxon_p, _statement, study_table

    # the bound against scipy's exact test: every difference of one sign gives its smallest p-value
    for n in (1, 2, 5, 6, 8):
        d = np.arange(1.0, n + 1)
        assert _min_wilcoxon_p(n) == pytest.approx(stats.wilcoxon(d, method="exact").pvalue if n > 1 else 1.0)
    assert _min_testable_n(0.05) == 6
    m = "f1"
    numbers = pd.DataFrame({"seeds": [1, 1], "n": [2, 2], f"{m}_mean": [0.5, 0.8], f"{m}_std": [0.1, 0.1],
                            f"{m}_median": [0.5, 0.8], f"{m}_seed_std": [0.0, 0.0], f"{m}_diff": [0.0, 0.3],
                            f"{m}_ci_low": [np.nan, 0.2], f"{m}_ci_high": [np.nan, 0.4], f"{m}_p": [np.nan, 0.5],
                            f"{m}_p_holm": [np.nan, 0.5], "train_cpu_h": [1.0, 1.0], "step_s": [np.nan] * 2},
                           index=pd.Index(["xlstm_enc", "nnunet"], name="method"))
    numbers.attrs.update(metrics=[m], reference="xlstm_enc")
    text = _statement(numbers)
    assert "2 test cases: too few for a paired test" in text and "fewer than 6 cases" in text
    assert "Best" not in text and "significantly" not in text
    row = study_table(numbers).loc["nnU-Net"]
    assert row[f"{m} Δ vs xLSTM-UNet Enc [95% CI]"] == "+0.300" and row[f"{m} p (Holm)"] == "—"
    assert row[f"{m} mean ± std"] == "0.800 ± 0.100"
    numbers["n"] = 1  # one case: no spread to show
    assert study_table(numbers).loc["nnU-Net", f"{m} mean ± std"] == "0.800"
    numbers["n"] = 6
    assert "Best mean f1: nnU-Net (0.800)." in _statement(numbers)
    assert study_table(numbers).loc["nnU-Net", f"{m} Δ vs xLSTM-UNet Enc [95% CI]"] == "+0.300 [+0.200, +0.400]"


def test_reproduction_compares_each_rerun_with_the_studys_own_run(study, tmp_path):
    from xlstm_unet.study import reproduction

    root, scores = study
    first = root / "phantom" / DATASET / "nnunet"
    (first / "seed0" / "predictions").mkdir()
    for name in ("a.png", "b.png"):
        (first / "seed0" / "predictions" / name).write_bytes(name.encode())
    rerun = tmp_path / "rerun"
    for seed in (0, 1):
        shutil.copytree(first / f"seed{seed}", rerun / "phantom" / DATASET / "nnunet" / f"seed{seed}")
    (rerun / "phantom" / DATASET / "nnunet" / "seed0" / "predictions" / "b.png").write_bytes(b"other")
    changed = rerun / "phantom" / DATASET / "nnunet" / "seed1" / "per_case.csv"
    df = pd.read_csv(changed)
    df.loc[3, "dice_mean"] += 0.25
    df.to_csv(changed, index=False)
    _seed_run(rerun, "unetr", 7, {"x": 0.5}, 1.0)  # no such run in the study: left out
    t = reproduction(root, rerun).set_index("seed")
    assert list(t.index) == [0, 1] and set(t["metric"]) == {"dice_mean"}
    assert t.loc[0, "study"] == t.loc[0, "rerun"] == pytest.approx(np.mean(list(scores[("nnunet", 0)].values())))
    assert t.loc[0, "same_cases"] == 12 and t.loc[0, "max_case_diff"] == 0
    assert (t.loc[0, "masks"], t.loc[0, "identical_masks"]) == (2, 1)
    assert t.loc[1, "same_cases"] == 11 and t.loc[1, "max_case_diff"] == pytest.approx(0.25)
    assert t.loc[1, "rerun"] - t.loc[1, "study"] == pytest.approx(0.25 / 12)
    assert reproduction(root, tmp_path / "nothing").empty


@pytest.mark.slow
def test_tables_command_regenerates_tables_and_readme(study, capsys):
    root, _ = study
    assert main(["tables", str(root), "--no-figures", "--n-boot", "500"]) == 0
    md = (root / "phantom" / "table.md").read_text()
    assert "| xLSTM-UNet Enc | 2 | 12 |" in md and "ref" in md
    readme = (root / "README.md").read_text()
    assert "Best mean dice_mean: xLSTM-UNet Enc" in readme or "Best mean dice_mean: UNETR" in readme
    assert "per_case.md" not in readme and not (root / "phantom" / "per_case.md").exists()  # 12 cases > 10
    table = pd.read_csv(root / "phantom" / "table.csv", index_col="method")
    assert set(table.index) == {"nnunet", "xlstm_enc", "unetr"}
    assert "Reproduction" not in readme and not (root / "reproduction.csv").exists()  # no re-runs
    shutil.copytree(root / "phantom" / DATASET / "unetr" / "seed0",
                    root.parent / f"{root.name}_rerun" / "phantom" / DATASET / "unetr" / "seed0")
    assert main(["tables", str(root), "--no-figures", "--n-boot", "500"]) == 0
    readme = (root / "README.md").read_text()
    assert "## Reproduction" in readme and "at the commit of the run it repeats" in readme
    assert pd.read_csv(root / "reproduction.csv")[["method", "same_cases"]].values.tolist() == [["unetr", 12]]
    run_json = root.parent / f"{root.name}_rerun" / "phantom" / DATASET / "unetr" / "seed0" / "run.json"
    run = json.loads(run_json.read_text())
    run["code"]["commit"] = "0123456789abcdef"  # a re-run at a later commit
    run_json.write_text(json.dumps(run))
    assert main(["tables", str(root), "--no-figures", "--n-boot", "500"]) == 0
    readme = (root / "README.md").read_text()
    assert "each at the commit in its `rerun_commit` column" in readme and "| abc | 0123456 |" in readme


def test_experiments_appear_in_the_order_the_study_ran_them(study):
    root, _ = study
    shutil.copytree(root / "phantom", root / "aaa_later")  # alphabetically first, finished later
    for exp, day in (("phantom", "01"), ("aaa_later", "02")):
        for run_file in (root / exp).glob("*/*/seed*/run.json"):
            run = json.loads(run_file.read_text())
            run["finished"] = f"2026-12-{day}T10:00:00+0000"
            run_file.write_text(json.dumps(run))
    assert main(["tables", str(root), "--no-figures", "--n-boot", "200"]) == 0
    readme = (root / "README.md").read_text()
    assert readme.index("## phantom (") < readme.index("## aaa_later (")
    assert "\n\n## aaa_later (" in readme  # a blank line before each section


@pytest.mark.slow
def test_tables_figures_with_the_raw_images(study, nnunet_root, tmp_path, monkeypatch):
    from xlstm_unet import figures
    from xlstm_unet.datasets import convert

    root, scores = study
    panels = []
    monkeypatch.setattr(figures, "fig2_panel", lambda *a, _f=figures.fig2_panel, **k: panels.append(_f(*a, **k))
                        or panels[-1])
    raw = convert("phantom2d", out_root=tmp_path / "raw", dataset_id=901, n_train=8, n_test=12, shape=(64, 64),
                  progress=False)
    for seed_dir in sorted((root / "phantom" / DATASET).glob("*/seed*")):  # predictions: the ground truth itself
        if (seed_dir / "run.json").is_file():
            shutil.copytree(raw / "labelsTs", seed_dir / "predictions")
    assert main(["tables", str(root), "--raw-root", str(tmp_path / "raw"), "--n-boot", "200"]) == 0
    for name in ("fig2_panel.png", "training_curves.png", "score_vs_time.png"):
        assert (root / "phantom" / name).stat().st_size > 1000
    assert not (root / "phantom" / "fig2_panel.pdf").exists()  # the committed report keeps the image panel as PNG
    # under each prediction: the shown run's (lowest seed's) score of the table's metric, not a recomputed Dice
    (panel,) = panels
    case = panel.figure.axes[0].get_ylabel()
    titles = [ax.get_title() for ax in panel.figure.axes[:len(panel.columns)]]
    nnunet = panel.figure.axes[titles.index("nnU-Net")]
    assert nnunet.get_xlabel() == f"DSC {scores[('nnunet', 0)][case]:.3f}"
    assert "fig2_panel.png" in (root / "README.md").read_text()


def test_accuracy_against_cost_joins_the_study_with_the_benchmark(study, tmp_path):
    from xlstm_unet.efficiency import accuracy_cost_report

    root, scores = study
    row = dict(size=[64, 64], batch=2, peak_mb=100.0)
    bench = {"device": "cpu", "rows": [
        {"model": "nnunet", "dim": 2, "params": 20_000_000, "flops": 7e9, "step_s": 0.8, **row},
        {"model": "nnunet", "dim": 3, "params": 30_000_000, "flops": 9e10, "step_s": 5.0, **row},  # other dim
        {"model": "unetr", "dim": 2, "params": None, "flops": None, "step_s": None, "not_run": "failed",
         "error": "out of memory", **row},
        {"model": "segresnet", "dim": 2, "params": 6_000_000, "flops": 5e9, "step_s": 0.6, **row},  # no results
        {"model": "enc_stub", "dim": 2, "params": 1, "flops": 1, "step_s": 1.0, **row},  # not a method: left out
    ]}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    out = tmp_path / "eff"
    reports = accuracy_cost_report(root, tmp_path / "bench.json", out_dir=out)
    t = reports["phantom"]
    assert list(t.index) == ["nnunet", "unetr", "xlstm_enc", "segresnet"]  # the study's order, then the rest
    # the score: the mean over cases of the seed-averaged per-case Dice, computed here independently
    nn = np.mean([np.mean([scores[("nnunet", s)][c] for s in range(3)]) for c in scores[("nnunet", 0)]])
    assert t.loc["nnunet", "score"] == pytest.approx(nn)
    assert t.loc["nnunet", "params (M)"] == 20.0 and t.loc["nnunet", "GFLOP"] == 7.0  # the 2D row
    assert t.loc["nnunet", "train_h"] == 2.0  # median of 1, 2, 3 h
    assert np.isnan(t.loc["xlstm_enc", "step_s"])  # results, no benchmark row
    assert np.isnan(t.loc["unetr", "step_s"]) and t.loc["unetr", "not_run"] == "out of memory"
    assert np.isnan(t.loc["segresnet", "score"]) and t.loc["segresnet", "step_s"] == 0.6
    assert (out / "accuracy_vs_cost_phantom.png").stat().st_size > 5000
    assert (out / "accuracy_vs_cost_phantom.csv").is_file()
    assert accuracy_cost_report(tmp_path / "nothing", tmp_path / "bench.json") == {}


def test_small_sets_get_a_per_case_table_averaged_over_seeds(tmp_path):
    _seed_run(tmp_path, "xlstm_enc", 0, {"a": 0.5, "b": 0.8}, 10.0)
    _seed_run(tmp_path, "nnunet", 0, {"a": 0.6, "b": 0.9}, 10.0)
    _seed_run(tmp_path, "nnunet", 1, {"a": 0.7, "b": 0.7}, 10.0)
    assert main(["tables", str(tmp_path), "--no-figures", "--n-boot", "100"]) == 0
    per_case = pd.read_csv(tmp_path / "phantom" / "per_case.csv", index_col="case")
    assert per_case.loc["a", "nnU-Net"] == pytest.approx(0.65) and per_case.loc["b", "nnU-Net"] == pytest.approx(0.8)
    md = (tmp_path / "phantom" / "per_case.md").read_text()
    assert "| a | 0.650 | 0.500 |" in md and "| b | 0.800 | 0.800 |" in md
    assert md in (tmp_path / "README.md").read_text()
