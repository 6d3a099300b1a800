"""The layers of the house (docs/architecture.md) hold, and the tool that checks them bites.

The contracts live in pyproject.toml ([tool.importlinter]); `lint-imports` checks them in
`make lint`, and these tests run it as part of the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("config", "plans", "contracts", "store", "activities", "workflows", "api", "plansmith")
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_of_the_house(tmp_path: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_every_layer_contract_is_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("workflows/plan_workflow.py", "from store import db", "workflows"),
        ("api/app.py", "from activities import steps", "api is not allowed to import activities"),
        ("plans/models.py", "import temporalio", "plans is not allowed to import temporalio"),
        ("config/settings.py", "from plans import models", "config"),
        ("store/db.py", "from workflows import client", "store"),
    ],
)
def test_a_stray_import_breaks_the_build(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    house = copy_of_the_house(tmp_path)
    path = house / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(house)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout
    assert broken in result.stdout, result.stdout


def loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return {line.split(".")[0] for line in out.splitlines()}


def test_validating_a_plan_loads_no_store_sandbox_or_temporal_client() -> None:
    loaded = loaded_after("import plans.validation")
    heavy = {"sqlalchemy", "sqlmodel", "temporalio", "httpx", "anthropic", "fastapi"}
    assert not loaded & heavy, sorted(loaded & heavy)
    assert not loaded & {"activities", "store", "workflows", "api"}


def test_the_tool_catalog_loads_no_tool_code() -> None:
    loaded = loaded_after("import contracts.tools")
    assert "activities" not in loaded and "httpx" not in loaded and "temporalio" not in loaded
