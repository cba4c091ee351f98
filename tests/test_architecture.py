"""The shape of the code: import contracts, no import cycles, modules of a readable size.

The import rules are the import-linter contracts in pyproject.toml ([tool.importlinter]): layers for
the center, the wallet's command line on top of the wallet, forbidden imports between the two
programs and from the shared packages, and no cycles between sibling packages or modules. On top
of that, a strongly-connected-components pass over the same import graph (grimp) names every cycle
module by module, also one through a package's __init__. Function-level imports and imports under
`if TYPE_CHECKING:` count like any other. Each check is also run once on a throwaway package with a
deliberate cycle and an upward import, to prove it fails when it should. Also: no `_private` name
imported from another module, a reason written atop every module over 400 lines, and `center --help`
loading neither the database layers nor the web framework.
"""

from __future__ import annotations

import ast
import itertools
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("center", "token_wallet", "paywire", "tokens", "hostkit")
MAX_MODULE_LINES = 400
LONG_REASON = "Long because"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
LINT_TIMEOUT_S = 300
PROBE_TIMEOUT_S = 60


# --- the checkers (the same code runs on the project and on the throwaway package) ---


def run_lint_imports(directory: Path, config: Path | None = None) -> subprocess.CompletedProcess:
    """lint-imports on the packages importable from `directory`, with the contracts in `config`."""
    command = [str(LINT_IMPORTS), "--no-cache", "--no-logo"]
    if config is not None:
        command += ["--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(directory)}
    return subprocess.run(
        command, cwd=directory, env=env, capture_output=True, text=True, timeout=LINT_TIMEOUT_S
    )


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """One concrete cycle (a list of modules, the first repeated at the end) per strongly connected
    component of more than one module; empty when the graph is acyclic."""
    cycles = []
    for component in strongly_connected_components(graph):
        if len(component) > 1:
            cycles.append(cycle_within(graph, component))
    return sorted(cycles)


def strongly_connected_components(graph: grimp.ImportGraph) -> list[set[str]]:
    """Tarjan's algorithm, iterative (the graph is deep enough to trouble recursion)."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = lowlink[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = lowlink[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph.find_modules_directly_imported_by(successor)))))
                    break
                if successor in on_stack:
                    lowlink[module] = min(lowlink[module], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    lowlink[parent] = min(lowlink[parent], lowlink[module])
                if lowlink[module] == index[module]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == module:
                            break
                    components.append(component)
    return components


def cycle_within(graph: grimp.ImportGraph, component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first, inside the component)."""
    start = min(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for successor in sorted(graph.find_modules_directly_imported_by(module) & component):
                if successor == start:
                    path = [module]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if successor not in came_from:
                    came_from[successor] = module
                    following.append(successor)
        frontier = following
    raise AssertionError(f"no cycle through {start} in its strongly connected component")


def describe_cycle(graph: grimp.ImportGraph, cycle: list[str]) -> str:
    """`a -> b (l.12, lazy: in a function) -> a (l.3)`: where each import is written."""
    parts = [cycle[0]]
    for importer, imported in itertools.pairwise(cycle):
        details = graph.get_import_details(importer=importer, imported=imported)
        lines = ", ".join(f"l.{detail['line_number']}" for detail in details)
        parts.append(f"{imported} ({importer} {lines})")
    return " -> ".join(parts)


def long_modules_without_reason(paths: Iterable[Path]) -> list[str]:
    """Modules over MAX_MODULE_LINES lines whose module docstring has no sentence saying why."""
    found = []
    for path in sorted(paths):
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines <= MAX_MODULE_LINES:
            continue
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if LONG_REASON not in " ".join(docstring.split()):
            found.append(f"{path.relative_to(ROOT)}: {lines} lines")
    return found


def our_modules() -> list[Path]:
    return [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]


def build_graph(*packages: str) -> grimp.ImportGraph:
    return grimp.build_graph(*packages, cache_dir=None)


# --- the project ---


def test_import_contracts_hold():
    result = run_lint_imports(ROOT)
    assert result.returncode == 0, f"lint-imports failed:\n{result.stdout}\n{result.stderr}"


def test_type_checking_imports_are_counted():
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    assert "exclude_type_checking_imports" not in settings


def test_no_import_cycles():
    graph = build_graph(*PACKAGES)
    cycles = [describe_cycle(graph, cycle) for cycle in import_cycles(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_long_modules_say_why():
    found = long_modules_without_reason(our_modules())
    assert not found, (
        f"over {MAX_MODULE_LINES} lines without a sentence starting {LONG_REASON!r} in the "
        "module docstring (split it by role, or say why not):\n" + "\n".join(found)
    )


def private_names_imported(paths: Iterable[Path]) -> list[str]:
    """`from module import _name` (at any depth, lazy or not): a private name used outside its module."""
    found = []
    for path in sorted(paths):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            found += [
                f"{path.relative_to(ROOT)}:{node.lineno} imports {alias.name} from {node.module}"
                for alias in node.names
                if is_private(alias.name)
            ]
    return found


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_name_is_imported_from_another_module():
    found = private_names_imported(our_modules())
    assert not found, "make it public (drop the underscore) or move it:\n" + "\n".join(found)


def test_center_help_loads_no_database_or_web_framework():
    """`center --help` and the commands that need no database (backup-key, issuer certify) start fast:
    the CLI imports the database and API layers inside the commands that use them."""
    probe = (
        "import sys; import center.cli.main; "
        "print(' '.join(sorted(m for m in ('sqlalchemy', 'alembic', 'fastapi', 'uvicorn') "
        "if m in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        check=True,
    )
    assert result.stdout.strip() == ""


def test_cli_copies_of_limits_match_their_layers():
    """The CLI keeps copies of a few list limits so that `center --help` need not import the layers
    that define them; each copy must equal its original."""
    from center.cli import keys as cli_keys
    from center.cli import operators as cli_operators
    from center.console import access
    from center.keys import binding, store_names

    assert cli_keys.MAX_LISTED_KEYS == binding.MAX_LISTED_KEYS
    assert cli_operators.MAX_LISTED_READS == access.MAX_LISTED
    assert cli_operators.DEFAULT_LISTED_READS == access.DEFAULT_LISTED
    assert cli_operators.MAX_LISTED_STORES == store_names.MAX_LISTED


# --- the checks fail when they should: a throwaway package ---

TOY_CONFIG = """
[tool.importlinter]
root_packages = ["archtoy"]

[[tool.importlinter.contracts]]
name = "layers"
type = "layers"
containers = ["archtoy"]
layers = ["high", "low"]
exhaustive = true

[[tool.importlinter.contracts]]
name = "acyclic"
type = "acyclic_siblings"
ancestors = ["archtoy"]
"""


def make_toy(root: Path, files: dict[str, str]) -> None:
    for name, text in {
        "archtoy/__init__.py": "",
        "archtoy/high/__init__.py": "",
        "archtoy/low/__init__.py": "",
        **files,
    }.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "pyproject.toml").write_text(TOY_CONFIG, encoding="utf-8")


UPWARD_LAZY = {
    "archtoy/high/app.py": "from archtoy.low import store\n",
    "archtoy/low/store.py": "def run():\n    from archtoy.high import app  # lazy, still an import\n",
}
UPWARD_TYPE_CHECKING = {
    "archtoy/high/app.py": "from archtoy.low import store\n",
    "archtoy/low/store.py": (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from archtoy.high.app import App\n"
    ),
}
SIBLING_CYCLE = {  # no layer is crossed upwards: only the cycle check can see it
    "archtoy/low/one.py": "from archtoy.low import two\n",
    "archtoy/low/two.py": "def run():\n    from archtoy.low import one\n",
}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [name for name in sys.modules if name.split(".")[0] == "archtoy"]:
        del sys.modules[name]


@pytest.mark.parametrize(
    ("files", "upward_line"), [(UPWARD_LAZY, 2), (UPWARD_TYPE_CHECKING, 3)], ids=["lazy", "type_checking"]
)
def test_checks_catch_an_upward_import_that_makes_a_cycle(toy, files, upward_line):
    make_toy(toy, files)
    result = run_lint_imports(toy, toy / "pyproject.toml")
    assert result.returncode != 0
    assert "layers BROKEN" in result.stdout
    assert "archtoy.low is not allowed to import archtoy.high" in result.stdout
    assert "acyclic BROKEN" in result.stdout
    graph = build_graph("archtoy")
    cycles = import_cycles(graph)
    assert cycles == [["archtoy.high.app", "archtoy.low.store", "archtoy.high.app"]]
    assert describe_cycle(graph, cycles[0]).endswith(f"archtoy.high.app (archtoy.low.store l.{upward_line})")


def test_checks_catch_a_cycle_between_sibling_modules(toy):
    make_toy(toy, SIBLING_CYCLE)
    result = run_lint_imports(toy, toy / "pyproject.toml")
    assert result.returncode != 0
    assert "layers KEPT" in result.stdout
    assert "acyclic BROKEN" in result.stdout
    assert "No cycles are allowed in archtoy.low" in result.stdout
    graph = build_graph("archtoy")
    cycles = import_cycles(graph)
    assert cycles == [["archtoy.low.one", "archtoy.low.two", "archtoy.low.one"]]
    assert describe_cycle(graph, cycles[0]) == (
        "archtoy.low.one -> archtoy.low.two (archtoy.low.one l.1) -> archtoy.low.one (archtoy.low.two l.2)"
    )


def test_checks_pass_a_clean_toy(toy):
    make_toy(toy, {"archtoy/high/app.py": "from archtoy.low import store\n", "archtoy/low/store.py": ""})
    result = run_lint_imports(toy, toy / "pyproject.toml")
    assert result.returncode == 0, result.stdout
    assert import_cycles(build_graph("archtoy")) == []


def test_long_module_check_wants_a_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    body = "x = 1\n" * MAX_MODULE_LINES
    silent, explained = tmp_path / "silent.py", tmp_path / "explained.py"
    silent.write_text('"""A module."""\n' + body, encoding="utf-8")
    explained.write_text('"""A module.\n\nLong because\nit is one table."""\n' + body, encoding="utf-8")
    assert long_modules_without_reason([silent, explained]) == [f"silent.py: {MAX_MODULE_LINES + 1} lines"]


def test_private_import_check_finds_a_lazy_one(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    module = tmp_path / "user.py"
    module.write_text(
        "from a import public, __version__\n\ndef run():\n    from b import _helper\n", encoding="utf-8"
    )
    assert private_names_imported([module]) == ["user.py:4 imports _helper from b"]
