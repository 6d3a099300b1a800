"""The guarded HTTP exchange behind the ``http_request`` tool.

- **Where it may connect.** :class:`GuardedTransport` resolves the host itself, asks the
  URL policy (:mod:`config.http`, ``PLANSMITH_HTTP_ALLOW``/``DENY``...) about the name and
  every address, then connects to one of those checked addresses (the ``Host`` header and
  the TLS server name stay the host's): a DNS answer that changes between the check and the
  connection (DNS rebinding) cannot lead elsewhere. Every redirect hop passes through it
  again. Proxies from the environment are not used (they would resolve the name
  themselves).
- **Redirects** (:func:`exchange`) keep the step's own headers and its body only while they
  stay on the origin (scheme, host, port) of the first URL: once a hop leaves it, only
  harmless headers (:data:`SAFE_HEADERS`) follow and a 307/308 goes on without its body.
- **Size.** The body is read as a stream and the reading stops at
  ``PLANSMITH_HTTP_MAX_RESPONSE_BYTES`` (counted after decompression).
- **Time.** ``timeout_s`` bounds each network wait *and* the whole exchange, redirects
  and body included; it may not exceed ``PLANSMITH_HTTP_MAX_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from config.http import HostDenied, IPAddress, UrlPolicy, literal_address

Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]

# The headers that follow a redirect to another origin; every other header the step set
# (Authorization, Cookie, X-API-Key, any custom one) stays behind.
SAFE_HEADERS = frozenset(
    {"accept", "accept-encoding", "accept-language", "user-agent", "idempotency-key"}
)
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
DEFAULT_PORTS = {"http": 80, "https": 443}


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """The addresses of ``host``: the one it spells, else what the system resolver says."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise httpx.ConnectError(f"cannot resolve {host!r}: {e}") from None
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


class GuardedTransport(httpx.AsyncBaseTransport):
    """Connects only to addresses the URL policy allows (see the module doc).

    ``connections`` lists the (host, address) pairs it connected to, in order."""

    def __init__(
        self,
        policy: UrlPolicy,
        resolve: Resolver = resolve_host,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.policy = policy
        self.resolve = resolve
        self.connections: list[tuple[str, str]] = []
        self._inner = httpx.AsyncHTTPTransport(verify=verify, trust_env=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(
                f"only http:// and https:// URLs can be requested, not {url.scheme!r}://"
                if url.scheme
                else "the URL has no http:// or https:// scheme",
                request=request,
            )
        host = url.host
        if not host:
            raise httpx.UnsupportedProtocol("the URL has no host", request=request)
        self.policy.check_name(host)  # a denied name is not even resolved
        addresses = await self.resolve(host, url.port or DEFAULT_PORTS[url.scheme])
        self.policy.check(host, addresses)
        extensions = dict(request.extensions)
        if url.scheme == "https":
            extensions.setdefault("sni_hostname", host)  # certificate checked for the name
        error: httpx.ConnectError | None = None
        for address in addresses:
            pinned = httpx.Request(
                request.method,
                url.copy_with(host=str(address)),
                headers=request.headers,  # Host: the name, as the URL said
                stream=request.stream,
                extensions=extensions,
            )
            self.connections.append((host, str(address)))
            try:
                return await self._inner.handle_async_request(pinned)
            except httpx.ConnectError as e:  # nothing was sent: the next address may answer
                error = e
        assert error is not None
        raise error

    async def aclose(self) -> None:
        await self._inner.aclose()


class ResponseTooLarge(Exception):
    """The body went beyond the cap; ``read`` bytes were read before the reading stopped."""

    def __init__(self, cap: int, read: int, declared: int | None = None) -> None:
        self.cap, self.read, self.declared = cap, read, declared
        said = f" (it declared {declared} bytes)" if declared is not None else ""
        super().__init__(
            f"the response body is larger than the cap of {cap} bytes "
            f"(PLANSMITH_HTTP_MAX_RESPONSE_BYTES){said}; the reading stopped after "
            f"{read} bytes"
        )


class TooManyRedirects(Exception):
    pass


@dataclass
class Exchanged:
    """What came back: the final response's status, headers and (capped) body."""

    status: int
    headers: dict[str, str]
    content: bytes
    encoding: str
    url: str
    too_large: ResponseTooLarge | None = None

    def body(self) -> Any:
        """Parsed JSON, else text."""
        try:
            return json.loads(self.content)
        except ValueError:
            return self.text()

    def text(self) -> str:
        return self.content.decode(self.encoding, errors="replace")


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or DEFAULT_PORTS.get(url.scheme)


def _redirect_method(method: str, status: int) -> str:
    if status in (302, 303) and method != "HEAD":
        return "GET"
    if status == 301 and method == "POST":
        return "GET"
    return method


async def _read_capped(resp: httpx.Response, cap: int) -> tuple[bytes, ResponseTooLarge | None]:
    declared = resp.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        return b"", ResponseTooLarge(cap, 0, int(declared))
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.aiter_bytes():
        total += len(chunk)
        if total > cap:
            kept = cap - (total - len(chunk))
            chunks.append(chunk[:kept])
            return b"".join(chunks), ResponseTooLarge(cap, total)
        chunks.append(chunk)
    return b"".join(chunks), None


async def exchange(
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    query: dict[str, Any] | None,
    body: dict[str, Any],
    timeout_s: float,
    max_redirects: int,
    max_response_bytes: int,
    transport: httpx.AsyncBaseTransport,
) -> Exchanged:
    """Send the request, follow redirects under the rules of the module doc, and read the
    final body up to ``max_response_bytes``.

    Raises:
        HostDenied: a hop's host is refused by the URL policy (nothing was sent to it).
        TooManyRedirects: more than ``max_redirects`` redirects.
        httpx.HTTPError: the network failed; ``TimeoutError``: the whole took too long.
    """
    async with asyncio.timeout(timeout_s):
        async with httpx.AsyncClient(
            transport=transport, timeout=timeout_s, follow_redirects=False, trust_env=False
        ) as client:
            request = client.build_request(method, url, headers=headers, params=query, **body)
            origin = _origin(request.url)
            on_origin = True
            for hop in range(max_redirects + 1):
                resp = await client.send(request, stream=True)
                try:
                    location = resp.headers.get("Location")
                    if resp.status_code not in REDIRECT_CODES or not location:
                        content, too_large = await _read_capped(resp, max_response_bytes)
                        return Exchanged(
                            status=resp.status_code,
                            headers=dict(resp.headers),
                            content=content,
                            encoding=resp.encoding or "utf-8",
                            url=str(request.url),
                            too_large=too_large,
                        )
                finally:
                    await resp.aclose()  # a redirect's body is never read
                if hop == max_redirects:
                    raise TooManyRedirects(
                        f"more than {max_redirects} redirects (PLANSMITH_HTTP_MAX_REDIRECTS); "
                        f"the last one pointed to {location}"
                    )
                target = request.url.join(location)
                next_method = _redirect_method(request.method, resp.status_code)
                on_origin = on_origin and _origin(target) == origin
                keep_body = next_method == request.method and on_origin
                next_headers = {
                    k: v for k, v in headers.items() if on_origin or k.lower() in SAFE_HEADERS
                }
                request = client.build_request(
                    next_method, target, headers=next_headers, **(body if keep_body else {})
                )
    raise AssertionError("unreachable")  # pragma: no cover


__all__ = [
    "SAFE_HEADERS",
    "Exchanged",
    "GuardedTransport",
    "HostDenied",
    "ResponseTooLarge",
    "TooManyRedirects",
    "exchange",
    "resolve_host",
]
