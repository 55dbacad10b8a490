"""``xlstm-unet run-all``: continues past a failing notebook, reports it, skips done work, --force re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import yaml

from xlstm_unet.batch import Status, format_summary, is_done, load_config, run_all
from xlstm_unet.cli import main


def _notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('tag: str = "x"  # written into the output file')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


@pytest.fixture()
def batch(tmp_path: Path) -> Path:
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    # runs in base_dir (tmp_path): appends its tag to out_<tag>.txt, so re-runs are visible as extra lines
    _notebook(nbs / "ok.ipynb", 'with open(f"out_{tag}.txt", "a") as fh:\n    fh.write(tag + "\\n")')
    _notebook(nbs / "fail.ipynb", 'raise ValueError(f"boom {tag}")')
    cfg = {
        "base_dir": ".",
        "output_dir": "executed",
        "parameters": {"tag": "default"},
        "experiments": [
            {"name": "bad", "notebook": "nbs/fail.ipynb", "parameters": {"tag": "42"}},
            {"name": "a", "notebook": "nbs/ok.ipynb", "parameters": {"tag": "a"}, "results": ["out_a.txt"]},
            {"name": "nores", "notebook": "nbs/ok.ipynb", "parameters": {"tag": "n"}, "results": ["missing.txt"]},
        ],
    }
    path = tmp_path / "batch.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_run_all_continues_skips_and_forces(batch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = batch.parent
    # 1) first run through the CLI: the failure is reported, the later experiments still run
    assert main(["run-all", str(batch)]) == 1
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.strip().splitlines()[:-1]}
    assert "FAILED: ValueError: boom 42" in lines["bad"]
    assert " ok (" in lines["a"]
    assert "FAILED: missing results:" in lines["nores"] and "missing.txt" in lines["nores"]
    assert out.strip().splitlines()[-1] == "1 ok, 0 skipped, 2 failed"
    assert (root / "out_a.txt").read_text() == "a\n"
    assert (root / "out_n.txt").read_text() == "n\n"  # ran in base_dir
    # executed notebooks kept, the failed one with its error
    failed_nb = nbformat.read(root / "executed" / "bad.ipynb", as_version=4)
    assert "boom 42" in json.dumps(failed_nb.cells[-1].outputs)
    assert (root / "executed" / "a.done.json").is_file()
    assert not (root / "executed" / "bad.done.json").exists()

    # 2) second run: "a" is done and skipped (a failed experiment is never "done": see the marker check above)
    res = run_all(batch, only=["a"])
    assert [(r.name, r.status) for r in res] == [("a", Status.SKIPPED)]
    assert (root / "out_a.txt").read_text() == "a\n"
    assert "skipped" in format_summary(res)

    # 3) --force --only a: re-runs it
    assert main(["run-all", str(batch), "--force", "--only", "a"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "1 ok, 0 skipped, 0 failed"
    assert (root / "out_a.txt").read_text() == "a\na\n"


def test_done_depends_on_parameters_and_results(batch: Path) -> None:
    cfg = load_config(batch)
    exp = next(e for e in cfg.experiments if e.name == "a")
    assert exp.parameters == {"tag": "a"} and exp.notebook == batch.parent / "nbs" / "ok.ipynb"
    assert not is_done(cfg, exp)
    out = cfg.output_dir
    out.mkdir()
    (out / "a.ipynb").write_text("{}")
    (out / "a.done.json").write_text(json.dumps({"notebook": str(exp.notebook), "parameters": {"tag": "a"}}))
    assert not is_done(cfg, exp)  # results file missing
    (batch.parent / "out_a.txt").write_text("a\n")
    assert is_done(cfg, exp)
    (out / "a.done.json").write_text(json.dumps({"notebook": str(exp.notebook), "parameters": {"tag": "old"}}))
    assert not is_done(cfg, exp)  # parameters changed


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("experiments: []\noutput_dir: o\n", "non-empty list"),
        ("output_dir: o\nexperiments:\n  - {name: a, notebook: n.ipynb}\n  - {name: a, notebook: n.ipynb}\n",
         "duplicate name 'a'"),
        ("output_dir: o\nfoo: 1\nexperiments:\n  - {name: a, notebook: n.ipynb}\n", "unknown keys"),
        ("output_dir: o\nexperiments:\n  - {name: 'a b', notebook: n.ipynb}\n", "must match"),
        ("experiments:\n  - {name: a, notebook: n.ipynb}\n", "missing 'output_dir'"),
        (": : :\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_file(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_missing_notebook_and_unknown_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("base_dir: .\noutput_dir: o\nexperiments:\n  - {name: a, notebook: nope.ipynb}\n")
    res = run_all(path)
    assert res[0].status is Status.FAILED and "nope.ipynb not found" in res[0].error
    assert main(["run-all", str(path), "--only", "zzz"]) == 2
    assert "--only names ['zzz']" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["cpu_real.yaml", "gpu_paper.yaml"])
def test_example_configs_load(name: str) -> None:
    from xlstm_unet.paths import REPO_ROOT

    cfg = load_config(REPO_ROOT / "experiments" / name)
    assert cfg.base_dir == REPO_ROOT
    for exp in cfg.experiments:
        assert exp.notebook.parent == REPO_ROOT / "notebooks" and exp.notebook.suffix == ".ipynb"
        assert {"methods", "epochs", "device", "output_dir"} <= set(exp.parameters)


@pytest.mark.parametrize("name", ["cpu_real.yaml", "gpu_paper.yaml"])
def test_example_configs_use_the_notebooks_parameter_names(name: str) -> None:
    import papermill as pm

    from xlstm_unet.paths import REPO_ROOT

    cfg = load_config(REPO_ROOT / "experiments" / name)
    for exp in cfg.experiments:
        known = set(pm.inspect_notebook(str(exp.notebook)))
        assert set(exp.parameters) <= known, f"{exp.name}: unknown {set(exp.parameters) - known}"


@pytest.mark.parametrize(("message", "calls", "status"), [
    ("Kernel died before replying to kernel_info", 2, Status.OK),  # started again, then ran
    ("Kernel didn't respond in 60 seconds", 2, Status.OK),
    ("boom in a cell", 1, Status.FAILED),  # the notebook's own error: never run twice
])
def test_a_kernel_that_did_not_start_is_started_again(batch: Path, monkeypatch: pytest.MonkeyPatch, message: str,
                                                      calls: int, status: Status) -> None:
    import papermill as pm

    import xlstm_unet.batch as batch_mod

    seen = []

    def flaky(src, out, **kw):  # fails the first call, then does what the notebook would
        seen.append(src)
        if len(seen) == 1:
            raise RuntimeError(message)
        (batch.parent / "out_a.txt").write_text("a\n")
        Path(out).write_text("{}")

    monkeypatch.setattr(pm, "execute_notebook", flaky)
    monkeypatch.setattr(batch_mod.time, "sleep", lambda s: None)
    cfg = load_config(batch)
    exp = next(e for e in cfg.experiments if e.name == "a")
    res = batch_mod.run_notebook(cfg, exp)
    assert (len(seen), res.status) == (calls, status)
    assert (status is Status.FAILED) == (message in (res.error or ""))


@pytest.mark.slow
def test_log_output_streams_the_notebooks_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "nbs").mkdir()
    _notebook(tmp_path / "nbs" / "talk.ipynb", 'print(f"epoch 1 of {tag}", flush=True)')
    cfg = {"base_dir": ".", "output_dir": "executed",
           "experiments": [{"name": "talk", "notebook": "nbs/talk.ipynb", "parameters": {"tag": "run-7"}}]}
    (tmp_path / "batch.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run-all", str(tmp_path / "batch.yaml")]) == 0
    assert "epoch 1 of run-7" not in capsys.readouterr().out  # without the flag: only in the executed notebook
    assert main(["run-all", str(tmp_path / "batch.yaml"), "--force", "--log-output"]) == 0
    assert "epoch 1 of run-7" in capsys.readouterr().out  # streamed while the notebook runs
