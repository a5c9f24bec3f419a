"""Imports go one way: leaf modules <- models <- losses <- io <- data <- complexity <- lit <- tasks <- cli.

Every ``import`` of the project (module level or inside a function) is read from the source
with ``ast``; a module may import its own layer or any layer below, never above, and the module
graph has no cycle. ``cat_tokenizer/__init__.py`` (the public API) may import anything and must
not be imported by the project itself.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"cat_tokenizer": ROOT / "src" / "cat_tokenizer", "cat_tasks": ROOT / "tasks"}  # tasks/ installs as cat_tasks
LAYERS = [
    ("errors", "files", "markdown", "outputs", "fingerprint", "options"),
    ("ratios", "devices", "metrics", "profiling"),
    ("models", "regions"),
    ("losses",),
    ("io",),
    ("data", "codec"),
    ("complexity",),
    ("callbacks", "lit"),
    ("tasks",),
    ("cli",),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = path
    return mods


@functools.cache
def _parse(path: Path) -> ast.Module:
    """One parse per file for the whole session (every test here walks every module)."""
    return ast.parse(path.read_text())


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that ``name`` imports (the longest known prefix of each imported name)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return "tasks" if parts[0] == "cat_tasks" else parts[1] if len(parts) > 1 else "api"


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        deps = _imports(name, path, known)
        # `from cat_tokenizer.data import x` names the package; count the submodule x when it is one
        graph[name] = {d for d in deps if not (d in ("cat_tokenizer", "cat_tasks") and _layer(name) != "api")}
    return graph


def test_every_package_folder_is_installed():
    """pyproject lists the packages by hand (tasks/ maps to cat_tasks): a new subpackage must be added there."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join([pkg, *init.parent.relative_to(folder).parts]) for pkg, folder in PACKAGES.items() for init in folder.rglob("__init__.py")}
    assert found == listed


def test_every_layer_is_ranked():
    assert {_layer(m) for m in _modules()} - {"api"} <= set(RANK)


def test_no_module_imports_a_higher_layer():
    upward = sorted(f"{m} -> {d}" for m, deps in _graph().items() if _layer(m) != "api"
                    for d in deps if _layer(d) == "api" or RANK[_layer(d)] > RANK[_layer(m)])
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_module_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep):], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_check_sees_a_planted_upward_import_and_cycle(tmp_path, monkeypatch):
    """The checker itself: a models module importing lit, and two modules importing each other, are reported."""
    pkg = tmp_path / "cat_tokenizer"
    for sub in ("models", "lit"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "lit" / "mod.py").write_text("X = 1\n")
    (pkg / "models" / "net.py").write_text("def f():\n    from cat_tokenizer.lit.mod import X\n    return X\n")
    monkeypatch.setitem(PACKAGES, "cat_tokenizer", pkg)
    monkeypatch.setitem(PACKAGES, "cat_tasks", tmp_path / "none")
    graph = _graph()
    assert graph["cat_tokenizer.models.net"] == {"cat_tokenizer.lit.mod"}
    with pytest.raises(AssertionError, match="cat_tokenizer.models.net -> cat_tokenizer.lit.mod"):
        test_no_module_imports_a_higher_layer()
    (pkg / "models" / "a.py").write_text("from cat_tokenizer.models import b\n")
    (pkg / "models" / "b.py").write_text("def g():\n    from .a import __name__ as n\n    return n\n")
    with pytest.raises(AssertionError, match="cat_tokenizer.models.a -> cat_tokenizer.models.b -> cat_tokenizer.models.a"):
        test_module_graph_has_no_cycle()


# ---------------------------------------------------------------- pluggable tasks (issue 27)
def test_the_core_imports_no_task():
    """``cat_tokenizer`` (the CLI included) never imports ``cat_tasks``: tasks plug in through the
    ``cat_tokenizer.commands`` entry points, so a new task needs no edit of the core."""
    into_tasks = sorted(f"{m} -> {d}" for m, deps in _graph().items() if m.startswith("cat_tokenizer")
                        for d in deps if d.startswith("cat_tasks"))
    assert not into_tasks, "the core imports tasks:\n" + "\n".join(into_tasks)


def test_the_core_check_sees_a_planted_task_import(tmp_path, monkeypatch):
    pkg, tasks = tmp_path / "cat_tokenizer", tmp_path / "tasks"
    (pkg / "cli").mkdir(parents=True)
    (tasks / "newtask").mkdir(parents=True)
    for init in (pkg / "__init__.py", pkg / "cli" / "__init__.py", tasks / "__init__.py", tasks / "newtask" / "__init__.py"):
        init.write_text("")
    (tasks / "newtask" / "commands.py").write_text("def run() -> int:\n    return 0\n")
    (pkg / "cli" / "tools.py").write_text("def main():\n    from cat_tasks.newtask.commands import run\n    return run()\n")
    monkeypatch.setitem(PACKAGES, "cat_tokenizer", pkg)
    monkeypatch.setitem(PACKAGES, "cat_tasks", tasks)
    with pytest.raises(AssertionError, match="cat_tokenizer.cli.tools -> cat_tasks.newtask.commands"):
        test_the_core_imports_no_task()


def test_every_command_module_is_registered_and_every_entry_loads():
    """Each public function of a commands module is an entry point of the group, and each entry
    point names a function of a commands module (pyproject.toml is the registry)."""
    import tomllib

    entries = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["cat_tokenizer.commands"]
    targets = {v for v in entries.values()}
    mods = {m: p for m, p in _modules().items() if m.endswith(".commands")}
    assert {t.split(":")[0] for t in targets} == set(mods)
    for module, path in mods.items():
        tree = _parse(path)
        public = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                      and getattr(n.targets[0], "id", "") == "__all__")
        functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert {f"{module}:{f}" for f in public if f in functions} == {t for t in targets if t.startswith(module + ":")}


def _local_imports(path: Path) -> list[str]:
    """Project imports inside a function body of ``path`` ("function:line")."""
    found = []
    for fn in ast.walk(_parse(path)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if any(n.split(".")[0] in PACKAGES for n in names) or getattr(node, "level", 0):
                    found.append(f"{fn.name}:{node.lineno}")
    return found


def test_project_imports_are_at_module_top(tmp_path):
    """A module's dependencies are readable from its head (issue 27: 49 were inside functions). The graph
    above has no cycle, so no import needs hiding; heavy third-party imports may still be local."""
    hits = {name: got for name, path in _modules().items() if (got := _local_imports(path))}
    assert not hits, f"function-local project imports: {hits}"
    planted = tmp_path / "m.py"
    planted.write_text("def f():\n    from cat_tokenizer.ratios import DEFAULT_RATIOS\n    return DEFAULT_RATIOS\n")
    assert _local_imports(planted) == ["f:2"]


def _long_functions(path: Path, limit: int = 50) -> list[str]:
    """Functions of ``path`` longer than ``limit`` lines, docstring and signature included ("name:lines")."""
    nodes = ast.walk(_parse(path))
    return [f"{n.name}:{n.end_lineno - n.lineno + 1}" for n in nodes
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit]


def test_no_function_is_over_fifty_lines(tmp_path):
    """Pipelines orchestrate small named steps (issue 27: eleven functions of 53-92 lines did I/O, measured
    and hand-built reports in one body)."""
    hits = {name: got for name, path in _modules().items() if (got := _long_functions(path))}
    assert not hits, f"functions over 50 lines: {hits}"
    planted = tmp_path / "m.py"
    planted.write_text("def f():\n" + "    x = 1\n" * 50)
    assert _long_functions(planted) == ["f:51"]


def test_the_readme_is_a_short_index_whose_commands_exist():
    """README <= 8 KB (issue 27: release history and "what we tried" live in the model card and
    docs/experiments.md); every `cat-tokenizer X` it names is a registered command, every `make X` a target."""
    import re

    from cat_tokenizer.cli.registry import command_names

    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 8192, f"README.md is {len(text.encode())} bytes"
    named = set(re.findall(r"cat-tokenizer ([a-z][a-z-]+)", text)) - {"commands"}
    assert named and not named - set(command_names()), named - set(command_names())
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    made = set(re.findall(r"make ([a-z][a-z-]+)", text))
    assert made and not made - targets, made - targets


def test_every_planted_mutation_still_finds_its_line():
    """`make mutants` edits one line per mutation: a refactor that moves the line must move the mutation too
    (one did: the colour path's line changed and its mutant went unnoticed until this check)."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from mutations import MUTATIONS

    for m in MUTATIONS:
        assert (ROOT / m.path).read_text().count(m.old) == 1, f"{m.name}: {m.old!r} is not once in {m.path}"


def test_the_readme_table_is_the_demo_report_s():
    """The README's per-kind table is copied from nowhere but the report `cat-tokenizer demo --report` wrote: every
    row of it is a row of docs/reports/demo-dev-128.md (issue 27: hand-copied figures went stale)."""
    readme = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(readme) if line.startswith("| kind | images | 8x"))
    table = []
    for line in readme[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    report = set((ROOT / "docs" / "reports" / "demo-dev-128.md").read_text().splitlines())
    assert len(table) >= 4 and not [row for row in table if row not in report], [row for row in table if row not in report]
