"""The scale-out files (docker-compose.yml, Dockerfile, .dockerignore) agree with the code.

No Docker engine runs where the tests run, so nothing here starts a container or calls
`docker`: these tests read the files and check what can be checked without one. The one
that matters most keeps compose and code in agreement: every variable set on an app
service is a setting that `config.Settings` reads, and the settings the app
needs to reach Temporal and its database are set and point at the right services.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url
from temporalio.api.enums.v1 import IndexedValueType

from config import env_names, load_settings
from plansmith.cli.console import CliError
from plansmith.cli.processes import check_exposure
from plansmith.devserver import SEARCH_ATTRIBUTE_TYPES, server_command
from workflows.plan_input import SEARCH_ATTRIBUTES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"

APP_SERVICES = ("api", "worker", "sandbox-worker")
TEMPORAL = "temporal"  # the Temporal server's service name
TEMPORAL_SETUP = "temporal-setup"  # registers the namespace and the search attributes
APP_DB = "postgres"  # the app's PostgreSQL
EXPECTED_SERVICES = {
    "temporal-postgresql",
    "temporal-schema",
    TEMPORAL,
    TEMPORAL_SETUP,
    "temporal-ui",
    APP_DB,
    *APP_SERVICES,
}
# What an app service needs to reach its dependencies inside the compose network.
CONNECTION_SETTINGS = (
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "PLANSMITH_TASK_QUEUE",
    "DATABASE_URL",
)

OFFICIAL_IMAGES = {
    "postgres",
    "temporalio/server",
    "temporalio/admin-tools",
    "temporalio/auto-setup",
    "temporalio/ui",
}
# The variables each official image documents (its README / Docker Hub page, the server's
# embedded config template, `temporal-sql-tool --help`, the `temporal` CLI's env names).
# A variable outside these is a typo or a setting nobody reads.
DOCUMENTED_IMAGE_ENV = {
    "postgres": {
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "POSTGRES_DB",
        "POSTGRES_INITDB_ARGS",
        "POSTGRES_INITDB_WALDIR",
        "POSTGRES_HOST_AUTH_METHOD",
        "PGDATA",
    },
    "temporalio/server": {
        "DB",
        "DB_PORT",
        "DBNAME",
        "VISIBILITY_DBNAME",
        "POSTGRES_SEEDS",
        "POSTGRES_USER",
        "POSTGRES_PWD",
        "BIND_ON_IP",
        "TEMPORAL_BROADCAST_ADDRESS",
        "DYNAMIC_CONFIG_FILE_PATH",
        "NUM_HISTORY_SHARDS",
        "LOG_LEVEL",
        "FRONTEND_GRPC_PORT",
        "PROMETHEUS_ENDPOINT",
        "SQL_MAX_CONNS",
        "SQL_MAX_IDLE_CONNS",
    },
    "temporalio/admin-tools": {
        "SQL_PLUGIN",
        "SQL_HOST",
        "SQL_PORT",
        "SQL_USER",
        "SQL_PASSWORD",
        "SQL_DATABASE",
        "TEMPORAL_ADDRESS",
        "TEMPORAL_NAMESPACE",
    },
    "temporalio/ui": {
        "TEMPORAL_ADDRESS",
        "TEMPORAL_UI_PORT",
        "TEMPORAL_CORS_ORIGINS",
        "TEMPORAL_DEFAULT_NAMESPACE",
        "TEMPORAL_DISABLE_WRITE_ACTIONS",
        "TEMPORAL_AUTH_ENABLED",
    },
}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
DEFAULT_FRONTEND_PORT = 7233


# --- reading the files ----------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict), "docker-compose.yml is not a mapping"
    return doc


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's interpolation, with an empty host environment unless one is given."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("bare"):
            return env.get(m.group("bare"), "")
        expr = m.group("braced")
        for op in (":-", "-", ":?", "?", ":+", "+"):
            name, sep, rest = expr.partition(op)
            if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                val = env.get(name)
                if op == ":-":
                    return val if val else rest
                if op == "-":
                    return rest if val is None else val
                if op in (":?", "?"):
                    if (op == ":?" and not val) or val is None:
                        raise AssertionError(f"${{{expr}}} requires {name} to be set")
                    return val
                return rest if (val if op == ":+" else val is not None) else ""
        return env.get(expr, "")

    return _VAR.sub(sub, value)


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment as {name: value}; None means passed through from the host."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        out: dict[str, str | None] = {}
        for item in raw:
            key, sep, val = str(item).partition("=")
            out[key] = val if sep else None
        return out
    return {str(k): None if v is None else str(v) for k, v in raw.items()}


# What the host must give compose (`${VAR:?...}`): the API refuses to run without keys.
HOST_ENV = {"PLANSMITH_API_KEYS": "compose-test-key:ops:admin"}


def resolved_env(service: dict[str, Any], host_env: dict[str, str] | None = None) -> dict[str, str]:
    """The values a container would get from a host that sets only what compose requires
    (``HOST_ENV``), or only ``host_env``."""
    env = HOST_ENV if host_env is None else host_env
    return {k: interpolate(v, env) for k, v in environment(service).items() if v is not None}


def command(service: dict[str, Any]) -> list[str]:
    raw = service.get("command")
    if raw is None:
        return []
    return shlex.split(raw) if isinstance(raw, str) else [str(x) for x in raw]


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, published port, container port) for every published port."""
    out = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            if entry.get("published") is not None:
                out.append(
                    (
                        str(entry.get("host_ip", "")),
                        int(entry["published"]),
                        int(entry["target"]),
                    )
                )
            continue
        parts = str(entry).split("/")[0].split(":")
        if len(parts) == 1:
            continue  # container port only: Docker picks a random host port
        target = int(parts[-1])
        published = int(parts[-2])
        host_ip = parts[-3] if len(parts) == 3 else ""
        out.append((host_ip, published, target))
    return out


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {name: "service_started" for name in raw}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


_IMAGE = re.compile(
    r"^(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


def parse_image(image: str) -> tuple[str, str | None, str | None]:
    m = _IMAGE.match(image)
    assert m, f"image {image!r} is not a name[:tag][@digest] reference"
    repo = m.group("repo").removeprefix("docker.io/").removeprefix("library/")
    return repo, m.group("tag"), m.group("digest")


def settings_env_names() -> set[str]:
    """Every environment variable name the settings read (upper case: case is ignored)."""
    return {name.upper() for name in env_names()}


def allowed_env_names(service: str) -> set[str]:
    """What an app service may set: the settings, the sandbox's only for the sandbox pool."""
    names = settings_env_names()
    if service != "sandbox-worker":
        names = {n for n in names if not n.startswith("PLANSMITH_SANDBOX_")}
    return names


def dockerfile_stages() -> list[dict[str, Any]]:
    """The Dockerfile's stages: name, base, and instructions (continuations joined)."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    logical: list[str] = []
    buf = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append(buf + stripped)
        buf = ""
    global_args: dict[str, str] = {}
    stages: list[dict[str, Any]] = []
    for instr in logical:
        keyword, _, rest = instr.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            arg, _, default = rest.strip().partition("=")
            global_args[arg] = default
        elif keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            base = re.sub(
                r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), words[0]
            )
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append({"name": name, "base": base, "instructions": []})
        else:
            assert stages, f"instruction before the first FROM: {instr}"
            stages[-1]["instructions"].append((keyword, rest.strip()))
    return stages


def stage_chain(stages: list[dict[str, Any]], target: str) -> list[dict[str, Any]]:
    """The stages a target is built on, its root first."""
    by_name = {s["name"]: s for s in stages if s["name"]}
    assert target in by_name, f"the Dockerfile has no stage {target!r}"
    chain = [by_name[target]]
    while chain[-1]["base"] in by_name:
        chain.append(by_name[chain[-1]["base"]])
    return list(reversed(chain))


def effective(stages: list[dict[str, Any]], target: str, keyword: str) -> str | None:
    """The last value of an inherited instruction (USER, ENTRYPOINT, CMD) for a target."""
    value = None
    for stage in stage_chain(stages, target):
        for kw, rest in stage["instructions"]:
            if kw == keyword:
                value = rest
    return value


def setup_search_attributes(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    script = interpolate(" ".join(command(services[TEMPORAL_SETUP])))
    found = re.findall(r"search-attribute create --name (\w+) --type (\w+)", script)
    return dict(found)


# --- the compose file -----------------------------------------------------------------


def test_compose_file_parses_with_the_expected_services(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the top-level `version` key is obsolete in Compose v2"
    assert set(compose["services"]) == EXPECTED_SERVICES
    for name, service in compose["services"].items():
        assert ("image" in service) != ("build" in service), (
            f"{name}: exactly one of image (an official image) or build (the Dockerfile)"
        )


def test_every_image_is_official_and_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        repo, tag, digest = parse_image(interpolate(service["image"]))
        assert repo in OFFICIAL_IMAGES, f"{name}: {repo} is not one of the official images"
        assert tag, f"{name}: {service['image']} has no tag"
        assert tag != "latest", f"{name}: `latest` is not a pinned version"
        # an exact version, not a rolling tag like `16` or `16-alpine`
        exact = r"\d+\.\d+\.\d+" if repo.startswith("temporalio/") else r"\d+\.\d+"
        assert re.match(exact + r"(?![\d.])", tag), f"{name}: tag {tag!r} is not an exact version"
        if digest:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)


def test_admin_tools_match_the_server_version(services: dict[str, dict[str, Any]]) -> None:
    """The schema tool ships the schema of its own server version."""
    server_tag = parse_image(services[TEMPORAL]["image"])[1]
    for name, service in services.items():
        repo, tag, _ = parse_image(service.get("image", "x:0"))
        if repo == "temporalio/admin-tools":
            assert tag == server_tag, f"{name}: admin-tools {tag} but server {server_tag}"


def test_infrastructure_services_use_only_documented_variables(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if name in APP_SERVICES:
            continue
        repo = parse_image(service["image"])[0]
        unknown = set(environment(service)) - DOCUMENTED_IMAGE_ENV[repo]
        assert not unknown, f"{name} ({repo}) sets variables its image does not read: {unknown}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_set_only_settings_the_code_reads(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    """The test that keeps compose and config/settings.py in agreement."""
    known = allowed_env_names(name)
    unknown = {k for k in environment(services[name]) if k.upper() not in known}
    assert not unknown, (
        f"{name} sets {sorted(unknown)}, which the code's settings do not read "
        f"(config.Settings reads {sorted(settings_env_names())})"
    )


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_get_the_settings_they_need(
    services: dict[str, dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(services[name])
    for key in CONNECTION_SETTINGS:
        value = env.get(key)
        assert value, f"{name}: {key} is not set, so the code would use its local default"
        # Not interpolated from the host: a developer's .env (TEMPORAL_ADDRESS=localhost:7233
        # for the embedded stack) must not reach the containers.
        assert "$" not in value, f"{name}: {key} must not depend on the host environment"
    # The values parse as the code's own settings (types, constraints).
    for key, value in resolved_env(services[name]).items():
        monkeypatch.setenv(key, value)
    settings = load_settings(env_file=None)
    assert settings.temporal.port > 0


def test_app_services_agree_on_their_settings(services: dict[str, dict[str, Any]]) -> None:
    first = environment(services[APP_SERVICES[0]])
    for name in APP_SERVICES[1:]:
        env = environment(services[name])
        for key in CONNECTION_SETTINGS:
            assert env[key] == first[key], f"{name}: {key} differs from {APP_SERVICES[0]}'s"


def test_temporal_address_points_at_the_temporal_service(
    services: dict[str, dict[str, Any]],
) -> None:
    server_env = resolved_env(services[TEMPORAL])
    port = int(server_env.get("FRONTEND_GRPC_PORT", DEFAULT_FRONTEND_PORT))
    assert server_env.get("BIND_ON_IP") == "0.0.0.0", "the frontend must listen beyond loopback"
    for name in (*APP_SERVICES, TEMPORAL_SETUP, "temporal-ui"):
        address = resolved_env(services[name])["TEMPORAL_ADDRESS"]
        host, _, service_port = address.rpartition(":")
        assert host == TEMPORAL, f"{name}: TEMPORAL_ADDRESS {address} is not the {TEMPORAL} service"
        assert int(service_port) == port, f"{name}: TEMPORAL_ADDRESS {address}, frontend on {port}"


def test_the_api_ships_closed(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API listens beyond loopback, so compose will not start it without API keys,
    and the API itself would refuse to (`plansmith api` checks before binding)."""
    api = services["api"]
    raw = environment(api)["PLANSMITH_API_KEYS"]
    assert raw and re.fullmatch(r"\$\{PLANSMITH_API_KEYS:\?[^}]*PLANSMITH_API_KEYS[^}]*\}", raw), (
        "the api service must require PLANSMITH_API_KEYS (${PLANSMITH_API_KEYS:?...}), "
        f"got {raw!r}"
    )
    with pytest.raises(AssertionError, match="requires PLANSMITH_API_KEYS"):
        resolved_env(api, host_env={})
    with pytest.raises(AssertionError, match="requires PLANSMITH_API_KEYS"):
        resolved_env(api, host_env={"PLANSMITH_API_KEYS": ""})
    for name, service in services.items():
        assert "PLANSMITH_ALLOW_OPEN_API" not in environment(service), name

    host = command(api)[command(api).index("--host") + 1]
    for key, value in resolved_env(api).items():
        monkeypatch.setenv(key, value)
    settings = load_settings(env_file=None)
    assert settings.api.keys_enabled and not settings.api.allow_open_api
    check_exposure(host, settings)  # keys given: it starts
    with pytest.raises(CliError, match="PLANSMITH_API_KEYS"):
        check_exposure(host, settings.replace(api={"keys": None}))


def test_one_namespace_everywhere(services: dict[str, dict[str, Any]]) -> None:
    namespace = resolved_env(services[TEMPORAL_SETUP])["TEMPORAL_NAMESPACE"]
    for name in APP_SERVICES:
        assert resolved_env(services[name])["TEMPORAL_NAMESPACE"] == namespace, name
    ui = resolved_env(services["temporal-ui"])
    assert ui.get("TEMPORAL_DEFAULT_NAMESPACE", namespace) == namespace


def _postgres_service(services: dict[str, dict[str, Any]], host: str) -> dict[str, str]:
    assert host in services, f"{host} is not a service"
    assert parse_image(services[host].get("image", ""))[0] == "postgres", (
        f"{host} is not PostgreSQL"
    )
    return resolved_env(services[host])


def test_database_url_points_at_the_app_postgres(services: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES:
        url = make_url(resolved_env(services[name])["DATABASE_URL"])
        # the store is written with sqlmodel + psycopg (3): SQLAlchemy's psycopg dialect
        assert url.drivername == "postgresql+psycopg", f"{name}: {url.drivername}"
        assert url.host == APP_DB, f"{name}: DATABASE_URL host {url.host} is not {APP_DB}"
        assert (url.port or 5432) == 5432
        pg = _postgres_service(services, url.host)
        assert url.username == pg["POSTGRES_USER"]
        assert url.password == pg["POSTGRES_PASSWORD"]
        assert url.database == pg.get("POSTGRES_DB", pg["POSTGRES_USER"])


def test_temporal_persists_in_its_own_postgres(services: dict[str, dict[str, Any]]) -> None:
    server = resolved_env(services[TEMPORAL])
    assert server["DB"] in ("postgres12", "postgres12_pgx")
    pg = _postgres_service(services, server["POSTGRES_SEEDS"])
    assert server["POSTGRES_SEEDS"] != APP_DB, "Temporal and the app share no database server"
    assert server["POSTGRES_USER"] == pg["POSTGRES_USER"]
    assert server["POSTGRES_PWD"] == pg["POSTGRES_PASSWORD"]
    schema = resolved_env(services["temporal-schema"])
    assert schema["SQL_HOST"] == server["POSTGRES_SEEDS"]
    assert schema["SQL_PLUGIN"] == server["DB"]
    assert schema["SQL_USER"] == pg["POSTGRES_USER"]
    assert schema["SQL_PASSWORD"] == pg["POSTGRES_PASSWORD"]
    assert int(schema["SQL_PORT"]) == int(server.get("DB_PORT", 5432))


def test_temporal_dynamic_config_is_mounted(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """The server image ships no dynamic config file; a missing one stops the server."""
    path = resolved_env(services[TEMPORAL])["DYNAMIC_CONFIG_FILE_PATH"]
    mounts = {c["target"]: c["source"] for c in services[TEMPORAL].get("configs", [])}
    assert path in mounts, f"nothing is mounted at DYNAMIC_CONFIG_FILE_PATH {path}"
    content = compose["configs"][mounts[path]]["content"]
    assert isinstance(yaml.safe_load(content), dict)


def test_worker_scales(services: dict[str, dict[str, Any]]) -> None:
    """`docker compose up --scale worker=N` needs no fixed name and no fixed host port."""
    worker = services["worker"]
    for key in ("container_name", "hostname", "ports"):
        assert key not in worker, f"worker sets {key}, so it cannot run N replicas"
    queue = resolved_env(worker)["PLANSMITH_TASK_QUEUE"]
    assert command(worker) == ["worker", "--queue", queue], (
        "the worker polls the queue plans are started on"
    )
    assert worker["build"]["target"] == "app"


def test_sandbox_worker_polls_the_sandbox_queue(services: dict[str, dict[str, Any]]) -> None:
    sandbox = services["sandbox-worker"]
    assert command(sandbox) == ["worker", "--queue", "sandbox"]
    assert sandbox["build"]["target"] == "sandbox"
    assert "container_name" not in sandbox and "ports" not in sandbox


def test_api_publishes_8000_and_the_ui_8080(services: dict[str, dict[str, Any]]) -> None:
    api = command(services["api"])
    assert api[0] == "api"
    assert api[api.index("--host") + 1] == "0.0.0.0", "the API must listen beyond loopback"
    api_port = int(api[api.index("--port") + 1])
    assert (8000, api_port) in {(p, t) for _, p, t in published_ports(services["api"])}
    ui_port = int(resolved_env(services["temporal-ui"]).get("TEMPORAL_UI_PORT", 8080))
    assert (8080, ui_port) in {(p, t) for _, p, t in published_ports(services["temporal-ui"])}


def test_depends_on_existing_services_with_conditions_that_hold(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for dep, condition in depends_on(service).items():
            assert dep in services, f"{name} depends on {dep}, which is not a service"
            assert condition in DEPENDS_CONDITIONS, f"{name} -> {dep}: {condition}"
            target = services[dep]
            if condition == "service_healthy":
                assert target.get("healthcheck") and not target["healthcheck"].get("disable"), (
                    f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
                )
            if condition == "service_completed_successfully":
                assert str(target.get("restart", "no")) in ("no", "on-failure") or str(
                    target.get("restart")
                ).startswith("on-failure"), f"{dep} is waited on to finish but restarts forever"
    for name in APP_SERVICES:
        deps = depends_on(services[name])
        assert deps.get(TEMPORAL_SETUP) == "service_completed_successfully", name
        assert deps.get(APP_DB) == "service_healthy", name


def test_dependencies_have_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for dep in depends_on(services[name]):
            visit(dep, (*path, name))
        done.add(name)

    for name in services:
        visit(name, ())


def test_search_attributes_match_the_dev_server(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Compose registers the same search attributes as `plansmith server` and the tests."""
    in_compose = setup_search_attributes(services)
    assert in_compose == SEARCH_ATTRIBUTE_TYPES
    # what the workflow upserts (and the test environments register)
    keyword = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
    assert {k.name for k in SEARCH_ATTRIBUTES} == set(in_compose)
    assert all(k.indexed_value_type == keyword for k in SEARCH_ATTRIBUTES)
    assert set(in_compose.values()) == {"Keyword"}
    # what `temporal server start-dev` is actually given
    cmd = server_command(load_settings(env_file=None), str(tmp_path / "temporal.db"))
    given = dict(
        cmd[i + 1].split("=", 1) for i, arg in enumerate(cmd) if arg == "--search-attribute"
    )
    assert given == in_compose


# --- the image --------------------------------------------------------------------------


def test_dockerfile_installs_from_the_lock() -> None:
    stages = dockerfile_stages()
    runs = [rest for s in stages for kw, rest in s["instructions"] if kw == "RUN"]
    syncs = [r for r in runs if re.search(r"\buv sync\b", r)]
    assert syncs, "the Dockerfile never runs `uv sync`"
    for run in syncs:
        assert re.search(r"--(locked|frozen)\b", run), f"`uv sync` without the lock: {run}"
    for run in runs:
        assert not re.search(r"\buv pip install\b|\bpip install (\.|-e)", run), (
            f"installs the project around the lock: {run}"
        )
    copies = " ".join(rest for s in stages for kw, rest in s["instructions"] if kw == "COPY")
    assert "uv.lock" in copies


@pytest.mark.parametrize("target", ["app", "sandbox"])
def test_image_targets_run_plansmith_as_a_non_root_user(target: str) -> None:
    stages = dockerfile_stages()
    root_base = stage_chain(stages, target)[0]["base"]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", root_base), root_base
    user = effective(stages, target, "USER")
    assert user and user.split(":")[0] not in ("root", "0"), f"{target} runs as {user}"
    assert effective(stages, target, "ENTRYPOINT") == '["plansmith"]'


def test_default_target_is_the_app_and_only_the_sandbox_has_bubblewrap() -> None:
    stages = dockerfile_stages()
    assert stages[-1]["name"] == "app", "`docker build .` should give the app image"

    def installs_bwrap(target: str) -> bool:
        return any(
            kw == "RUN" and "apt-get install" in rest and "bubblewrap" in rest
            for stage in stage_chain(stages, target)
            for kw, rest in stage["instructions"]
        )

    assert installs_bwrap("sandbox")
    assert not installs_bwrap("app")


def test_compose_builds_targets_the_dockerfile_has(services: dict[str, dict[str, Any]]) -> None:
    names = {s["name"] for s in dockerfile_stages()}
    for name in APP_SERVICES:
        build = services[name]["build"]
        assert build.get("context", ".") == "."
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
        assert build["target"] in names, f"{name}: no stage {build['target']!r}"


def test_dockerignore_keeps_secrets_and_the_host_venv_out() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".env", ".venv", ".git"):
        assert needed in patterns, f".dockerignore does not exclude {needed}"
    assert "README.md" not in patterns, "the build needs README.md (pyproject's readme)"


def test_deployment_doc_explains_the_stack() -> None:
    text = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    for needed in ("docker compose up --build", "--scale worker=", *EXPECTED_SERVICES):
        assert needed in text, f"docs/deployment.md does not mention {needed}"
