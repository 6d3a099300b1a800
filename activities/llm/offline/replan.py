"""The offline model's answer to ``propose_replan`` (the replanner without a model).

It reads the ``<failure>`` section (:func:`activities.llm.replanner.failure_text`) and
proposes what a rule can:

- the error says the failure is transient (a timeout, an answer 429 or 5xx,
  "unavailable", "try again", "flaky", a connection error): a correction with more
  retries (``max_retries`` + 3, at least 3) and a retry delay, and for a timeout also a
  longer step ``timeout_s`` (doubled, at least 60 s) -- and when the error names the
  tool's own ``timeout_s=N`` (``http_request``), that param doubled (at least 30 s);
- the error names a parameter that is missing or not allowed (``'x' is a required
  property``, ``unexpected parameter 'x'``): a correction that removes the unexpected one
  (a missing one it cannot invent: nothing);
- anything else: ``none``, with the reason, so a person decides.
"""

from __future__ import annotations

import json
import re
from typing import Any

from activities.llm.base import LLMRequest
from activities.llm.offline.reading import tag

TRANSIENT = re.compile(
    r"\b((answered|HTTP|status)[ :]+(429|5\d\d)|timed? ?out|timeout\w*|unavailable|"
    r"try again|temporar\w*|flaky|rate.?limit\w*|too many requests|HttpServerError|"
    r"ConnectionError|connection (refused|reset|error))\b",
    re.I,
)
TOOL_TIMEOUT = re.compile(r"timeout_s=(\d+(?:\.\d+)?)")
TIMEOUT = re.compile(r"\b(timed? ?out|timeout\w*|deadline)\b", re.I)
UNEXPECTED = re.compile(
    r"(?:unexpected|unknown|not allowed)[^'\"]{0,40}['\"]([A-Za-z_][\w-]*)['\"]", re.I
)


def offline_replan(request: LLMRequest) -> dict[str, Any]:
    text = "\n".join(
        b.get("text", "")
        for m in request.messages
        if m.get("role") == "user" and isinstance(m.get("content"), list)
        for b in m["content"]
        if isinstance(b, dict)
    )
    try:
        failure = json.loads(tag(text, "failure") or "{}")
    except ValueError:
        failure = {}
    error = str(failure.get("error") or "")
    step = failure.get("step") if isinstance(failure.get("step"), dict) else {}
    options = failure.get("plan_options") or {}
    transient = TRANSIENT.search(error)
    if transient:
        retries = int(step.get("max_retries", options.get("default_max_retries", 0)) or 0)
        updated: dict[str, Any] = {
            "max_retries": max(retries + 3, 3),
            "retry_delay_s": max(float(step.get("retry_delay_s") or 0), 0.5),
        }
        why = f"the error looks transient ({transient.group(0)})"
        if TIMEOUT.search(error):
            timeout = float(step.get("timeout_s") or options.get("step_timeout_s") or 30)
            updated["timeout_s"] = max(timeout * 2, 60.0)
            why += f"; a longer timeout ({updated['timeout_s']:g}s)"
            own = TOOL_TIMEOUT.search(error)
            if own:  # the tool's own time limit (http_request's timeout_s) ran out
                longer = max(float(own.group(1)) * 2, 30.0)
                updated["params"] = {"timeout_s": longer}
                updated["timeout_s"] = max(updated["timeout_s"], longer * 2)
                why += f" and the tool's own timeout_s {longer:g}s"
        return {
            "kind": "correction",
            "reason": f"[offline] {why}: retry with {updated['max_retries']} retries",
            "updated_step": updated,
        }
    found = UNEXPECTED.search(error)
    raw = step.get("params")
    params: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if found and found.group(1) in params:
        name = found.group(1)
        return {
            "kind": "correction",
            "reason": f"[offline] the error says parameter {name!r} is not expected: removed",
            "updated_step": {"params": {name: None}},
        }
    return {
        "kind": "none",
        "reason": "[offline] no rule fits this error (not transient, no parameter named): "
        "a person decides",
    }
