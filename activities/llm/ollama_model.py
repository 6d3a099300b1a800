"""Local models through Ollama's HTTP API behind the :class:`~activities.llm.base.ChatModel`
interface (``PLANSMITH_OLLAMA_URL``, e.g. ``http://127.0.0.1:11434``).

- **Only the configured server.** Every request goes to ``<PLANSMITH_OLLAMA_URL>/api/...``
  (``/api/chat``, ``/api/show``, ``/api/tags``); the model name travels in the JSON body,
  redirects are not followed, nothing else is contacted.
- **Tool calling.** ``/api/show`` tells whether the model supports tools (its
  ``capabilities``; remembered per model). A model that does gets the tools natively
  (``/api/chat`` with ``tools``). Ollama has no ``tool_choice``: when a request forces a
  tool and the model answers without calling it, or when the model has no tool support at
  all, the call is emulated: the model is asked for a JSON object (``format: "json"``) that
  is the tool's input, with the tool's schema in the prompt, and that object becomes the
  tool call. Tools offered but not forced are described in the system prompt of a model
  without tool support, which calls one by answering ``{"tool": name, "input": {...}}``.
- **The answer is hostile.** The body is read up to ``max_response_bytes`` (8 MiB) and
  must be the JSON Ollama documents; a call of a tool that was not offered, or whose
  arguments are not a JSON object (a string holding one is parsed), is refused (left
  out). Arguments that do not match the tool's schema are repaired when one obvious fix
  makes them match (an object wrapped in a single key, a JSON string where an object or
  list is expected); otherwise they go to the caller as they are, which checks them and
  sends the problems back, exactly as it does for Anthropic's answers.
- **Errors** are :class:`~contracts.errors.LLMError` s with the kinds of the Anthropic
  client: a refused connection, a timeout (every call is bounded by ``timeout_s`` as a
  whole), 429 and 5xx are retryable; 404 (the model is not pulled) is not, and says to run
  ``ollama pull <model>``, with the models the server has; other 4xx are not retryable; an
  answer that is not JSON is ``LLMBadResponse`` (retryable, like the SDK's).

Retries belong to Temporal, as for Anthropic: nothing is retried here.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
import uuid
import weakref
from typing import TYPE_CHECKING, Any

import httpx
import jsonschema

from activities.llm.base import CLIENT_ERRORS, LLMRequest, LLMResponse, ToolCall, ToolDef
from contracts.errors import LLMError
from contracts.planning import Usage

if TYPE_CHECKING:
    from config import Settings

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
CONNECT_TIMEOUT_S = 10.0
MAX_TOOL_CALLS = 16
_SHORT = 300

_NO_TOOLS = re.compile(r"does not support tools", re.IGNORECASE)
_THINK = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)  # a reasoning model's musings
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)


class OllamaModel:
    """Answers :class:`LLMRequest` s with an Ollama server's ``/api/chat``.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:11434`` (``PLANSMITH_OLLAMA_URL``).
        timeout_s: how long one HTTP call may take, from connecting to the last byte.
        http_client: an ``httpx.AsyncClient`` to send with (tests give one with a mock
            transport); by default one per event loop.
        max_response_bytes: the largest answer read; a larger one is an error.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        http_client: httpx.AsyncClient | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ):
        if not base_url:
            raise ValueError("OllamaModel needs the server's URL (PLANSMITH_OLLAMA_URL)")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self._fixed = http_client
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        # model name -> whether it supports tools (from /api/show, or a 400 "does not
        # support tools" from /api/chat)
        self.tool_support: dict[str, bool] = {}

    @classmethod
    def from_settings(
        cls, settings: Settings, http_client: httpx.AsyncClient | None = None
    ) -> OllamaModel:
        """The process's model for ``PLANSMITH_OLLAMA_URL`` (one per URL and timeout, so
        connections and what it learnt of each model are kept from call to call)."""
        url = settings.models.ollama_url
        if not url:
            raise ValueError("PLANSMITH_OLLAMA_URL is not set")
        if http_client is not None:
            return cls(url, timeout_s=settings.models.llm_timeout_s, http_client=http_client)
        return _shared(url, settings.models.llm_timeout_s)

    def __repr__(self) -> str:
        return f"OllamaModel({self.base_url!r}, timeout_s={self.timeout_s:g})"

    @property
    def client(self) -> httpx.AsyncClient:
        """The HTTP client for the running event loop (a pool belongs to one loop)."""
        if self._fixed is not None:
            return self._fixed
        loop = asyncio.get_running_loop()
        found = self._per_loop.get(loop)
        if found is None:
            found = self._per_loop[loop] = httpx.AsyncClient(follow_redirects=False)
        return found

    # --- the server's catalog -------------------------------------------------------

    async def list_models(self) -> list[str]:
        """The names of the models the server has (``/api/tags``)."""
        data = await self._call("GET", "/api/tags")
        models = data.get("models")
        if not isinstance(models, list):
            raise LLMError(
                f"unexpected answer from Ollama at {self.base_url}/api/tags: no list of models",
                retryable=True,
                kind="LLMBadResponse",
            )
        return [str(m["name"])[:200] for m in models if isinstance(m, dict) and m.get("name")]

    async def supports_tools(self, model: str) -> bool:
        """Whether ``model`` supports tool calling (``/api/show``'s ``capabilities``; an
        older server that does not list them is assumed to, until it says otherwise)."""
        known = self.tool_support.get(model)
        if known is not None:
            return known
        data = await self._call("POST", "/api/show", {"model": model}, model=model)
        caps = data.get("capabilities")
        supports = "tools" in caps if isinstance(caps, list) else True
        self.tool_support[model] = supports
        return supports

    # --- answering ------------------------------------------------------------------

    async def complete(self, request: LLMRequest) -> LLMResponse:
        started = time.monotonic()
        usage = Usage()
        forced = request.forced_tool()
        native = bool(request.tools) and await self.supports_tools(request.model)
        data: dict[str, Any] | None = None
        if request.tools and native:
            try:
                data = await self._chat(request, native=True)
            except LLMError as e:
                if e.status != 400 or not _NO_TOOLS.search(str(e)):
                    raise
                self.tool_support[request.model] = False  # learnt: emulate from now on
                native = False
        if data is not None:
            usage = usage + _usage(data)
            text, calls, stop = _parse(data, request.tools)
            if forced is None or any(c.name == forced.name for c in calls):
                return _response(data, text, calls, stop, usage, started)
            # the model ignored the forced tool: its text may be the input already
            found = _as_input(text, forced)
            if found is not None:
                calls = [_call(forced.name, found)]
                return _response(data, "", calls, "tool_use", usage, started)
        if forced is not None:
            data = await self._chat(request, native=False, json_for=forced)
            usage = usage + _usage(data)
            text, _, stop = _parse(data, [])
            found = _as_input(text, forced)
            if found is None:  # no usable object: the caller sends the problem back
                return _response(data, text, [], stop, usage, started)
            return _response(data, "", [_call(forced.name, found)], "tool_use", usage, started)
        data = await self._chat(request, native=native)
        usage = usage + _usage(data)
        text, calls, stop = _parse(data, request.tools if native else [])
        if request.tools and not native:
            emulated = _emulated_call(text, request.tools)
            if emulated is not None:
                text, calls, stop = "", [emulated], "tool_use"
        return _response(data, text, calls, stop, usage, started)

    async def _chat(
        self, request: LLMRequest, *, native: bool, json_for: ToolDef | None = None
    ) -> dict[str, Any]:
        system = request.system
        if json_for is not None:
            system = _join(system, _json_instructions(json_for))
        elif request.tools and not native:
            system = _join(system, _tool_instructions(request.tools))
        body: dict[str, Any] = {
            "model": request.model,
            "messages": to_ollama_messages(request.messages, system, native=native),
            "stream": False,
            "options": {"num_predict": request.max_tokens},
        }
        if request.temperature is not None:
            body["options"]["temperature"] = request.temperature
        if native and request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.input_schema,
                    },
                }
                for t in request.tools
            ]
        if json_for is not None:
            body["format"] = "json"
        return await self._call("POST", "/api/chat", body, model=request.model)

    # --- HTTP -----------------------------------------------------------------------

    async def _call(
        self, method: str, path: str, body: Any = None, *, model: str | None = None
    ) -> dict[str, Any]:
        """One bounded request to the server; its JSON object, or :class:`LLMError`."""
        url = f"{self.base_url}{path}"
        timeout = httpx.Timeout(self.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.timeout_s))
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.client.stream(
                    method, url, json=body, timeout=timeout, follow_redirects=False
                ) as r:
                    raw = await self._read(r, path)
                    status = r.status_code
        except (TimeoutError, httpx.TimeoutException):
            raise LLMError(
                f"Ollama at {self.base_url} did not answer {path} within {self.timeout_s:g}s",
                retryable=True,
                kind="LLMConnectionError",
            ) from None
        except httpx.TransportError as e:
            raise LLMError(
                f"cannot reach Ollama at {self.base_url}: {type(e).__name__}: {e}"[:500],
                retryable=True,
                kind="LLMConnectionError",
            ) from None
        if status >= 300:
            raise await self._status_error(status, raw, path, model)
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise LLMError(
                f"unexpected answer from Ollama at {self.base_url}{path}: not JSON: {_short(raw)}",
                retryable=True,
                kind="LLMBadResponse",
            ) from None
        if not isinstance(data, dict):
            raise LLMError(
                f"unexpected answer from Ollama at {self.base_url}{path}: not a JSON object",
                retryable=True,
                kind="LLMBadResponse",
            )
        return data

    async def _read(self, r: httpx.Response, path: str) -> bytes:
        declared = r.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_response_bytes:
            raise self._too_large(path)
        chunks: list[bytes] = []
        size = 0
        async for chunk in r.aiter_bytes():
            size += len(chunk)
            if size > self.max_response_bytes:
                raise self._too_large(path)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, path: str) -> LLMError:
        return LLMError(
            f"Ollama at {self.base_url}{path} answered more than "
            f"{self.max_response_bytes} bytes; the answer was not read",
            retryable=False,
            kind="LLMResponseTooLarge",
        )

    async def _status_error(
        self, status: int, raw: bytes, path: str, model: str | None
    ) -> LLMError:
        said = _error_text(raw)
        if 300 <= status < 400:
            return LLMError(
                f"Ollama at {self.base_url}{path} answered a redirect ({status}); "
                "redirects are not followed: check PLANSMITH_OLLAMA_URL",
                retryable=False,
                kind="LLMBadRequest",
                status=status,
            )
        if status == 404 and model is not None:
            has = await self._models_hint()
            return LLMError(
                f"Ollama at {self.base_url} has no model {model!r} ({said}): run "
                f"`ollama pull {model}` on the Ollama host, or configure a model it has"
                f"{has}",
                retryable=False,
                kind="LLMNotFound",
                status=404,
            )
        if status in CLIENT_ERRORS:
            retryable, kind = CLIENT_ERRORS[status]
        elif status >= 500:
            retryable, kind = True, "LLMServerError"
        else:
            retryable, kind = False, "LLMClientError"
        return LLMError(
            f"Ollama at {self.base_url}{path} answered {status}: {said}",
            retryable=retryable,
            kind=kind,
            status=status,
        )

    async def _models_hint(self) -> str:
        """``; it has: a, b`` from ``/api/tags``, or nothing if that fails too."""
        try:
            names = await self.list_models()
        except LLMError:
            return ""
        if not names:
            return "; it has no models yet"
        more = f" and {len(names) - 20} more" if len(names) > 20 else ""
        return "; it has: " + ", ".join(names[:20]) + more


@functools.lru_cache(maxsize=8)
def _shared(base_url: str, timeout_s: float) -> OllamaModel:
    return OllamaModel(base_url, timeout_s=timeout_s)


# --- the conversation, in Ollama's shape ------------------------------------------------


def to_ollama_messages(
    messages: list[dict[str, Any]], system: str, *, native: bool
) -> list[dict[str, Any]]:
    """The conversation (Anthropic-shaped, :mod:`activities.llm.base`) as Ollama's chat
    messages. ``native``: tool calls and results as Ollama's ``tool_calls`` and ``tool``
    messages; otherwise as text, for a model without tool support."""
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": system})
    names: dict[str, str] = {}  # tool_use id -> tool name
    for m in messages:
        role = "assistant" if m.get("role") == "assistant" else "user"
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for block in content or []:
            kind = block.get("type")
            if kind == "text":
                texts.append(str(block.get("text", "")))
            elif kind == "tool_use":
                names[str(block.get("id"))] = str(block.get("name"))
                calls.append(block)
            elif kind == "tool_result":
                results.append(block)
        if role == "assistant":
            if native:
                msg: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts)}
                if calls:
                    msg["tool_calls"] = [
                        {"function": {"name": c.get("name"), "arguments": c.get("input") or {}}}
                        for c in calls
                    ]
                out.append(msg)
            else:
                said = texts + [
                    json.dumps({"tool": c.get("name"), "input": c.get("input") or {}})
                    for c in calls
                ]
                out.append({"role": "assistant", "content": "\n".join(said)})
            continue
        for r in results:
            name = names.get(str(r.get("tool_use_id")), "tool")
            text = _result_text(r.get("content"))
            if r.get("is_error"):
                text = f"ERROR: {text}"
            if native:
                out.append({"role": "tool", "content": text, "tool_name": name})
            else:
                out.append({"role": "user", "content": f"Result of the tool {name}: {text}"})
        if texts:
            out.append({"role": "user", "content": "\n".join(texts)})
    return out


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) if isinstance(b, dict) else str(b) for b in content)
    return "" if content is None else json.dumps(content)


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def _tool_instructions(tools: list[ToolDef]) -> str:
    lines = [
        "You can call tools. To call one, answer with only a JSON object "
        '{"tool": "<name>", "input": {...}} whose input matches the tool\'s input schema, '
        "and nothing else. To answer without a tool, answer in plain text.",
        "The tools:",
    ]
    for t in tools:
        lines.append(f"- {t.name}: {t.description}".rstrip(": "))
        lines.append(f"  input schema: {json.dumps(t.input_schema, sort_keys=True)}")
    return "\n".join(lines)


def _json_instructions(tool: ToolDef) -> str:
    return (
        f"Answer with only a JSON object, and nothing else: the input of the tool "
        f"`{tool.name}`{f' ({tool.description})' if tool.description else ''}. "
        f"It must be valid against this JSON schema:\n"
        f"{json.dumps(tool.input_schema, sort_keys=True)}"
    )


# --- the answer, checked ----------------------------------------------------------------


def _bad(message: str) -> LLMError:
    return LLMError(
        f"unexpected answer from Ollama: {message}", retryable=True, kind="LLMBadResponse"
    )


def _parse(data: dict[str, Any], offered: list[ToolDef]) -> tuple[str, list[ToolCall], str | None]:
    """The text, the tool calls that may be used, and the stop reason of a chat answer."""
    message = data.get("message")
    if not isinstance(message, dict):
        raise _bad("no message")
    text = message.get("content") or ""
    if not isinstance(text, str):
        raise _bad("the message's content is not text")
    text = _THINK.sub("", text, count=1)
    raw_calls = message.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise _bad("tool_calls is not a list")
    tools = {t.name: t for t in offered}
    calls: list[ToolCall] = []
    for raw in raw_calls[:MAX_TOOL_CALLS]:
        fn = raw.get("function") if isinstance(raw, dict) else None
        if not isinstance(fn, dict):
            continue
        name = fn.get("name")
        tool = tools.get(name) if isinstance(name, str) else None
        if tool is None:
            continue  # a tool that was not offered: refused
        args = _object(fn.get("arguments"))
        if args is None:
            continue  # arguments that are not an object: refused
        calls.append(_call(tool.name, repair(args, tool.input_schema)))
    stop = (
        "tool_use"
        if calls
        else "max_tokens"
        if data.get("done_reason") == "length"
        else ("end_turn")
    )
    return text, calls, stop


def _object(value: Any) -> dict[str, Any] | None:
    """``value`` as a JSON object: itself, or the object a string holds; else None."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _json_in(text: str) -> dict[str, Any] | None:
    """The JSON object a text answer is (or holds, in a code fence or among words)."""
    s = text.strip()
    fenced = _FENCE.match(s)
    if fenced:
        s = fenced.group(1).strip()
    found = _object(s)
    if found is None and "{" in s and "}" in s:
        found = _object(s[s.index("{") : s.rindex("}") + 1])
    return found


def _as_input(text: str, tool: ToolDef) -> dict[str, Any] | None:
    """The input for ``tool`` in a text answer: the object itself, or one wrapped as
    ``{"tool": name, "input": {...}}`` (or ``name``/``arguments``)."""
    found = _json_in(text)
    if found is None:
        return None
    for name_key, args_key in (("tool", "input"), ("name", "arguments"), ("name", "parameters")):
        if found.get(name_key) == tool.name and set(found) <= {name_key, args_key}:
            inner = _object(found.get(args_key))
            if inner is not None:
                found = inner
            break
    return repair(found, tool.input_schema)


def _emulated_call(text: str, offered: list[ToolDef]) -> ToolCall | None:
    """The tool call a model without tool support wrote as ``{"tool", "input"}``."""
    found = _json_in(text)
    if found is None:
        return None
    tools = {t.name: t for t in offered}
    for name_key, args_key in (("tool", "input"), ("name", "arguments")):
        name = found.get(name_key)
        if isinstance(name, str) and name in tools:
            args = _object(found.get(args_key, {}))
            if args is None:
                return None
            return _call(name, repair(args, tools[name].input_schema))
    return None


def _valid(value: Any, schema: dict[str, Any]) -> bool:
    try:
        return jsonschema.Draft202012Validator(schema).is_valid(value)
    except Exception:  # a schema jsonschema cannot use: nothing to check against here
        return True


def repair(args: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``args`` made valid against ``schema`` by one obvious fix, when that works:
    an object wrapped in a single key (``{"input": {...}}``), or JSON strings where the
    schema's properties want an object or a list. Otherwise ``args`` unchanged (the
    caller checks it and sends the problems back to the model)."""
    if _valid(args, schema):
        return args
    if len(args) == 1:
        inner = _object(next(iter(args.values())))
        if inner is not None and _valid(inner, schema):
            return inner
    found = schema.get("properties")
    props: dict[str, Any] = found if isinstance(found, dict) else {}
    fixed = dict(args)
    for key, value in args.items():
        prop = props.get(key)
        want = prop.get("type") if isinstance(prop, dict) else None
        if isinstance(value, str) and want in ("object", "array"):
            try:
                parsed = json.loads(value)
            except ValueError:
                continue
            if isinstance(parsed, dict if want == "object" else list):
                fixed[key] = parsed
    if fixed != args and _valid(fixed, schema):
        return fixed
    return args


def _call(name: str, args: dict[str, Any]) -> ToolCall:
    return ToolCall(id=f"call_{uuid.uuid4().hex[:20]}", name=name, input=args)


def _usage(data: dict[str, Any]) -> Usage:
    def count(key: str) -> int:
        v = data.get(key)
        return v if isinstance(v, int) and 0 <= v < 10**9 else 0

    return Usage(input_tokens=count("prompt_eval_count"), output_tokens=count("eval_count"))


def _response(
    data: dict[str, Any],
    text: str,
    calls: list[ToolCall],
    stop: str | None,
    usage: Usage,
    started: float,
) -> LLMResponse:
    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "text", "text": text})
    for c in calls:
        content.append({"type": "tool_use", "id": c.id, "name": c.name, "input": c.input})
    model = data.get("model")
    return LLMResponse(
        model=model[:200] if isinstance(model, str) and model else "ollama",
        text=text,
        tool_calls=calls,
        content=content,
        stop_reason=stop,
        usage=usage,
        latency_ms=(time.monotonic() - started) * 1000,
        offline=False,
    )


def _error_text(raw: bytes) -> str:
    """What an error answer says: Ollama's ``{"error": "..."}``, else the body, short."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _short(raw) or "no message"
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"][:_SHORT]
    return _short(raw) or "no message"


def _short(raw: bytes) -> str:
    return raw[:_SHORT].decode("utf-8", "replace").strip()
