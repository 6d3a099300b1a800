"""The params of the step each node type becomes (``input``, ``transform`` and
``output`` become ``transform`` tool steps over JMESPath; ``llm`` an ``llm`` step). The
config keys each type reads are listed in :mod:`plans.graph_import`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import jmespath
import jmespath.exceptions

from plans.graph_document import GraphNode, TranslationContext, config_of
from plans.graph_names import NodeNames, Upstream, path_parts

# --- paths, mappings and templates in JMESPath -----------------------------------------


def _jmes_ident(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else json.dumps(name)


def _literal(value: Any) -> str:
    return "`" + json.dumps(value).replace("`", "\\`") + "`"


def path_to_jmespath(path: str) -> str | None:
    """``$.a.b[0]`` / ``input.a.b.0`` / ``a['x y']`` as a JMESPath expression (None if empty)."""
    p = path.strip().removeprefix("$.").removeprefix("$")
    for prefix in ("input.", "data."):
        p = p.removeprefix(prefix)
    if p in ("", "input", "data", "@"):
        return "@"
    parts = path_parts(p)
    if parts is None:
        return None
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + _jmes_ident(part)
    return out if not out.startswith("[") else "@" + out


def _check_jmespath(ctx: TranslationContext, expr: str, where: str) -> str | None:
    try:
        jmespath.compile(expr)
    except jmespath.exceptions.JMESPathError as e:
        ctx.add(where, f"not a JMESPath expression: {e}")
        return None
    return expr


def _template_to_jmespath(template: str) -> str:
    pieces: list[str] = []
    pos = 0
    pattern = re.compile(r"\{\{\s*(.*?)\s*\}\}|\{\s*([A-Za-z_$][A-Za-z0-9_.\[\]'\"$-]*)\s*\}")
    for m in pattern.finditer(template):
        if m.start() > pos:
            pieces.append(_literal(template[pos : m.start()]))
        path = path_to_jmespath(m.group(1) or m.group(2)) or "@"
        pieces.append(f'to_string(not_null({path}, `""`))')
        pos = m.end()
    if pos < len(template):
        pieces.append(_literal(template[pos:]))
    if not pieces:
        return _literal("")
    return f"join('', [{', '.join(pieces)}])"


def _mapping_fields(ctx: TranslationContext, value: Any, where: str) -> dict[str, str] | None:
    fields: dict[str, str] = {}
    items: list[tuple[str, Any, Any, str]] = []
    if isinstance(value, dict):
        items = [(str(k), v, None, f"{where}.{k}") for k, v in value.items()]
    elif isinstance(value, list):
        for i, m in enumerate(value):
            if not isinstance(m, dict) or not isinstance(m.get("target", m.get("to")), str):
                ctx.add(f"{where}[{i}]", "a mapping entry is {source, target, default?}")
                return None
            items.append(
                (
                    str(m.get("target", m.get("to"))),
                    m.get("source", m.get("from", m.get("path"))),
                    m.get("default"),
                    f"{where}[{i}]",
                )
            )
    else:
        ctx.add(where, "a mapping is {output key: path} or a list of {source, target}")
        return None
    for target, source, default, loc in items:
        if not isinstance(source, str):
            ctx.add(loc, "the source of a mapping must be a path string")
            return None
        expr = path_to_jmespath(source)
        if expr is None:
            ctx.add(loc, f"cannot read path {source!r}")
            return None
        if default is not None:
            expr = f"not_null({expr}, {_literal(default)})"
        checked = _check_jmespath(ctx, expr, loc)
        if checked is None:
            return None
        fields[target] = checked
    return fields


# --- params per node type ---------------------------------------------------------------


def _first(cfg: Mapping[str, Any], *keys: str) -> tuple[str, Any] | None:
    for k in keys:
        if k in cfg and cfg[k] is not None:
            return k, cfg[k]
    return None


def input_params(ctx: TranslationContext, node: GraphNode, up: Upstream) -> dict[str, Any]:
    cfg = config_of(node)
    found = _first(cfg, "fields", "input_fields", "inputFields", "variables", "inputs")
    if found is None:
        return {"data": "{{ inputs }}", "expression": "@"}
    key, spec = found
    where = ctx.where(node.id, f".config.{key}")
    entries: list[tuple[str, dict[str, Any]]] = []
    if isinstance(spec, dict):
        entries = [(str(k), v if isinstance(v, dict) else {}) for k, v in spec.items()]
    elif isinstance(spec, list):
        for i, f in enumerate(spec):
            if isinstance(f, str):
                entries.append((f, {}))
            elif isinstance(f, dict) and isinstance(f.get("name", f.get("key")), str):
                entries.append((str(f.get("name", f.get("key"))), f))
            else:
                ctx.add(f"{where}[{i}]", "a field is a name or {name, default?, required?}")
    else:
        ctx.add(where, "fields are a list of names or {name, ...}, or an object of them")
    fields: dict[str, str] = {}
    for name, f in entries:
        if name not in ctx.inputs:
            if "default" in f:
                ctx.inputs[name] = f["default"]
            elif f.get("required"):
                ctx.add(f"input_data.{name}", f"required by input node {node.id!r}")
        fields[name] = _jmes_ident(name)
    if not fields:
        return {"data": "{{ inputs }}", "expression": "@"}
    return {"data": "{{ inputs }}", "fields": fields}


def transform_params(ctx: TranslationContext, node: GraphNode, up: Upstream) -> dict[str, Any]:
    cfg = config_of(node)
    data = up.data_template()
    where = ctx.where(node.id, ".config")
    op = str(cfg.get("operation") or cfg.get("transformType") or cfg.get("transform_type") or "")
    op = op.lower()
    op = op.replace("-", "_")
    code = _first(cfg, "code", "transformCode", "transform_code", "script", "python", "function")
    if code is not None or op in ("code", "script", "python", "javascript"):
        k = code[0] if code else "operation"
        ctx.add(
            f"{where}.{k}",
            "code transforms are not run by Plansmith; give a JMESPath 'expression', a 'path', "
            "a 'mapping' or a 'template' instead",
        )
        return {"data": data, "expression": "@"}
    if op in ("json_parse", "parse_json", "from_json"):
        ctx.add(
            f"{where}.operation",
            "json_parse cannot be expressed in JMESPath; have the upstream node return JSON",
        )
        return {"data": data, "expression": "@"}
    found = _first(cfg, "expression", "jmespath", "query")
    if found is not None and isinstance(found[1], str):
        expr = _check_jmespath(ctx, found[1], f"{where}.{found[0]}")
        return {"data": data, "expression": expr or "@"}
    found = _first(cfg, "path", "extract", "key", "field", "jsonpath", "json_path")
    if found is not None and isinstance(found[1], str):
        expr = path_to_jmespath(found[1])
        if expr is None:
            ctx.add(f"{where}.{found[0]}", f"cannot read path {found[1]!r}")
            return {"data": data, "expression": "@"}
        return {
            "data": data,
            "expression": _check_jmespath(ctx, expr, f"{where}.{found[0]}") or "@",
        }
    found = _first(cfg, "mapping", "mappings", "fields", "output_mapping", "outputMapping")
    if found is not None:
        fields = _mapping_fields(ctx, found[1], f"{where}.{found[0]}")
        if fields:
            return {"data": data, "fields": fields}
        return {"data": data, "expression": "@"}
    found = _first(cfg, "template")
    if found is not None and isinstance(found[1], str):
        expr = _check_jmespath(ctx, _template_to_jmespath(found[1]), f"{where}.template")
        return {"data": data, "expression": expr or "@"}
    if op in ("json_stringify", "stringify", "to_json", "to_string"):
        return {"data": data, "expression": "to_string(@)"}
    if op and op not in ("passthrough", "pass_through", "identity", "none", "extract", "template"):
        ctx.add(f"{where}.operation", f"unknown transform operation {op!r}")
    return {"data": data, "expression": "@"}


def output_params(ctx: TranslationContext, node: GraphNode, up: Upstream) -> dict[str, Any]:
    cfg = config_of(node)
    data = up.data_template()
    where = ctx.where(node.id, ".config")
    found = _first(cfg, "mapping", "mappings", "fields", "output_mapping", "outputMapping")
    params: dict[str, Any] = {"data": data, "expression": "@"}
    if found is not None:
        fields = _mapping_fields(ctx, found[1], f"{where}.{found[0]}")
        if fields:
            params = {"data": data, "fields": fields}
    key = _first(cfg, "key", "output_key", "outputKey")
    if key is not None and isinstance(key[1], str) and "expression" in params:
        params["expression"] = "{" + _jmes_ident(key[1]) + ": @}"
    return params


def llm_params(ctx: TranslationContext, node: GraphNode, up: Upstream) -> dict[str, Any]:
    cfg = config_of(node)
    where = ctx.where(node.id, ".config")
    names = NodeNames(ctx, node.id, up.deps)
    found = _first(cfg, "prompt", "prompt_template", "promptTemplate", "user_prompt", "template")
    found = found or _first(cfg, "message", "userPrompt")
    params: dict[str, Any] = {}
    if found is None or not isinstance(found[1], str) or not found[1].strip():
        ctx.add(f"{where}.prompt", "an llm node needs a prompt (config.prompt)")
    else:
        params["prompt"] = names.template(found[1], f"{where}.{found[0]}")
    system = _first(cfg, "system_prompt", "systemPrompt", "system")
    if system is not None and isinstance(system[1], str):
        params["system"] = names.template(system[1], f"{where}.{system[0]}")
    model = _first(cfg, "model", "model_name", "modelName", "modelId", "model_id")
    if model is not None and isinstance(model[1], str):
        params["model"] = model[1]
    for key, target in (
        ("temperature", "temperature"),
        ("max_tokens", "max_tokens"),
        ("maxTokens", "max_tokens"),
    ):
        if isinstance(cfg.get(key), int | float) and not isinstance(cfg.get(key), bool):
            params[target] = cfg[key]
    if up.deps:
        params["input"] = up.data_template()
    return params
