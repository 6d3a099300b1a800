"""Reaching Temporal safely: the TLS settings become the SDK's TLSConfig, and with a
payload key every payload (and failure message) is encrypted before it leaves the
process, so Temporal's own history holds no plaintext."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
import zlib
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.service import TLSConfig

from config import ConfigError, Settings, get_settings, load_settings
from plans.models import PlanStatus
from tests.helpers import activity_deps, make_plan, start
from tests.history_text import history_text
from worker import build_worker
from workflows.client import connect
from workflows.transport import (
    COMPRESSED,
    CodecChain,
    CompressionCodec,
    EncryptionCodec,
    PayloadDecryptionError,
    PayloadTooLarge,
    tls_config,
)


def b64key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


# --- TLS -------------------------------------------------------------------------------


def test_no_tls_by_default_and_tls_with_the_system_roots():
    assert tls_config(get_settings().temporal) is False
    assert tls_config(get_settings().replace(temporal={"tls": True}).temporal) is True


def test_mtls_settings_build_the_tls_config(tmp_path: Path):
    for name in ("client.pem", "client.key", "ca.pem"):
        (tmp_path / name).write_bytes(f"-----BEGIN {name}-----\n".encode())
    s = get_settings().replace(
        temporal={
            "address": "my-ns.a1b2c.tmprl.cloud:7233",
            "namespace": "my-ns.a1b2c",
            "tls_cert": str(tmp_path / "client.pem"),
            "tls_key": str(tmp_path / "client.key"),
            "tls_ca": str(tmp_path / "ca.pem"),
            "tls_server_name": "my-ns.a1b2c.tmprl.cloud",
        }
    )
    cfg = tls_config(s.temporal)
    assert cfg == TLSConfig(
        server_root_ca_cert=b"-----BEGIN ca.pem-----\n",
        domain="my-ns.a1b2c.tmprl.cloud",
        client_cert=b"-----BEGIN client.pem-----\n",
        client_private_key=b"-----BEGIN client.key-----\n",
    )


def test_tls_settings_are_read_from_the_environment_and_checked(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("PLANSMITH_TEMPORAL_TLS_CERT", str(tmp_path / "c.pem"))
    with pytest.raises(
        ConfigError, match="PLANSMITH_TEMPORAL_TLS_CERT and PLANSMITH_TEMPORAL_TLS_KEY go together"
    ):
        load_settings(env_file=None)
    monkeypatch.setenv("PLANSMITH_TEMPORAL_TLS_KEY", str(tmp_path / "c.key"))
    s = load_settings(env_file=None)
    assert s.temporal.tls_enabled
    with pytest.raises(ConfigError, match=r"PLANSMITH_TEMPORAL_TLS_KEY: cannot read .*c\.key"):
        (tmp_path / "c.pem").write_text("x")
        tls_config(s.temporal)
    monkeypatch.setenv("PLANSMITH_PAYLOAD_KEY", base64.b64encode(b"short").decode())
    with pytest.raises(ConfigError, match="PLANSMITH_PAYLOAD_KEY: must be base64 of 32 bytes"):
        load_settings(env_file=None)


async def test_connect_speaks_tls_when_told(env):
    """The local dev server speaks plain TCP: a TLS client cannot talk to it, which shows
    that connect() really uses the TLS settings."""
    address = env.client.service_client.config.target_host
    plain = get_settings().replace(temporal={"address": address})
    assert isinstance(await connect(plain), Client)
    with pytest.raises(Exception):  # noqa: B017  the handshake fails, whatever the SDK calls it
        await asyncio.wait_for(connect(plain.replace(temporal={"tls": True})), 20)


# --- the payload codec -------------------------------------------------------------------


async def test_codec_round_trip_rotation_and_tampering():
    old, new = os.urandom(32), os.urandom(32)
    before = EncryptionCodec("old", {"old": old})
    payload = Payload(metadata={"encoding": b"json/plain"}, data=b'{"secret": "plaintext-1"}')
    [sealed] = await before.encode([payload])
    assert b"plaintext-1" not in sealed.SerializeToString()
    assert sealed.metadata["encryption-key-id"] == b"old"
    assert await before.decode([sealed]) == [payload]
    # rotated: the new key encrypts, the old one still decrypts what it wrote
    after = EncryptionCodec("new", {"new": new, "old": old})
    assert await after.decode([sealed]) == [payload]
    [resealed] = await after.encode([payload])
    assert resealed.metadata["encryption-key-id"] == b"new"
    # a plain payload (written before encryption was on) passes as it is
    assert await after.decode([payload]) == [payload]
    with pytest.raises(PayloadDecryptionError, match=r"key 'new'.*PLANSMITH_PAYLOAD_OLD_KEYS"):
        await before.decode([resealed])
    tampered = Payload()
    tampered.CopyFrom(sealed)
    tampered.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(PayloadDecryptionError, match="does not decrypt"):
        await after.decode([tampered])


def test_payload_keys_from_settings():
    current, old = b64key(), b64key()
    s = get_settings().replace(temporal={"payload_key": current, "payload_old_keys": f"2024:{old}"})
    kid, keys = s.temporal.payload_keys() or ("", {})
    assert kid.startswith("k-") and keys[kid] == base64.b64decode(current)
    assert keys["2024"] == base64.b64decode(old)
    assert current not in repr(s.temporal) and old not in repr(s.temporal)


async def test_a_real_plan_leaves_no_plaintext_in_temporal_history(env, task_queue):
    marker = f"plaintext-{uuid.uuid4().hex}"
    address = env.client.service_client.config.target_host
    settings: Settings = get_settings().replace(
        temporal={"address": address, "payload_key": b64key(), "task_queue": task_queue}
    )
    client = await connect(settings)
    plan = make_plan(
        [
            {
                "id": "echo",
                "tool": "transform",
                "params": {"data": {"m": "{{ inputs.m }}"}, "expression": "m"},
            },
            {
                "id": "broken",
                "tool": "transform",
                "params": {"data": {}, "expression": f"'{marker}' +"},
                "depends_on": ["echo"],
            },
        ],
        on_error="continue",
    ).model_copy(update={"inputs": {"m": marker}})
    async with build_worker(client, task_queue, deps=activity_deps(settings=settings)):
        handle = await start(client, plan, task_queue)
        result = await asyncio.wait_for(handle.result(), 60)
        # through the codec everything reads as usual: the run did carry the marker, as an
        # output and in a failure's message
        st = await handle.query("status")
    assert result.status == PlanStatus.PARTIAL
    steps = {s["id"]: s for s in st["steps"]}
    assert steps["echo"]["output"] == marker
    assert marker in steps["broken"]["error"]
    # the history's events as the server keeps them hold no plaintext ...
    history = await handle.fetch_history()
    assert marker not in json.dumps(history.to_json_dict())
    # ... and Temporal itself, asked without any codec, holds only ciphertext
    raw = history_text(address, plan.workflow_id)
    encrypted = base64.b64encode(b"binary/encrypted").decode()  # metadata, as the CLI shows it
    assert raw.count(encrypted) >= 4  # the input, the activities' inputs and results...
    assert "Encoded failure" in raw  # a failure's message is inside an encrypted payload
    assert marker not in raw
    # the same plan without a payload key: the marker is there for all to read
    plain_plan = plan.model_copy(update={"id": plan.id + "-plain"})
    plain = await connect(settings.replace(temporal={"payload_key": None}))
    async with build_worker(plain, task_queue, deps=activity_deps(settings=settings)):
        await asyncio.wait_for((await start(plain, plain_plan, task_queue)).result(), 60)
    assert marker in history_text(address, plain_plan.workflow_id)


# --- compression ------------------------------------------------------------------------


def big_rows(n: int = 40_000) -> list[dict[str, object]]:
    return [
        {"id": i, "name": f"customer-{i}", "region": ("eu", "us", "apac")[i % 3]} for i in range(n)
    ]


async def test_big_payloads_are_compressed_small_ones_stay_readable_json():
    codec = CompressionCodec()
    small = Payload(metadata={"encoding": b"json/plain"}, data=b'{"a": 1}')
    big = Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(big_rows()).encode())
    assert big.ByteSize() > 2 * 1024 * 1024  # over Temporal's payload limit as it is
    out = await codec.encode([small, big])
    assert out[0] == small
    assert out[1].metadata["encoding"] == COMPRESSED
    assert out[1].ByteSize() < 512 * 1024
    assert await codec.decode(out) == [small, big]
    # with encryption, compressed first (ciphertext would not compress), then sealed
    chain = CodecChain(CompressionCodec(), EncryptionCodec("k1", {"k1": os.urandom(32)}))
    sealed = await chain.encode([big])
    assert sealed[0].metadata["encoding"] == b"binary/encrypted"
    assert sealed[0].ByteSize() < 512 * 1024
    assert await chain.decode(sealed) == [big]


async def test_a_compressed_payload_that_unpacks_to_a_flood_is_refused():
    """Someone with access to Temporal sends a signal whose payload claims our encoding and
    unpacks to 200 MB: the worker refuses it instead of filling its memory."""
    inner = Payload(metadata={"encoding": b"json/plain"}, data=b"0" * (200 * 1024 * 1024))
    bomb = Payload(
        metadata={"encoding": COMPRESSED}, data=zlib.compress(inner.SerializeToString(), 9)
    )
    assert bomb.ByteSize() < 1024 * 1024
    with pytest.raises(PayloadTooLarge, match="more than 67,108,864 bytes"):
        await CompressionCodec().decode([bomb])
    cut = Payload(metadata={"encoding": COMPRESSED}, data=bomb.data[:1000])
    with pytest.raises(PayloadTooLarge, match="cut short"):
        await CompressionCodec().decode([cut])
    junk = Payload(metadata={"encoding": COMPRESSED}, data=b"not zlib at all")
    with pytest.raises(PayloadTooLarge, match="does not decompress"):
        await CompressionCodec().decode([junk])


async def test_a_plan_with_inputs_over_temporals_payload_limit_runs(env, task_queue):
    """Inputs of ~2.6 MB: Temporal refuses a payload over 2 MB, so the plan could not even
    start without compression; it runs to completion, and Temporal holds it compressed."""
    address = env.client.service_client.config.target_host
    settings = get_settings().replace(temporal={"address": address, "task_queue": task_queue})
    client = await connect(settings)
    rows = big_rows()
    assert len(json.dumps(rows)) > 2 * 1024 * 1024
    plan = make_plan(
        [
            {
                "id": "count",
                "tool": "transform",
                "params": {"data": {"last": "{{ inputs.rows[39999].name }}"}, "expression": "last"},
            }
        ]
    ).model_copy(update={"inputs": {"rows": rows}})
    async with build_worker(client, task_queue, deps=activity_deps(settings=settings)):
        handle = await start(client, plan, task_queue)
        result = await asyncio.wait_for(handle.result(), 120)
        st = await handle.query("status")
    assert result.status == PlanStatus.COMPLETED, st["steps"][0]["error"]
    assert [s["output"] for s in st["steps"]] == ["customer-39999"]
    raw = history_text(address, plan.workflow_id)
    assert base64.b64encode(COMPRESSED).decode() in raw  # the input, as the server keeps it
    assert "customer-20000" not in raw
