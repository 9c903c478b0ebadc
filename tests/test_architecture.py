"""The shape docs/architecture.md promises: module and function sizes, typer only in the CLI,
and the layers it draws being the ones `make lint` checks."""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("avfeat", "extract", "data", "align", "index")
MODULE_LINES, FUNCTION_LINES = 500, 80

# Modules allowed over the limit, and why.
LONG_MODULES: dict[str, str] = {}
# Functions allowed over the limit, and why.
LONG_FUNCTIONS: dict[str, str] = {}


def _modules():
    for package in PACKAGES:
        yield from sorted((REPO / package).rglob("*.py"))


def test_modules_and_functions_stay_small():
    too_long = []
    for path in _modules():
        name = str(path.relative_to(REPO))
        text = path.read_text()
        if text.count("\n") > MODULE_LINES and name not in LONG_MODULES:
            too_long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > FUNCTION_LINES and f"{name}:{node.name}" not in LONG_FUNCTIONS:
                    too_long.append(f"{name}:{node.name}: {lines} lines")
    assert not too_long, "over the size limits of docs/architecture.md: " + "; ".join(too_long)


def test_only_the_cli_imports_typer():
    importers = [str(p.relative_to(REPO)) for p in _modules() if re.search(r"^\s*(import typer|from typer)", p.read_text(), re.M)]
    assert importers and all(name.startswith("avfeat/cli/") for name in importers), importers


def test_the_documented_layers_are_the_checked_ones():
    contracts = configparser.ConfigParser()
    contracts.read(REPO / ".importlinter")
    checked = [line.strip() for line in contracts["importlinter:contract:layers"]["layers"].split("\n") if line.strip()]
    diagram = (REPO / "docs" / "architecture.md").read_text().split("```")[1]
    drawn = re.findall(r"^(avfeat\.\w+)", diagram, re.M)
    assert drawn == checked
