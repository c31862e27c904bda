"""The two layers: the decoding core (`bild/*.py`) never imports the lab, `policies` or the heavy
experiment tools, and the command line stays light where it should."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("optuna", "wandb", "matplotlib", "policies", "bild.lab")
ENTRY_POINTS = ("cli.py",)  # launch the lab lazily; not part of the core


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


@pytest.mark.parametrize("module", sorted(p.name for p in (ROOT / "bild").glob("*.py") if p.name not in ENTRY_POINTS))
def test_core_modules_import_only_the_core(module):
    bad = [m for m in imports(ROOT / "bild" / module) if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert not bad, f"bild/{module} imports {bad}"


def test_policies_import_only_the_core():
    for path in (ROOT / "policies").glob("*.py"):
        bad = [m for m in imports(path) if m.startswith("bild.lab") or m.split(".")[0] in ("optuna", "wandb")]
        assert not bad, f"{path.name} imports {bad}"


def loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    return set(run.stdout.split())


def test_help_imports_no_torch_and_policies_no_experiment_tools():
    help_run = "from bild.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    assert not loaded_after(help_run) & {"torch", "transformers", "optuna", "wandb", "matplotlib"}
    listing = "from bild.cli import main\nmain(['policies'])"
    assert not loaded_after(listing) & {"optuna", "wandb", "matplotlib"}
    assert "torch" not in loaded_after("import bild")  # names load on first use
