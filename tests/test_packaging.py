"""The project's contracts: dependencies in sync, CI entry point, committed notebooks clean."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

from xlstm_unet.paths import REPO_ROOT

_REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse(req: str) -> tuple[str, str]:
    m = _REQ.match(req)
    assert m, req
    return _norm(m.group(1)), m.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    py_deps = dict(_parse(r) for r in pyproject["project"]["dependencies"])
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    env_deps: dict[str, str] = {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            for r in entry.get("pip", []):
                name, spec = _parse(r)
                env_deps[name] = spec
        else:
            name, spec = _parse(entry)
            if name not in ("python", "pip"):
                env_deps[name] = spec
    assert env_deps == py_deps


def test_ci_runs_make_test():
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert re.search(r"^\s*make test\s*$", ci, re.M), ci
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme


NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_committed_clean(path: Path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and "parameters" in code[0].metadata.get("tags", []), f"{path.name}: first code cell not tagged"
    for cell in code:
        assert cell.outputs == [], f"{path.name}: a cell has outputs"
        assert cell.execution_count is None, f"{path.name}: a cell has an execution count"


def test_there_are_notebooks():
    assert any(p.name == "00_quickstart.ipynb" for p in NOTEBOOKS)
