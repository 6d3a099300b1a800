"""Names in a node's expressions, prompts and paths, rewritten to Plansmith's.

A node of the nodes/edges execution API speaks of ``input`` (its upstream output),
``<node id>.output``, ``inputs.x``/``input_data.x``/``variables.x`` or a bare
``input_data`` key; :class:`NodeNames` turns those into Plansmith expressions and
templates over ``steps.<id>.output`` and ``inputs``. :class:`Upstream` is what a node
reads as its data.
"""

from __future__ import annotations

import json
import re
from typing import Any

from plans.graph_document import TranslationContext

_KEYWORDS = frozenset(
    [
        "and",
        "or",
        "not",
        "in",
        "is",
        "if",
        "else",
        "true",
        "false",
        "null",
        "none",
        "True",
        "False",
        "None",
        "answer",
        "feedback",
        "steps",
    ]
)
_FUNCTIONS = frozenset(
    [
        "len",
        "str",
        "int",
        "float",
        "bool",
        "abs",
        "min",
        "max",
        "sum",
        "round",
        "any",
        "all",
        "sorted",
        "lower",
        "upper",
        "contains",
    ]
)
_INPUT_ROOTS = frozenset({"inputs", "input_data", "variables", "vars", "params", "inputData"})
_UPSTREAM_ROOTS = frozenset({"input", "$input", "data", "previous", "prev"})
_TOKEN = re.compile(
    r"""(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
    r"""|(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"""
    r"""|(?P<op>===|!==|&&|\|\||!(?!=))"""
    r"""|(?P<name>\$?[A-Za-z_][A-Za-z0-9_-]*)"""
    r"""|(?P<other>.)""",
    re.DOTALL,
)


class Upstream:
    """The upstream of a node: its dependency steps (by node id)."""

    def __init__(self, ctx: TranslationContext, node_id: str, deps: list[str]):
        self.ctx, self.node_id, self.deps = ctx, node_id, deps

    def data_template(self) -> Any:
        """What a transform/output node reads: one upstream output, several by node id, or
        the plan's inputs."""
        if not self.deps:
            return "{{ inputs }}"
        if len(self.deps) == 1:
            return "{{ " + _step_output(self.ctx.step_ids[self.deps[0]]) + " }}"
        return {d: "{{ " + _step_output(self.ctx.step_ids[d]) + " }}" for d in self.deps}


def _step_output(step_id: str) -> str:
    return f"steps.{step_id}.output"


def _inputs_ref(key: str) -> str:
    return (
        f"inputs.{key}"
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key)
        else (f"inputs[{json.dumps(key)}]")
    )


class NodeNames:
    """Rewrites a node's names to Plansmith ones (for one node, whose upstream is ``deps``)."""

    def __init__(self, ctx: TranslationContext, node_id: str, deps: list[str]):
        self.ctx, self.node_id, self.deps = ctx, node_id, deps

    def _upstream(self, where: str, name: str) -> str | None:
        if len(self.deps) == 1:
            return _step_output(self.ctx.step_ids[self.deps[0]])
        if not self.deps:
            return "inputs"
        self.ctx.add(
            where,
            f"{name!r} is ambiguous: node {self.node_id!r} has several upstream nodes "
            f"({', '.join(self.deps)}); name one as <node id>.output",
        )
        return None

    def _root(self, name: str, rest: str, where: str) -> tuple[str | None, str]:
        """Translate a leading name (and maybe swallow ``.output`` after a node id)."""
        if name in self.ctx.nodes and self.ctx.kinds.get(name) not in (None, "condition"):
            rest = re.sub(r"^\.(output|result|outputs)\b", "", rest)
            return _step_output(self.ctx.step_ids[name]), rest
        if name in _UPSTREAM_ROOTS:
            return self._upstream(where, name), rest
        if name in _INPUT_ROOTS:
            return "inputs", rest
        if name in self.ctx.inputs:
            return _inputs_ref(name), rest
        if self.deps and len(self.deps) == 1:
            return f"{_step_output(self.ctx.step_ids[self.deps[0]])}.{name}", rest
        self.ctx.add(
            where,
            f"unknown name {name!r}: use input, inputs.<key>, <node id>.output or an input_data key",
        )
        return None, rest

    def expression(self, text: str, where: str) -> str | None:
        """A condition or placeholder expression in Plansmith's expression language."""
        # ``{{ score }} > 0.5``: a placeholder inside an expression is just its value.
        text = re.sub(r"\{\{\s*(.*?)\s*\}\}", r"(\1)", text.strip(), flags=re.DOTALL)
        out: list[str] = []
        problems_before = len(self.ctx.problems)
        pos = 0
        prev_sig = ""
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            assert m is not None  # the last alternative matches any character
            pos = m.end()
            if m.group("str") is not None:
                out.append(m.group("str"))
                prev_sig = '"'
                continue
            if m.group("num") is not None:
                out.append(m.group("num"))
                prev_sig = "0"
                continue
            op = m.group("op")
            if op is not None:
                out.append(
                    {"===": "==", "!==": "!=", "&&": " and ", "||": " or ", "!": " not "}[op]
                )
                prev_sig = op
                continue
            name = m.group("name")
            if name is None:
                ch = m.group("other")
                out.append(ch)
                if not ch.isspace():
                    prev_sig = ch
                continue
            if prev_sig == ".":
                out.append(name)
                prev_sig = "n"
                continue
            # A node id may contain '-': prefer the longest known node id at this place.
            for nid in sorted(self.ctx.nodes, key=len, reverse=True):
                if text.startswith(nid, m.start()) and (
                    m.start() + len(nid) == len(text)
                    or not re.match(r"[A-Za-z0-9_-]", text[m.start() + len(nid)])
                ):
                    name, pos = nid, m.start() + len(nid)
                    break
            else:
                if "-" in name:  # not a node id: a subtraction such as a-b
                    head = name.split("-", 1)[0]
                    pos = m.start() + len(head)
                    name = head
            rest_match = re.match(r"(\.[A-Za-z_][A-Za-z0-9_]*)*", text[pos:])
            rest = rest_match.group(0) if rest_match else ""
            follows_call = re.match(r"\s*\(", text[pos:]) is not None
            # A node may be called like a keyword ("in"): it is the node when read from.
            node_ref = name in self.ctx.nodes and text[pos : pos + 1] == "."
            if not node_ref and (name in _KEYWORDS or (name in _FUNCTIONS and follows_call)):
                out.append({"undefined": "null"}.get(name, name))
                prev_sig = "n"
                continue
            if name == "undefined":
                out.append("null")
                prev_sig = "n"
                continue
            root, rest2 = self._root(name, rest, where)
            if root is None:
                continue
            out.append(root + rest2)
            pos += len(rest)
            prev_sig = "n"
        if len(self.ctx.problems) > problems_before:
            return None
        return re.sub(r"\s+", " ", "".join(out)).strip()

    def path(self, text: str, where: str) -> str | None:
        """A dotted path (``input.score``, ``$.a[0]``) as a Plansmith expression."""
        p = text.strip().removeprefix("$.").removeprefix("$")
        if not p:
            return self._upstream(where, "$")
        parts = path_parts(p)
        if parts is None:
            self.ctx.add(where, f"cannot read path {text!r}")
            return None
        head, tail = parts[0], parts[1:]
        if isinstance(head, int):
            base = self._upstream(where, text)
            tail = parts
        else:
            base, _ = self._root(head, "", where)
            if head in self.ctx.nodes and tail and tail[0] in ("output", "result"):
                tail = tail[1:]
        if base is None:
            return None
        out = base
        for part in tail:
            out += f"[{part}]" if isinstance(part, int) else f"[{json.dumps(part)}]"
        return out

    def template(self, text: str, where: str) -> str:
        """A prompt: ``{{ ... }}`` and ``{name}`` placeholders become Plansmith templates."""

        def double(m: re.Match[str]) -> str:
            expr = self.expression(m.group(1), where)
            return "{{ " + expr + " }}" if expr is not None else m.group(0)

        text = re.sub(r"\{\{\s*(.*?)\s*\}\}", double, text, flags=re.DOTALL)

        def single(m: re.Match[str]) -> str:
            name = m.group(1)
            head = re.split(r"[.\[]", name, maxsplit=1)[0]
            if (
                head in self.ctx.inputs
                or head in _UPSTREAM_ROOTS
                or head in _INPUT_ROOTS
                or (head in self.ctx.nodes and self.ctx.kinds.get(head) != "condition")
            ):
                expr = self.expression(name, where)
                if expr is not None:
                    return "{{ " + expr + " }}"
            return m.group(0)  # literal braces (JSON in a prompt, say) stay as they are

        return re.sub(
            r"(?<!\{)\{\s*([A-Za-z_$][A-Za-z0-9_.\-\[\]]*)\s*\}(?!\})",
            single,
            text,
        )


def path_parts(p: str) -> list[str | int] | None:
    parts: list[str | int] = []
    for m in re.finditer(r"([^.\[\]]+)|\[(\d+)\]|\[['\"]([^'\"]+)['\"]\]|(\.)", p):
        if m.group(1) is not None:
            seg = m.group(1)
            parts.append(int(seg) if seg.isdigit() else seg)
        elif m.group(2) is not None:
            parts.append(int(m.group(2)))
        elif m.group(3) is not None:
            parts.append(m.group(3))
    return parts or None
