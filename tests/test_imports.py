"""The import rules that keep rayagg's layers apart (docs/architecture.md).

* Pure modules (the decisions over the tree, the config, the run loop, the run
  directory's formats that hold no tensors) import in a fresh interpreter where
  importing torch or Ray raises.
* Only the Ray runtime, the client and the bench import Ray when imported; the CLI
  imports neither torch nor Ray until a command needs them.
* A package imports only from its own layer or the ones below (imports under
  ``if TYPE_CHECKING:`` do not count: they never run); modules import no cycle.
"""
from __future__ import annotations

import ast
import json
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rayagg"

# Lowest first. A module may import from its own layer and the ones below.
LAYERS = [
    {"errors", "nodes", "storage", "files"},  # words, where run files live and durable bytes, used everywhere
    {"config"},
    {"core"},  # pure decisions over the tree
    {"methods"},  # pure: a training method's round steps
    {"learning"},  # torch
    {"rundir"},  # the run directory's formats
    {"stopping", "observe", "tracking", "loop", "driver"},  # the round loop, its observers, the in-process runtime
    {"runtime"},  # Ray
    {"client", "tools"},
    {"cli"},
    {"__init__", "__main__"},
]
PURE = ["rayagg.errors", "rayagg.nodes", "rayagg.storage", "rayagg.files", "rayagg.config", "rayagg.core", "rayagg.methods",
        "rayagg.stopping",
        "rayagg.observe", "rayagg.tracking", "rayagg.loop", "rayagg.learning.partition", "rayagg.rundir.directory",
        "rayagg.rundir.events", "rayagg.rundir.live", "rayagg.rundir.manifest", "rayagg.rundir.metrics",
        "rayagg.rundir.plot", "rayagg.rundir.resume"]
MAY_IMPORT_RAY = ("rayagg.runtime.", "rayagg.tools.", "rayagg.client.")

# Imports each module given in a fresh rayagg (every rayagg module forgotten first) while
# importing any package of `blocked` raises; prints {module: error} for those that failed.
PROBE = """
import importlib, json, sys
blocked, modules = json.loads(sys.argv[1]), json.loads(sys.argv[2])
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is not allowed here")
sys.meta_path.insert(0, Refuse())
failed = {}
for module in modules:
    for name in [n for n in sys.modules if n == "rayagg" or n.startswith("rayagg.")]:
        del sys.modules[name]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        failed[module] = str(exc)
print(json.dumps(failed))
"""


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> list[str]:
    return sorted(module_name(p) for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


def expand(names: list[str]) -> list[str]:
    """Packages in ``names`` stand for every module under them."""
    return sorted({m for m in all_modules() for name in names if m == name or m.startswith(name + ".")})


def imports_failing(modules: list[str], blocked: list[str]) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(blocked), json.dumps(modules)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def rayagg_imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) of every rayagg import in ``path`` that runs (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for guard in ast.walk(tree)
               if isinstance(guard, ast.If) and "TYPE_CHECKING" in ast.unparse(guard.test)
               for node in ast.walk(guard)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("rayagg"):
            if node.module == "rayagg":
                found += [(node.lineno, f"rayagg.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("rayagg.")]
    return found


def layer_of(module: str) -> int:
    unit = module.split(".")[1] if "." in module else "__init__"
    for index, units in enumerate(LAYERS):
        if unit in units:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def test_pure_modules_import_without_torch_or_ray():
    assert imports_failing(expand(PURE), ["torch", "torchvision", "ray"]) == {}


def test_only_the_runtime_the_client_and_the_bench_import_ray():
    rest = [m for m in all_modules() if not m.startswith(MAY_IMPORT_RAY)]
    assert imports_failing(rest, ["ray"]) == {}


def test_the_cli_imports_neither_torch_nor_ray_until_a_command_runs():
    assert imports_failing(expand(["rayagg.cli"]), ["torch", "torchvision", "ray"]) == {}


def test_no_package_imports_one_above_it():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        importer = module_name(path) if path.name != "__main__.py" else "rayagg.__main__"
        for line, imported in rayagg_imports(path):
            if layer_of(imported) > layer_of(importer):
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert upward == []


def test_no_import_cycles():
    known = set(all_modules())
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__main__.py":
            # "from rayagg.core import tree" names a module; "from rayagg.core.tree import Tree" its parent
            graph[module_name(path)] = {m for _, m in rayagg_imports(path) if m in known} - {module_name(path)}
    assert find_cycle(graph) is None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (a list of modules, the first repeated last), or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_help_and_check_start_no_ray():
    tiny = ROOT / "jobs" / "configs" / "tiny.yaml"
    script = ("import sys; from click.testing import CliRunner; from rayagg.cli import main\n"
              f"for args in (['--help'], ['check', {str(tiny)!r}]):\n"
              "    result = CliRunner().invoke(main, args)\n"
              "    assert result.exit_code == 0, result.output\n"
              "    assert 'ray' not in sys.modules, args\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_test_modules_without_the_ray_marker_import_no_ray():
    tests = sorted(p for p in (ROOT / "tests").glob("test_*.py")
                   if not re.search(r"^pytestmark = .*pytest\.mark\.ray", p.read_text(), re.M))
    script = ("import importlib.util, sys\n"
              "for path in sys.argv[1:]:\n"
              "    spec = importlib.util.spec_from_file_location(path, path)\n"
              "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
              "    assert 'ray' not in sys.modules, path + ' imports Ray'\n")
    done = subprocess.run([sys.executable, "-c", script, *map(str, tests)], cwd=ROOT / "tests",
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
