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


# ----------------------------------------------------------------------------------------------- docs say what is

_SHA = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")
_TEST_COUNT = re.compile(r"\b\d+\s+(?:passed|failed|skipped|deselected|tests)\b", re.IGNORECASE)


def _prose_files() -> list[Path]:
    return [REPO_ROOT / "README.md", REPO_ROOT / "benchmarks" / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def _code_comments() -> list[tuple[Path, str]]:
    """Comments and docstrings of the package and the benchmark scripts."""
    import ast
    import io
    import tokenize

    out = []
    for path in sorted([*(REPO_ROOT / "xlstm_unet").rglob("*.py"), *(REPO_ROOT / "benchmarks").glob("*.py")]):
        src = path.read_text()
        out += [(path, t.string) for t in tokenize.generate_tokens(io.StringIO(src).readline)
                if t.type == tokenize.COMMENT]
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    out.append((path, doc))
    return out


def test_readme_is_a_front_page():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 10 * 1024
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):  # every relative link resolves
        if not link.startswith("http"):
            assert (REPO_ROOT / link).exists(), link


def test_no_commit_hashes_or_test_counts_in_docs_and_comments():
    texts = [(p, p.read_text()) for p in _prose_files()] + _code_comments()
    for path, text in texts:
        assert not _SHA.search(text), f"{path}: commit hash {_SHA.search(text).group()!r}"
        assert not _TEST_COUNT.search(text), f"{path}: test count {_TEST_COUNT.search(text).group()!r}"
    assert _SHA.search("landed at 8bc9857 today") and _TEST_COUNT.search("332 passed")  # the patterns work
