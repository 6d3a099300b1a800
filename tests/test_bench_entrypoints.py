"""`make bench`'s entry points answer `--help` like any command: usage on stdout, exit 0,
no traceback; a wrong option is refused with argparse's exit 2 and its reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    p.stem
    for p in (ROOT / "bench").glob("*.py")
    if p.stem != "__init__" and "argparse" in p.read_text()
)


def bench(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_benchmarks_with_options_are_all_found():
    assert {"run", "concurrency", "fastpath", "watchers"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_help_exits_0_with_usage_and_no_traceback(module: str):
    done = bench(module, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: python -m bench." in done.stdout
    assert "Traceback" not in done.stderr


def test_an_unknown_option_is_refused_with_its_name_and_no_traceback():
    done = bench("run", "--no-such-option")
    assert done.returncode == 2
    assert "--no-such-option" in done.stderr and "Traceback" not in done.stderr
