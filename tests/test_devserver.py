"""The embedded dev server starts with the limiters lifted, as `plansmith server` runs it."""

from __future__ import annotations

from config import Settings
from plansmith.devserver import DEV_SERVER_DYNAMIC_CONFIG, dynamic_config_args, server_command


def test_plansmith_server_passes_every_lifted_limiter_to_the_dev_server(tmp_path) -> None:
    cmd = server_command(Settings(), db_file=str(tmp_path / "t.db"))
    given = {cmd[i + 1] for i, a in enumerate(cmd) if a == "--dynamic-config-value"}
    assert given == {f"{k}={v}" for k, v in DEV_SERVER_DYNAMIC_CONFIG.items()}
    assert "history.transferProcessorMaxPollRPS=10000" in given


def test_an_empty_config_passes_no_dynamic_config() -> None:
    assert dynamic_config_args({}) == []
    assert dynamic_config_args({"a.b": 3}) == ["--dynamic-config-value", "a.b=3"]
