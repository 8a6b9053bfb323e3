"""Every file, link and module the repository's text points to exists in it.

Paths such as ``rayagg/core/tree.py`` or ``docs/config.md`` in code, configs and docs;
relative links in Markdown; dotted names such as ``rayagg.core.tree.Tree``; and no
pointer to notes that live outside the repository.
"""
from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEARCHED = ["rayagg", "tests", "benchmarks", "jobs", "cluster", "docs", ".ci"]
TOP_FILES = ["README.md", "dev.sh", "setup.py", "Makefile", "pytest.ini"]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".ini", ".txt", ""}

PATH = re.compile(r"(?<![\w/.-])((?:rayagg|docs|jobs|cluster|benchmarks|tests|\.ci)/[\w./-]*\w)")
LINK = re.compile(r"\]\(([^)#\s]+)")
DOTTED = re.compile(r"(?<![\w.])(rayagg(?:\.[a-z_]\w*)+)")
OUTSIDE = re.compile(r"\b(?:RAY_NOTES|FEDAGG|STYLE)\.md\b")  # the project's own notes, not shipped
# Byte keys of the store's Parquet metadata look like dotted names but are not modules.
NOT_NAMES = {"rayagg.format_version", "rayagg.code_shape", "rayagg.device_counts", "rayagg.rows_sha256"}


def text_files() -> list[pathlib.Path]:
    found = [ROOT / name for name in TOP_FILES if (ROOT / name).exists()]
    for folder in SEARCHED:
        found += [p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in SUFFIXES
                  and "__pycache__" not in p.parts]
    return sorted(p for p in found if p != pathlib.Path(__file__).resolve())  # its own examples are made up


def references(pattern: re.Pattern) -> list[tuple[pathlib.Path, str]]:
    return [(path, match.group(1)) for path in text_files()
            for match in pattern.finditer(path.read_text(errors="replace"))]


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` names a module of the package, or a name one defines (one level
    into a class too). Read from the source: importing would start torch and Ray."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if source.exists():
            return cut == len(parts) or defines(source, parts[cut:])
    return False


def defines(source: pathlib.Path, names: list[str]) -> bool:
    """Whether the module at ``source`` defines ``names[0]`` at its top level (and, for a
    class, ``names[1]`` in its body)."""
    body = ast.parse(source.read_text()).body
    for name in names[:2]:
        found = {target: node for node in body for target in defined_names(node)}
        if name not in found:
            return False
        body = getattr(found[name], "body", None)
        if body is None or not isinstance(found[name], ast.ClassDef):
            return True
    return True


def defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(alias.asname or alias.name).split(".")[0] for alias in node.names]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    if isinstance(node, (ast.If, ast.Try)):
        return [name for inner in node.body for name in defined_names(inner)]
    return []


def test_the_searched_files_are_found():
    names = {path.relative_to(ROOT).as_posix() for path in text_files()}
    assert {"README.md", "rayagg/loop.py", "jobs/configs/demo.yaml"} <= names


def test_every_path_named_exists():
    missing = [f"{path.relative_to(ROOT)}: {ref}" for path, ref in references(PATH)
               if not (ROOT / ref.rstrip(".")).exists() and "*" not in ref]
    assert missing == []


def test_every_relative_markdown_link_exists():
    missing = [f"{path.relative_to(ROOT)}: {ref}" for path, ref in references(LINK)
               if path.suffix == ".md" and not ref.startswith(("http:", "https:", "mailto:"))
               and not (path.parent / ref).exists()]
    assert missing == []


def test_every_dotted_name_resolves():
    unresolved = sorted({f"{path.relative_to(ROOT)}: {ref}" for path, ref in references(DOTTED)
                         if ref not in NOT_NAMES and not resolves(ref.rstrip("."))})
    assert unresolved == []


def test_nothing_points_outside_the_repository():
    outside = [f"{path.relative_to(ROOT)}: {match.group(0)}" for path in text_files()
               for match in OUTSIDE.finditer(path.read_text(errors="replace"))]
    assert outside == []


def test_dotted_names_resolve_to_modules_and_what_they_define():
    assert resolves("rayagg.core.tree") and resolves("rayagg.core.tree.Tree")
    assert resolves("rayagg.core.tree.Tree.balanced") and resolves("rayagg.cli")
    assert not resolves("rayagg.core.tree.NoSuchThing") and not resolves("rayagg.no_such_module")


@pytest.mark.parametrize("text, found", [("see rayagg/no_such.py.", ["rayagg/no_such.py"]),
                                         ("ok: [a](docs/x.md)", ["docs/x.md"])])
def test_the_patterns_find_paths(text, found):
    assert [m.group(1) for m in PATH.finditer(text)] == found
