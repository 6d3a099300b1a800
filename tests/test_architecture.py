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


def test_a_worker_loads_the_model_sdk_and_cryptography_only_when_used() -> None:
    """A worker holding plans that wait for a person never loads the Anthropic SDK (~40 MiB)
    nor cryptography (~8 MiB): the SDK at a model's first call, cryptography with a
    payload key (docs/operating.md, "What a worker holds")."""
    loaded = loaded_after(
        "import worker\n"
        "from activities.deps import ActivityDeps\n"
        "from config import get_settings\n"
        "s = get_settings()\n"
        "s = s.replace(models={'anthropic_api_key': 'sk-ant-x'})\n"
        "deps = ActivityDeps.from_settings(s)\n"
        "assert type(deps.chat_model).__name__ == 'AnthropicModel', deps.chat_model\n"
        "from workflows.transport import data_converter\n"
        "data_converter(s.temporal)"
    )
    assert "anthropic" not in loaded and "cryptography" not in loaded, sorted(loaded)


MUTATORS = {"append", "extend", "insert", "update", "add", "pop", "popitem", "clear", "remove"}
MUTATORS |= {"setdefault", "discard", "sort", "reverse", "__setitem__", "__delitem__"}


def shared_state_in(source: str, filename: str) -> list[str]:
    """What in a module would be state shared between workflow runs once the module is
    passed through the sandbox: ``global`` statements, and module-level names that are
    mutated (assigned into, or sent a mutating method) anywhere in the module."""
    import ast

    tree = ast.parse(source, filename)
    names = {
        t.id
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(t, ast.Name)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            found.append(f"{filename}:{node.lineno}: global {', '.join(node.names)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in MUTATORS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in names
        ):
            found.append(f"{filename}:{node.lineno}: {node.func.value.id}.{node.func.attr}()")
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.Delete):
            targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
            for t in targets:
                if (
                    isinstance(t, ast.Subscript | ast.Attribute)
                    and isinstance(t.value, ast.Name)
                    and t.value.id in names
                ):
                    found.append(f"{filename}:{node.lineno}: {t.value.id} changed")
    return found


def test_the_workflow_modules_shared_by_every_run_keep_no_state() -> None:
    """The worker passes the workflows package through the sandbox (worker.WORKFLOW_RUNNER):
    one copy of its modules serves every run, so none may keep state between runs."""
    from worker import WORKFLOW_RUNNER

    assert "workflows" in WORKFLOW_RUNNER.restrictions.passthrough_modules
    found = []
    for path in sorted((ROOT / "workflows").glob("*.py")):
        found += shared_state_in(path.read_text(), f"workflows/{path.name}")
    assert found == []


def test_the_shared_state_check_finds_a_run_counter_and_a_cache() -> None:
    leaky = (
        "RUNS = 0\nSEEN = {}\n"
        "def count():\n    global RUNS\n    RUNS += 1\n"
        "def remember(k, v):\n    SEEN[k] = v\n"
        "def remember_too(k):\n    SEEN.setdefault(k, 1)\n"
    )
    found = shared_state_in(leaky, "leaky.py")
    assert found == [
        "leaky.py:4: global RUNS",
        "leaky.py:7: SEEN changed",
        "leaky.py:9: SEEN.setdefault()",
    ]
