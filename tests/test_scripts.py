"""The scripts outside the package (bench/, tools/, the top-level CLIs) import names from proslushka inside their
functions, so a name the package drops would only fail when someone runs that script: check every such import."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*ROOT.glob("*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("tools/*.py")])


def package_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of every `from proslushka... import name` in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "proslushka":
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
    return found


def test_the_scripts_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in SCRIPTS}
    assert {"transcribe.py", "train.py", "bench/decode.py", "tools/render_extra.py"} <= names


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_package_name_a_script_imports_exists(path):
    missing = []
    for line, module, name in package_imports(path):
        mod = importlib.import_module(module)
        if not hasattr(mod, name):
            try:  # `from proslushka import submodule`
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{path.name}:{line}: {module}.{name}")
    assert not missing
