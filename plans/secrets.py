"""Secrets by reference: ``{{ secrets.NAME }}`` in a tool step's params.

A plan names a secret; it never holds its value. The workflow leaves the reference as it
is when it renders a step's params (:func:`plans.expressions.render`), so Temporal's
history, the store, the audit trail and every view of the run carry only the reference.
The step activity resolves it from the worker's secrets right before the tool runs and
redacts the value (as ``***``) from what comes back.

The rules, checked by :func:`secret_problems` (part of plan validation):

- a reference is exactly ``{{ secrets.NAME }}`` (NAME: letters, digits, ``_``), alone or
  inside a longer string (``"Bearer {{ secrets.API_TOKEN }}"``), never inside an expression;
- a string that holds a reference holds no other template (so what a step or an input
  produces can never become a reference);
- only a tool step's params may use one, and only a tool that runs in ``execute_step``
  (not the sandbox): an ``llm``, ``decision`` or ``validation`` step sends its params to a
  model or keeps them in the run's state, and a ``when`` condition is evaluated by the
  workflow, so a secret never reaches them.

Pure code: which names exist is known only where the secrets are (the worker), and is
passed in as ``known``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from plans.expressions import SECRET_REF_RE, TEMPLATE_RE, ExpressionError, references
from plans.models import Plan, Step, StepKind, ToolSpec

ROOT = "secrets"
NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"
NAME_RE = re.compile(f"^{NAME_PATTERN}$")
REDACTED = "***"

ParamPath = list[str | int]


def is_secret_template(template: str) -> bool:
    """Whether ``template`` (a whole ``{{ ... }}``) is one secret reference."""
    return SECRET_REF_RE.fullmatch(template.strip()) is not None


def names_in(text: str) -> list[str]:
    """The secret names referenced in ``text``, in order."""
    return SECRET_REF_RE.findall(text)


def secret_paths(params: Any, path: ParamPath | None = None) -> Iterator[tuple[ParamPath, str]]:
    """``(path, string)`` for every string of ``params`` that references a secret."""
    path = path or []
    if isinstance(params, str):
        if SECRET_REF_RE.search(params):
            yield path, params
    elif isinstance(params, dict):
        for k, v in params.items():
            yield from secret_paths(v, [*path, str(k)])
    elif isinstance(params, list):
        for i, v in enumerate(params):
            yield from secret_paths(v, [*path, i])


def location(path: ParamPath, prefix: str = "params") -> str:
    """``params.headers.Authorization``, ``params.args[0]``."""
    return prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def referenced(plan: Plan) -> list[tuple[str, str]]:
    """``(location, name)`` of every secret reference of the plan's steps' params."""
    out = []
    for i, step in enumerate(plan.steps):
        for path, text in secret_paths(step.params):
            out += [(location(path, f"steps[{i}].params"), name) for name in names_in(text)]
    return out


def unknown(plan: Plan, known: Collection[str]) -> list[tuple[str, str]]:
    """``(location, message)`` for every reference to a secret not in ``known``."""
    return [
        (where, f"unknown secret {name}") for where, name in referenced(plan) if name not in known
    ]


def _mentions_secrets(expr: str) -> bool:
    try:
        return any(ref.root == ROOT for ref in references(expr))
    except ExpressionError:
        return False


def secret_problems(
    plan: Plan, catalog: Mapping[str, ToolSpec], known: Collection[str] | None = None
) -> list[tuple[str, str]]:
    """``(location, message)`` for every misuse of a secret reference, and (when ``known``
    names the secrets that exist) every reference to an unknown one. (A ``when`` or a
    check that reads ``secrets`` is refused by the expression checks of validation.)"""
    problems: list[tuple[str, str]] = []
    for i, step in enumerate(plan.steps):
        problems += _step_problems(step, f"steps[{i}]", catalog)
    if known is not None:
        problems += unknown(plan, known)
    return problems


def _step_problems(
    step: Step, where: str, catalog: Mapping[str, ToolSpec]
) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    has_ref = False
    for path, text in _strings(step.params):
        loc = location(path, f"{where}.params")
        templates = [m.group(0) for m in TEMPLATE_RE.finditer(text)]
        refs = [t for t in templates if is_secret_template(t)]
        for t in templates:
            inner = TEMPLATE_RE.fullmatch(t)
            if t not in refs and inner and _mentions_secrets(inner.group(1)):
                problems.append(
                    (
                        loc,
                        f"a secret is written {{{{ secrets.NAME }}}} on its own, not inside an "
                        f"expression ({t})",
                    )
                )
        if not refs:
            continue
        has_ref = True
        if len(refs) < len(templates):
            problems.append(
                (
                    loc,
                    "a string that uses a secret may hold no other template; put the other "
                    "value in a param of its own",
                )
            )
    if not has_ref:
        return problems
    if step.kind != StepKind.TOOL:
        problems.append(
            (
                f"{where}.params",
                f"secrets may be used only in a tool step's params, never in a step of kind "
                f"{step.kind.value!r} (its params go to a model or into the run's state)",
            )
        )
    else:
        spec = catalog.get(step.tool or "")
        if spec is not None and spec.activity:
            problems.append(
                (
                    f"{where}.params",
                    f"tool {spec.name!r} runs in its own activity ({spec.activity}), "
                    "which is not given secrets",
                )
            )
    return problems


def _strings(value: Any, path: ParamPath | None = None) -> Iterator[tuple[ParamPath, str]]:
    path = path or []
    if isinstance(value, str):
        if "{{" in value:
            yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, [*path, str(k)])
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, [*path, i])
