"""LLM test doubles: a scripted ChatModel, and a transport that answers the real
Anthropic SDK from a respx router."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import httpx2
import respx

from activities.llm.base import LLMRequest, LLMResponse, ToolCall
from contracts.planning import Usage

Answer = LLMResponse | Callable[[LLMRequest], LLMResponse]


def text(t: str, *, tokens: tuple[int, int] = (10, 5)) -> LLMResponse:
    return LLMResponse(
        model="scripted",
        text=t,
        content=[{"type": "text", "text": t}],
        stop_reason="end_turn",
        usage=Usage(input_tokens=tokens[0], output_tokens=tokens[1]),
        latency_ms=3.0,
    )


def tool_use(name: str, inp: dict[str, Any], *, call_id: str | None = None) -> LLMResponse:
    cid = call_id or f"toolu_{name}_{abs(hash(repr(sorted(inp.items())))) % 10**8}"
    return LLMResponse(
        model="scripted",
        tool_calls=[ToolCall(id=cid, name=name, input=inp)],
        content=[{"type": "tool_use", "id": cid, "name": name, "input": inp}],
        stop_reason="tool_use",
        usage=Usage(input_tokens=20, output_tokens=7),
        latency_ms=4.0,
    )


class ScriptedModel:
    """Gives its answers in order; the last one repeats. Keeps every request."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[LLMRequest] = []

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.requests.append(request.model_copy(deep=True))
        i = min(len(self.requests) - 1, len(self.answers) - 1)
        answer = self.answers[i]
        return answer(request) if callable(answer) else answer


class RespxTransport(httpx2.AsyncBaseTransport):
    """An ``httpx2`` transport (what ``anthropic`` 2.x sends with) answered by a respx
    router (``httpx`` objects): the SDK builds, sends, parses and raises as usual, and
    nothing leaves the process."""

    def __init__(self, router: respx.Router):
        self.router = router

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        mirrored = httpx.Request(
            request.method, str(request.url), headers=list(request.headers.raw), content=body
        )
        try:
            answer = await self.router.async_handler(mirrored)
        except httpx.TransportError as e:  # a mocked connection error or timeout
            kind = getattr(httpx2, type(e).__name__, httpx2.TransportError)
            raise kind(str(e), request=request) from e
        content = await answer.aread()
        return httpx2.Response(
            answer.status_code, headers=list(answer.headers.raw), content=content, request=request
        )
