"""What the Ollama server at ``PLANSMITH_OLLAMA_URL`` has: its models (``GET /api/tags``)
and what each can do (``POST /api/show``'s ``capabilities``: ``tools``, ``thinking``…),
for ``GET /api/models/ollama``.

Only the configured URL is asked, without following redirects; every call is bounded
(``TIMEOUT_S`` as a whole, answers up to ``MAX_BYTES``) and at most ``MAX_MODELS`` models
are shown. The answers are the server's and are treated as untrusted: names and words
are cut short, anything not of the documented shape is left out.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

TIMEOUT_S = 10.0
MAX_BYTES = 4 * 1024 * 1024
MAX_MODELS = 100
SHOW_AT_ONCE = 4


class OllamaUnavailable(Exception):
    """The server could not be asked, or did not answer as Ollama does."""


async def _get_json(
    http: httpx.AsyncClient, method: str, url: str, body: Any = None
) -> dict[str, Any]:
    try:
        async with asyncio.timeout(TIMEOUT_S):
            async with http.stream(method, url, json=body, follow_redirects=False) as r:
                chunks: list[bytes] = []
                size = 0
                async for chunk in r.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_BYTES:
                        raise OllamaUnavailable(f"{url} answered more than {MAX_BYTES} bytes")
                    chunks.append(chunk)
                status = r.status_code
    except TimeoutError:
        raise OllamaUnavailable(f"{url} did not answer within {TIMEOUT_S:g}s") from None
    except httpx.HTTPError as e:
        raise OllamaUnavailable(f"cannot reach {url}: {type(e).__name__}: {e}"[:300]) from None
    if status != 200:
        raise OllamaUnavailable(f"{url} answered {status}")
    try:
        data = json.loads(b"".join(chunks))
    except ValueError:
        raise OllamaUnavailable(f"{url} did not answer JSON") from None
    if not isinstance(data, dict):
        raise OllamaUnavailable(f"{url} did not answer a JSON object")
    return data


def _text(value: Any, limit: int = 100) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


async def ollama_models(
    base_url: str, *, transport: httpx.AsyncBaseTransport | None = None
) -> list[dict[str, Any]]:
    """Each model of the server: ``name``, ``size`` (bytes), ``family``,
    ``parameter_size``, ``quantization``, ``capabilities`` (None when the server does not
    say) and ``tools`` (whether it supports tool calling; None when unknown).

    Raises:
        OllamaUnavailable: ``/api/tags`` could not be read.
    """
    timeout = httpx.Timeout(TIMEOUT_S, connect=min(5.0, TIMEOUT_S))
    async with httpx.AsyncClient(
        timeout=timeout, follow_redirects=False, transport=transport
    ) as http:
        tags = await _get_json(http, "GET", f"{base_url}/api/tags")
        raw = tags.get("models")
        if not isinstance(raw, list):
            raise OllamaUnavailable(f"{base_url}/api/tags has no list of models")
        models: list[dict[str, Any]] = []
        for m in raw[:MAX_MODELS]:
            name = _text(m.get("name"), 200) if isinstance(m, dict) else None
            if name is None:
                continue
            details = m.get("details") if isinstance(m.get("details"), dict) else {}
            size = m.get("size")
            models.append(
                {
                    "name": name,
                    "size": size if isinstance(size, int) and size >= 0 else None,
                    "family": _text(details.get("family")),
                    "parameter_size": _text(details.get("parameter_size")),
                    "quantization": _text(details.get("quantization_level")),
                    "capabilities": None,
                    "tools": None,
                }
            )
        gate = asyncio.Semaphore(SHOW_AT_ONCE)

        async def show(model: dict[str, Any]) -> None:
            async with gate:
                try:
                    data = await _get_json(
                        http, "POST", f"{base_url}/api/show", {"model": model["name"]}
                    )
                except OllamaUnavailable:
                    return  # unknown, not fatal
            caps = data.get("capabilities")
            if isinstance(caps, list):
                model["capabilities"] = [c[:50] for c in caps if isinstance(c, str)][:20]
                model["tools"] = "tools" in model["capabilities"]

        await asyncio.gather(*(show(m) for m in models))
    return models
