"""The one-way import layers (pyproject's ``[tool.importlinter]``) hold, and would catch a
breach: the same contracts fail on a copy of the tree where a lower package imports a higher
one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ftprune", "search", "dashboards", "workers", "storage", "evaluation", "router")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter on the packages under ``tree`` (which shadow the installed ones)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_tree(dest: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_the_tree_keeps_its_layers() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_lower_package_importing_a_higher_one_breaks_the_contract(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    engine = tree / "router" / "engine.py"
    engine.write_text(
        engine.read_text() + "\n\ndef _breach() -> None:\n"
        "    from search import coordinator  # noqa: F401\n"
    )
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "router.engine -> search.coordinator" in result.stdout, result.stdout


def test_the_genetic_algorithm_may_not_see_ray(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    ga = tree / "search" / "ga.py"
    ga.write_text(ga.read_text() + "\n\nimport ray  # noqa: E402,F401\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "search.ga -> ray" in result.stdout, result.stdout
