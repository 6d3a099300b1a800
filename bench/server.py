"""The dev server every benchmark starts: its own process on 127.0.0.1, no Web UI, the
project's search attributes, and the client with the product's data converter."""

from __future__ import annotations

from temporalio.testing import WorkflowEnvironment
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from plansmith.devserver import DEV_SERVER_DYNAMIC_CONFIG, dynamic_config_args, temporal_cli_path
from worker import WORKFLOW_RUNNER
from workflows.plan_input import SEARCH_ATTRIBUTES
from workflows.transport import data_converter

# The benchmarks' workers run workflows as ``plansmith worker`` does (its sandbox, the
# workflows package passed through, not imported anew for each run), and the bare
# workflows they compare with (bench.baseline, bench.fastpath) alike.
BENCH_RUNNER = SandboxedWorkflowRunner(
    restrictions=WORKFLOW_RUNNER.restrictions.with_passthrough_modules("bench")
)


def config_args(overrides: list[str]) -> list[str]:
    """``plansmith server``'s dynamic config with ``KEY=VALUE`` overrides, as arguments."""
    config = {**DEV_SERVER_DYNAMIC_CONFIG, **dict(kv.split("=", 1) for kv in overrides)}
    return [a for k, v in config.items() for a in ("--dynamic-config-value", f"{k}={v}")]


async def dev_server(extra_args: list[str] | None = None) -> WorkflowEnvironment:
    """``async with await dev_server() as env``: with ``plansmith server``'s dynamic
    config, or with ``extra_args`` (``--dynamic-config-value KEY=VALUE``...) instead."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli_path(),
        data_converter=data_converter(),
        search_attributes=SEARCH_ATTRIBUTES,
        ip="127.0.0.1",
        ui=False,
        dev_server_extra_args=dynamic_config_args() if extra_args is None else extra_args,
    )
