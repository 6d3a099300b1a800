"""The guard rails of ``http_request`` against real local servers (127.0.0.0/8 only,
free ports, stopped by the tests): the deny list refuses before any connection, a
redirect to another origin loses the credentials and the body, the body is read up to
the cap, ``timeout_s`` has a maximum. Where a test needs a name, a resolver of its own
answers (no DNS query leaves the machine)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from activities.http_guard import GuardedTransport, exchange
from activities.tools import ToolContext, ToolError, get_tool
from config import HostDenied, get_settings
from config.http import IPAddress, UrlPolicy, parse_host_rules
from tests.helpers import activity_deps
from tests.key_server import KeyServer


def ctx(**http: Any) -> ToolContext:
    settings = get_settings().replace(http=http) if http else get_settings()
    return ToolContext(
        plan_id="plan-g",
        step_id="fetch",
        idempotency_key="plan-g:fetch:v1",
        deps=activity_deps(settings=settings),
    )


async def http(params: dict[str, Any], context: ToolContext | None = None) -> Any:
    return await get_tool("http_request").fn(params, context or ctx())


# --- where it may connect --------------------------------------------------------------


async def test_a_denied_address_is_refused_before_any_connection() -> None:
    with KeyServer(host="127.0.0.2") as denied:
        # the server is there and answers when it is not denied
        assert (await http({"url": denied.url("/ok")}))["status"] == 200
        assert len(denied.received) == 1
        for url in (
            denied.url("/ok"),
            f"http://2130706434:{denied.port}/ok",  # 127.0.0.2 in decimal
            f"http://[::ffff:127.0.0.2]:{denied.port}/ok",
        ):
            with pytest.raises(ToolError) as info:
                await http({"url": url, "method": "POST", "json": {"x": 1}}, ctx(deny="127.0.0.2"))
            assert info.value.retryable is False
            assert info.value.kind == "HostDenied"
            assert "127.0.0.2" in str(info.value) and "PLANSMITH_HTTP_DENY" in str(info.value)
        await asyncio.sleep(0.2)
        assert len(denied.received) == 1  # the denied requests never arrived


async def test_a_redirect_into_a_denied_address_is_refused_at_that_hop() -> None:
    with KeyServer() as first, KeyServer(host="127.0.0.2") as denied:
        to = quote(denied.url("/ok"), safe="")
        with pytest.raises(ToolError) as info:
            await http({"url": first.url(f"/redirect?code=302&to={to}")}, ctx(deny="127.0.0.2"))
        assert info.value.kind == "HostDenied"
        assert len(first.received) == 1
        assert denied.received == []


async def test_each_hop_resolves_and_is_checked_again_and_connects_to_the_checked_address() -> None:
    """DNS rebinding: the name answers a harmless address first, the metadata address
    next. The transport connects to the address it checked (the server sees the name in
    Host), and the second hop's answer is refused before any packet is sent."""
    answers: list[str] = ["127.0.0.1", "169.254.169.254"]
    asked: list[str] = []

    async def rebinding(host: str, port: int) -> Sequence[IPAddress]:
        asked.append(host)
        return [ipaddress.ip_address(answers.pop(0))]

    with KeyServer() as server:
        transport = GuardedTransport(UrlPolicy(), resolve=rebinding)
        to = quote(f"http://rebind.test:{server.port}/ok", safe="")
        with pytest.raises(HostDenied, match=r"169\.254\.169\.254"):
            await exchange(
                "GET",
                f"http://rebind.test:{server.port}/redirect?code=302&to={to}",
                headers={},
                query=None,
                body={},
                timeout_s=10,
                max_redirects=5,
                max_response_bytes=10_000,
                transport=transport,
            )
        assert asked == ["rebind.test", "rebind.test"]
        assert transport.connections == [("rebind.test", "127.0.0.1")]
        assert len(server.received) == 1
        assert server.received[0].headers["Host"] == f"rebind.test:{server.port}"


async def test_https_connects_to_the_checked_address_and_verifies_the_name(tmp_path) -> None:
    """The pinned connection still sends the host name for SNI and checks the
    certificate against it (a certificate for another name fails)."""
    cert, key = self_signed(tmp_path, "service.test")
    seen: dict[str, Any] = {}
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    def on_sni(sock: Any, name: str | None, context: Any) -> None:
        seen["sni"] = name

    server_ctx.sni_callback = on_sni
    with KeyServer() as server:
        server.httpd.socket = server_ctx.wrap_socket(server.httpd.socket, server_side=True)

        async def to_loopback(host: str, port: int) -> Sequence[IPAddress]:
            return [ipaddress.ip_address("127.0.0.1")]

        trust = ssl.create_default_context(cafile=cert)
        for name, ok in (("service.test", True), ("other.test", False)):
            transport = GuardedTransport(UrlPolicy(), resolve=to_loopback, verify=trust)
            call = exchange(
                "GET",
                f"https://{name}:{server.port}/ok",
                headers={},
                query=None,
                body={},
                timeout_s=10,
                max_redirects=0,
                max_response_bytes=10_000,
                transport=transport,
            )
            if ok:
                got = await call
                assert got.status == 200 and got.body()["path"] == "/ok"
                assert server.received[-1].headers["Host"] == f"service.test:{server.port}"
            else:
                with pytest.raises(httpx.ConnectError, match="certificate"):
                    await call
            assert seen["sni"] == name
            assert transport.connections == [(name, "127.0.0.1")]
        assert len(server.received) == 1


def self_signed(tmp_path: Path, name: str) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


# --- redirects -------------------------------------------------------------------------


async def test_a_307_to_another_port_does_not_forward_credentials_or_the_body() -> None:
    secret_headers = {
        "X-API-Key": "k-secret-1",
        "Authorization": "Bearer t-secret-2",
        "Cookie": "session=s-secret-3",
    }
    payload = {"card": "4111-secret-4"}
    with KeyServer() as first, KeyServer() as second:
        to = quote(second.url("/ok"), safe="")
        result = await http(
            {
                "url": first.url(f"/redirect?code=307&to={to}"),
                "method": "POST",
                "json": payload,
                "headers": {**secret_headers, "Accept": "application/json"},
            }
        )
        assert result["status"] == 200 and result["body"]["path"] == "/ok"
        # the first server did get them: the test would see a leak
        sent = first.received[0]
        assert sent.headers["X-API-Key"] == "k-secret-1"
        assert json.loads(sent.body) == payload
        [arrived] = second.received
        assert arrived.method == "POST"  # a 307 keeps the method...
        assert arrived.body == b""  # ...not the body, on another origin
        names = {k.lower() for k in arrived.headers}
        assert not names & {"x-api-key", "authorization", "cookie"}
        text = json.dumps(arrived.headers) + arrived.path
        for value in (*secret_headers.values(), "4111-secret-4"):
            assert value.split("=")[-1] not in text
        assert arrived.headers["Accept"] == "application/json"
        assert arrived.headers["Idempotency-Key"] == "plan-g:fetch:v1"


async def test_a_307_on_the_same_origin_keeps_credentials_and_body() -> None:
    with KeyServer() as server:
        await http(
            {
                "url": server.url("/redirect?code=307&to=/ok"),
                "method": "PUT",
                "body": "the body",
                "headers": {"X-API-Key": "k-1"},
            }
        )
        _, again = server.received
        assert again.path == "/ok" and again.method == "PUT"
        assert again.headers["X-API-Key"] == "k-1" and again.body == b"the body"


async def test_credentials_once_dropped_do_not_come_back_on_the_way_home() -> None:
    with KeyServer() as home, KeyServer() as away:
        back = quote(home.url("/ok"), safe="")
        to = quote(away.url(f"/redirect?code=307&to={back}"), safe="")
        await http(
            {"url": home.url(f"/redirect?code=307&to={to}"), "headers": {"X-API-Key": "k-2"}}
        )
        assert home.received[0].path.startswith("/redirect")
        final = home.received[-1]
        assert final.path == "/ok" and "X-API-Key" not in final.headers


async def test_too_many_redirects_fail_without_retry() -> None:
    with KeyServer() as server:
        # /redirect?to=/redirect -> /redirect -> /ok: two redirects
        hops = {"url": server.url("/redirect?code=302&to=/redirect")}
        with pytest.raises(ToolError) as info:
            await http(hops, ctx(max_redirects=1))
        assert info.value.kind == "TooManyRedirects" and info.value.retryable is False
        assert "more than 1 redirects" in str(info.value)
        assert len(server.received) == 2
        assert (await http(hops, ctx(max_redirects=2)))["body"]["path"] == "/ok"


# --- size and time ---------------------------------------------------------------------


async def test_a_body_beyond_the_cap_fails_the_step_and_the_reading_stops_early() -> None:
    size = 256 * 1024 * 1024
    with KeyServer() as server:
        start = time.monotonic()
        with pytest.raises(ToolError) as info:
            await http({"url": server.url(f"/stream?size={size}")}, ctx(max_response_bytes=100_000))
        assert info.value.retryable is False
        assert info.value.kind == "ResponseTooLarge"
        assert "cap of 100000 bytes" in str(info.value)
        assert "PLANSMITH_HTTP_MAX_RESPONSE_BYTES" in str(info.value)
        assert await asyncio.to_thread(server.stream_ended.wait, 10)
        # what the server managed to write before the client hung up: socket buffers' worth
        assert 100_000 < server.streamed < size // 8
        assert time.monotonic() - start < 10


async def test_a_declared_length_beyond_the_cap_fails_before_reading() -> None:
    with KeyServer() as server:
        with pytest.raises(ToolError) as info:
            await http({"url": server.url("/big?size=50000")}, ctx(max_response_bytes=10_000))
        assert info.value.kind == "ResponseTooLarge" and "declared" in str(info.value)
        ok = await http({"url": server.url("/big?size=5000")}, ctx(max_response_bytes=10_000))
        assert len(ok["body"]["pad"]) == 5000


async def test_an_error_status_with_a_large_body_is_still_reported_as_its_status() -> None:
    with KeyServer() as server:
        with pytest.raises(ToolError) as info:
            await http({"url": server.url("/flaky?fail=5")}, ctx(max_response_bytes=1024))
        assert info.value.kind == "HttpServerError" and "503" in str(info.value)


async def test_timeout_s_above_the_maximum_is_refused_naming_it() -> None:
    with KeyServer() as server:
        for context, asked, maximum in (
            (ctx(), 301, "300"),
            (ctx(max_timeout_s=5, timeout_s=5), 6, "5"),
        ):
            with pytest.raises(ToolError) as info:
                await http({"url": server.url("/ok"), "timeout_s": asked}, context)
            assert info.value.retryable is False and info.value.kind == "BadRequest"
            assert f"maximum of {maximum} seconds" in str(info.value)
            assert "PLANSMITH_HTTP_MAX_TIMEOUT_S" in str(info.value)
        assert server.received == []
        assert (await http({"url": server.url("/ok"), "timeout_s": 300}))["status"] == 200


async def test_timeout_s_bounds_the_whole_exchange() -> None:
    with KeyServer(hold_s=30) as server:
        start = time.monotonic()
        with pytest.raises(ToolError) as info:
            await http({"url": server.url("/hold"), "timeout_s": 1})
        assert time.monotonic() - start < 5
        assert info.value.retryable is True and "timeout" in str(info.value).lower()


async def test_environment_proxies_are_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy would resolve the name itself, past the policy: it is ignored."""
    with KeyServer() as server, KeyServer() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url(""))
        monkeypatch.setenv("ALL_PROXY", proxy.url(""))
        monkeypatch.delenv("NO_PROXY", raising=False)
        assert (await http({"url": server.url("/ok")}))["status"] == 200
        assert len(server.received) == 1 and proxy.received == []


async def test_the_transport_refuses_other_schemes() -> None:
    transport = GuardedTransport(UrlPolicy(deny=parse_host_rules("", "X")))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("ftp://127.0.0.1/file")
    assert transport.connections == []
