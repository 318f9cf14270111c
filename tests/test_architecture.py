"""The layering holds: imports run one way (lint-imports contracts in pyproject.toml), no hidden function-level
imports of quantfid modules, the analysis stays torch-free, and the configs ship inside the package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from quantfid.api.paths import conf_dir, organism_dir

REPO = Path(__file__).resolve().parents[1]
SOURCES = [REPO / "src" / "quantfid", REPO / "mlflow_plugins"]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_import_contracts_are_kept():
    """Fails on a cycle between packages, an upward import, a stage importing another, or the analysis importing
    torch or a stage (the contracts are in pyproject.toml)."""
    done = subprocess.run([str(LINT_IMPORTS)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def hidden_imports(path: Path, root: Path) -> list[str]:
    """``file:line: text`` of every quantfid import inside a function of ``path`` without a ``deferred:`` comment."""
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any(n.split(".")[0] in ("quantfid", "quantfid_mlflow") for n in names):
                here, above = lines[node.lineno - 1], lines[node.lineno - 2] if node.lineno > 1 else ""
                if "deferred:" not in here + above:
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {here.strip()}")
    return found


def test_no_hidden_imports_inside_functions():
    """A quantfid import inside a function hides a dependency from the layering check; only one that defers a heavy
    optional dependency may, and then says so with a ``# deferred: <why>`` comment."""
    found = [hit for src in SOURCES for p in sorted(src.rglob("*.py")) for hit in hidden_imports(p, REPO)]
    assert not found, "function-level quantfid imports:\n" + "\n".join(found)


def test_the_checker_sees_a_hidden_import(tmp_path):
    (tmp_path / "bad.py").write_text("def f():\n    from quantfid.quant import quantize\n    return quantize\n")
    (tmp_path / "ok.py").write_text(
        "def f():\n    from quantfid.quant import quantize  # deferred: pulls torch\n    return quantize\n"
    )
    assert hidden_imports(tmp_path / "bad.py", tmp_path) == ["bad.py:2: from quantfid.quant import quantize"]
    assert hidden_imports(tmp_path / "ok.py", tmp_path) == []


@pytest.mark.parametrize("module", ["quantfid.analysis.cli", "quantfid.api.schema", "quantfid.api.variants"])
def test_the_analysis_and_the_vocabulary_do_not_load_torch(module):
    code = f"import sys, {module}; heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; print(heavy)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_configs_and_organism_are_package_data():
    assert (conf_dir() / "config.yaml").is_file() and (conf_dir() / "quant").is_dir()
    assert (organism_dir() / "model.safetensors").is_file()
    assert str(conf_dir()).endswith("conf")
