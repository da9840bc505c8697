"""``GET /openapi.json`` from the msgspec types, and ``GET /docs``, a page that lists it.

The request schemas carry one typed params object per installed method, and the
``methods`` and ``model`` fields list what this server accepts, so the document
always describes the running server, plugin routes included.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from lmlens import wire
from lmlens.artifacts import ArtifactInfo
from lmlens.batching import DEFAULT_BATCH_SIZE
from lmlens.default_plugins.jobs import MAX_JOB_BATCH_SIZE
from lmlens.wire import ErrorBody, ModelRow, PluginInfo
from lmlens_http.schemas import Health

_PATH_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[A-Za-z]+)?}")
_JSON_AND_MSGPACK = ("application/json", "application/msgpack")

# status -> the codes that come with it, for the documentation of errors
ERRORS = {
    "400": "malformed body, empty text, unknown method",
    "401": "an API key is required (Authorization: Bearer, or X-API-Key) or was not valid",
    "403": "model not in the allowlist, or a browser origin not allowed",
    "404": "unknown route or job",
    "413": "body, text or batch too large",
    "415": "unsupported content type",
    "422": "invalid request or params (field names the path)",
    "429": "rate limited (Retry-After)",
    "503": "queue full, or the job queue unavailable (Retry-After)",
    "504": "timed out; the work was cancelled",
}


def _rewrite_refs(node: Any) -> Any:
    """msgspec points at ``#/$defs/``; OpenAPI keeps schemas under components (refs and
    discriminator mappings alike)."""
    if isinstance(node, dict):
        return {k: _rewrite_refs(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    if isinstance(node, str) and node.startswith("#/$defs/"):
        return "#/components/schemas/" + node.removeprefix("#/$defs/")
    return node


def _nan_may_be_null(node: Any) -> Any:
    """JSON has no NaN or infinity: msgspec writes them as null. A float in a response can
    be NaN (a loss over no positions), so the document says number or null."""
    if isinstance(node, dict):
        out = {k: _nan_may_be_null(v) for k, v in node.items()}
        if out.get("type") == "number":
            out["type"] = ["number", "null"]
        return out
    if isinstance(node, list):
        return [_nan_may_be_null(v) for v in node]
    return node


def _content(ref: dict[str, Any]) -> dict[str, Any]:
    return {media: {"schema": ref} for media in _JSON_AND_MSGPACK}


def build_openapi(service: Any, extra_routes: list[dict[str, Any]]) -> dict[str, Any]:
    types = service.types
    # one object each: refs go by id
    plugin_list, model_list, artifact_list = list[PluginInfo], list[ModelRow], list[ArtifactInfo]
    named: list[Any] = [
        types.analyze, types.batch, types.result, types.batch_result, ErrorBody,
        plugin_list, model_list, artifact_list, Health,
    ]
    for route in extra_routes:
        named.extend(t for t in (route.get("request"), route.get("response")) if t is not None)
        named.extend(route.get("responses", {}).values())
    schemas, components = wire.json_schema(*named)
    refs = dict(zip(map(id, named), map(_rewrite_refs, schemas), strict=True))
    components = _rewrite_refs(components)
    for name in [n for n in components if n not in ("AnalyzeRequest", "BatchRequest", "MethodParams")]:
        if not name.endswith("Params"):
            components[name] = _nan_may_be_null(components[name])
    # Rules the server checks after decoding (kernel checks, the allowlist, limits),
    # written into the document so that clients and fuzzers know them up front.
    text_rule = {"type": "string", "minLength": 1, "maxLength": service.settings.max_text_chars,
                 "pattern": "\\S", "description": "not only whitespace"}
    methods_rule = {"type": "array", "items": {"type": "string", "enum": sorted(service.host.methods)},
                    "minItems": 1, "default": ["attention"],
                    "description": "repeated names are analysed once"}
    model_rule = {"anyOf": [{"type": "string", "enum": service.allowed}, {"type": "null"}], "default": None}
    for name in ("AnalyzeRequest", "BatchRequest"):
        props = components[name]["properties"]
        props["methods"] = methods_rule
        props["model"] = model_rule
        components[name]["allOf"] = params_need_their_method(sorted(service.host.methods))
    components["AnalyzeRequest"]["properties"]["text"] = text_rule
    batch = components["BatchRequest"]["properties"]
    queued = job_queue_available(service)
    batch["texts"].update(items=text_rule, maxItems=service.config.max_job_texts if queued
                          else service.config.max_batch_size)
    batch["batch_size"]["anyOf"][0]["maximum"] = service.config.max_batch_size
    if "JobRequest" in components:
        components["JobRequest"] = job_request_schema(service, components, text_rule, methods_rule, model_rule)
    errors = {
        status: {"description": text, "content": _content({"$ref": "#/components/schemas/ErrorBody"})}
        for status, text in ERRORS.items()
    }

    def op(summary: str, response: Any, request: Any = None, statuses: tuple[str, ...] = ()) -> dict[str, Any]:
        operation: dict[str, Any] = {
            "summary": summary,
            "responses": {"200": {"description": "OK", "content": _content(refs[id(response)])}},
        }
        for status in statuses:
            operation["responses"][status] = errors[status]
        if request is not None:
            operation["requestBody"] = {"required": True, "content": _content(refs[id(request)])}
        return operation

    post_errors = ("400", "401", "403", "413", "415", "422", "429", "503", "504")
    batch_op = op("Analyse many texts; batch_size texts per pool job", types.batch_result, types.batch, post_errors)
    if queued:
        batch_op["summary"] += "; over MAX_BATCH_SIZE texts, an analyze_batch job (202)"
        batch_op["responses"]["202"] = {"description": "queued as a job", "content": _content(
            {"type": "object", "required": ["id", "status", "texts", "location"], "properties": {
                "id": {"type": "string"}, "status": {"type": "string"}, "texts": {"type": "integer"},
                "location": {"type": "string"}}})}
    paths: dict[str, Any] = {
        "/analyze": {"post": op("Analyse one text with the named methods over one forward pass",
                                types.result, types.analyze, post_errors)},
        "/analyze/batch": {"post": batch_op},
        "/plugins": {"get": op("Installed plugins, their methods and load errors", plugin_list,
                               statuses=("401", "403"))},
        "/models": {"get": op("Models this server may load (the allowlist)", model_list,
                              statuses=("401", "403"))},
        "/artifacts": {"get": {**op("Fitted artifacts (SAEs, predictors, detectors) and their metrics",
                                    artifact_list, statuses=("401", "403")),
                               "parameters": [{"name": "kind", "in": "query", "required": False,
                                               "schema": {"type": "string"}}]}},
        "/health": {"get": op("Models loaded, cache and Redis state, plugins", Health)},
    }
    for route in extra_routes:
        # Starlette's "/jobs/{id:int}" is OpenAPI's "/jobs/{id}" with a path parameter
        path = _PATH_PARAM.sub(lambda m: "{" + m.group(1) + "}", route["path"])
        path_schema = route.get("path_schema", {})
        parameters = [{"name": name, "in": "path", "required": True,
                       "schema": path_schema.get(name, {"type": "string"})}
                      for name in _PATH_PARAM.findall(route["path"])]
        for method in route["methods"]:
            status = str(route.get("status", 200)) if method.upper() == "POST" else "200"
            response = route.get("responses", {}).get(method.upper(), route.get("response"))
            operation: dict[str, Any] = {"summary": route.get("summary") or route["path"],
                                         "responses": {status: {"description": "OK"}}}
            if parameters:
                operation["parameters"] = parameters
            if response is not None:
                operation["responses"][status]["content"] = _content(refs[id(response)])
            for error in route.get("errors", ()):
                if error in errors:
                    operation["responses"][error] = errors[error]
            if route.get("request") is not None and method.upper() not in ("GET", "DELETE", "HEAD"):
                operation["requestBody"] = {"required": True, "content": _content(refs[id(route["request"])])}
            paths.setdefault(path, {})[method.lower()] = operation
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "lmlens",
            "version": service.version,
            "description": "Look inside transformer language models. WebSocket progress at /ws; "
            "send Accept: application/msgpack for MessagePack.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }
    if service.api_keys_enabled:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        document["security"] = [{"bearer": []}, {"apiKey": []}]
        paths["/health"]["get"]["security"] = []
    return document


def params_need_their_method(methods: list[str]) -> list[dict[str, Any]]:
    """``params.<m>`` (not null) is allowed only when ``m`` is among ``methods`` (which
    defaults to attention): the server refuses params for a method it was not asked for."""
    rules = []
    for method in methods:
        given = {"required": ["params"], "properties": {"params": {
            "required": [method], "properties": {method: {"type": "object"}}}}}
        listed: dict[str, Any] = {"required": ["methods"], "properties": {"methods": {"contains": {"const": method}}}}
        if method == "attention":
            listed = {"anyOf": [listed, {"not": {"required": ["methods"]}}]}
        rules.append({"if": given, "then": listed})
    return rules


def job_queue_available(service: Any) -> bool:
    import os

    return bool(os.environ.get("REDIS_URL")) and "analyze_batch" in service.host.jobs and bool(
        service.host.pm.hook.job_queue.get_hookimpls())


def job_request_schema(service: Any, components: dict[str, Any], text_rule: dict[str, Any],
                       methods_rule: dict[str, Any], model_rule: dict[str, Any]) -> dict[str, Any]:
    """One alternative per job kind, each with its own params schema."""
    variants = []
    for kind, job in sorted(service.host.jobs.items()):
        if kind == "analyze_batch":
            params: dict[str, Any] = {
                "type": "object", "required": ["texts"], "additionalProperties": False,
                "properties": {
                    "texts": {"type": "array", "items": text_rule, "minItems": 1,
                              "maxItems": service.config.max_job_texts},
                    "methods": {"anyOf": [{k: v for k, v in methods_rule.items() if k != "default"},
                                          {"type": "null"}],
                                "description": "absent or null: the installed plugins' default methods"},
                    "params": {"$ref": "#/components/schemas/MethodParams"},
                    "model": model_rule,
                    "batch_size": {"type": "integer", "minimum": 1, "maximum": MAX_JOB_BATCH_SIZE,
                                   "default": DEFAULT_BATCH_SIZE,
                                   "description": "texts of similar length per padded pass (1: one by one)"},
                },
                "allOf": params_need_their_method(sorted(service.host.methods)),
            }
        else:
            (schema,), extra = wire.json_schema(job.params)
            for name, value in _rewrite_refs(extra).items():
                components.setdefault(name, value)
            params = _rewrite_refs(schema)
        target = components.get(params.get("$ref", "").rsplit("/", 1)[-1], params)
        required = ["kind", "params"] if target.get("required") else ["kind"]
        variants.append({"type": "object", "required": required, "additionalProperties": False,
                         "properties": {"kind": {"const": kind}, "params": params}})
    return {"oneOf": variants} if variants else {"type": "object"}


async def openapi_json(request: Request) -> Response:
    return Response(request.app.state.openapi_bytes, media_type="application/json")


def docs_html(document: dict[str, Any]) -> str:
    """One self-contained page: no scripts from a CDN, so it works offline."""
    parts = [f"<h1>{html.escape(document['info']['title'])} {html.escape(document['info']['version'])}</h1>",
             f"<p>{html.escape(document['info']['description'])}</p>",
             '<p>Machine-readable: <a href="openapi.json">openapi.json</a></p>']
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            parts.append(f"<h2><code>{method.upper()} {html.escape(path)}</code></h2>")
            parts.append(f"<p>{html.escape(operation.get('summary', ''))}</p>")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                parts.append(f"<p>Request: <code>{html.escape(json.dumps(body['schema']))}</code></p>")
            statuses = ", ".join(operation["responses"])
            parts.append(f"<p>Responses: {html.escape(statuses)}</p>")
    schemas = json.dumps(document["components"]["schemas"], indent=2)
    parts.append(f"<h2>Schemas</h2><pre>{html.escape(schemas)}</pre>")
    return "<!doctype html><meta charset=utf-8><title>lmlens API</title>" + "\n".join(parts)


async def docs(request: Request) -> Response:
    return HTMLResponse(request.app.state.docs_html)


ROUTES = [
    Route("/openapi.json", openapi_json, methods=["GET"], name="openapi", include_in_schema=False),
    Route("/docs", docs, methods=["GET"], name="docs", include_in_schema=False),
]
