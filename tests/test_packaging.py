"""The project's contracts: dependencies in sync, CI entry point, committed notebooks clean."""

from __future__ import annotations

import ast
import importlib.util
import json
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


def test_committed_notebooks_are_what_build_notebooks_writes(tmp_path: Path):
    spec = importlib.util.spec_from_file_location("build_notebooks", REPO_ROOT / "notebooks" / "build_notebooks.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    builder.main(["--out", str(tmp_path)])
    built = sorted(p.name for p in tmp_path.glob("*.ipynb"))
    assert built == [p.name for p in NOTEBOOKS], "every committed notebook is generated, none is hand-written"
    for name in built:
        assert json.loads((tmp_path / name).read_text()) == json.loads((REPO_ROOT / "notebooks" / name).read_text()), \
            f"notebooks/{name} differs from what notebooks/build_notebooks.py writes: edit the builder and re-run it"


# ------------------------------------------------------------------------------------------------------------
# No import cycle between xlstm_unet modules. An edge A -> B is an import of B that runs while A is imported:
# statements at module level, also inside module-level if/try/with/for blocks and class bodies, but not inside
# `if TYPE_CHECKING:` (never runs) or function bodies (run later, when every module is initialised). The implicit
# import of a submodule's parent package is not an edge: Python initialises the parent first, so it is always
# complete or in progress, the standard package layout.


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_time_imports(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_time_imports(node.body)
            yield from _import_time_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for part in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _import_time_imports(part)
        elif isinstance(node, (ast.With, ast.For, ast.While, ast.ClassDef)):
            yield from _import_time_imports(node.body)
            yield from _import_time_imports(getattr(node, "orelse", []))


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at import time (see above); names are dotted."""
    root = package_dir.parent
    modules: dict[str, Path] = {}
    for f in sorted(package_dir.rglob("*.py")):
        parts = f.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph: dict[str, set[str]] = {}
    for name, f in modules.items():
        is_pkg = f.name == "__init__.py"
        edges: set[str] = set()
        for node in _import_time_imports(ast.parse(f.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_import_graph_finds_cycles_and_ignores_lazy_imports(tmp_path: Path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import x\n")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n"
                              "def f():\n    from pkg.b import y\nx = 1\n")
    (pkg / "b.py").write_text("from .sub import c\ny = 2\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("try:\n    from ..a import x\nexcept ImportError:\n    pass\n")
    graph = import_graph(pkg)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": set(), "pkg.b": {"pkg.sub.c"}, "pkg.sub": set(),
                     "pkg.sub.c": {"pkg.a"}}
    assert find_cycle(graph) is None
    (pkg / "a.py").write_text("from pkg import b\nx = 1\n")  # now a -> b -> sub.c -> a at import time
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]


def test_no_import_cycle_between_xlstm_unet_modules():
    graph = import_graph(REPO_ROOT / "xlstm_unet")
    assert len(graph) > 20 and "xlstm_unet.colors" in graph["xlstm_unet.viewer"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_modules_stay_under_600_lines():
    long = {str(p.relative_to(REPO_ROOT)): n for p in sorted((REPO_ROOT / "xlstm_unet").rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert not long, f"modules over 600 lines (split them along a seam): {long}"
