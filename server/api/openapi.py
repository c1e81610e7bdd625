"""The HTTP API's contract: an OpenAPI 3.1 document generated from the route table and the
routes' pydantic models (the ones that validate the requests), with this server's limits and
roles written in, served at /openapi.json; and an interactive page at /docs (Swagger UI,
its files from the swagger-ui-bundle package, served by this server: the page works
offline and asks nothing of any other host)."""

from __future__ import annotations

import copy
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from embedsense.server.api.checks import PRIORITY_HEADER, TEXT_PATTERN, Limits
from embedsense.server.api.cors import SAFE_METHODS
from embedsense.server.api.http import HttpRoute, json_response, path_parameters
from embedsense.server.batching import Priority
from embedsense.server.senses.inventories import MAX_EXAMPLES_PER_SENSE

REF = "#/components/schemas/{model}"
PRIORITY_PARAMETER = {
    "name": PRIORITY_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string", "enum": [p.label for p in sorted(Priority, reverse=True)]},
    "description": "How soon the inputs are embedded when the server is busy: query (a "
    "lookup a person waits on), interactive, or bulk (a large job; refused with 429 before "
    "it fills the queue the others need). Unset: query on search, disambiguate and "
    "occurrences; bulk on upsert; on the embedding routes interactive for a few inputs (at "
    "most interactive_max_texts and interactive_max_tokens), else bulk.",
}
# The files of Swagger UI the page loads, from the package's folder.
ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
# Relative addresses: the page works behind a proxy that serves the API under a prefix.
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="icon" type="image/png" href="docs/favicon-32x32.png">
<link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
}});
</script>
</body>
</html>
"""


def roles_text(default: str) -> str:
    """Which role inputs get, and how to change it: for the document and each route."""
    return (
        f"Every HTTP route embeds (or tokenizes) its inputs as **{default}** texts unless the "
        "request says otherwise: e5 models prefix a query with 'query: ' and a document with "
        "'passage: ', and the two are embedded differently. Per request: `input_type` on "
        "POST /v1/embeddings, `prompt_name` on the TEI routes, `role` on /v1/explain and "
        "/v1/compare_layers ('query' or 'passage'). "
        "Server-wide: `--default-prompt-name` (EMBEDSENSE_DEFAULT_PROMPT_NAME). Embed "
        "documents you store as 'passage' and the questions you search them with as 'query'."
    )


def openapi_document(
    routes: list[HttpRoute],
    limits: Limits,
    *,
    title: str,
    version: str,
    auth: bool,
    default_role: str,
    dim: int,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`: their models' JSON schemas as components, each
    input field bounded by `limits` (and `dimensions` to the model's `dim`), the bearer key
    when `auth` (the open routes excepted)."""
    documented = [r for r in routes if r.documented]
    bodies = {r.body for r in documented if r.body is not None}
    replies = {r.reply for r in documented if r.reply is not None}
    errors = {r.dialect.error_model for r in documented}
    models: list[tuple[type[BaseModel], Any]] = [(m, "validation") for m in bodies]
    models += [(m, "serialization") for m in replies | errors]
    _, schemas = models_json_schema(sorted(models, key=lambda m: m[0].__name__), ref_template=REF)
    components: dict[str, Any] = {"schemas": _with_limits(schemas.get("$defs", {}), limits, dim)}
    if auth:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "An API key."}
        }
    paths: dict[str, Any] = {}
    for route in documented:
        paths.setdefault(_openapi_path(route.path), {})[route.method.lower()] = _operation(
            route, auth
        )
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": roles_text(default_role)},
        "paths": paths,
        "components": components,
    }
    if auth:
        document["security"] = [{"bearer": []}]
    return document


def _openapi_path(path: str) -> str:
    for name in path_parameters(path):
        start = path.index("{" + name)
        path = path[:start] + "{" + name + "}" + path[path.index("}", start) + 1 :]
    return path


def _operation_id(route: HttpRoute) -> str:
    """post_v1_embeddings, get_v1_models_model, post_root."""
    words = [route.method.lower()] + [
        w.strip("{}").split(":")[0] for w in route.path.split("/") if w
    ]
    return "_".join(words) if len(words) > 1 else f"{words[0]}_root"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _operation(route: HttpRoute, auth: bool) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": _operation_id(route),
        "tags": [route.tag] if route.tag else [],
        "responses": {},
    }
    if route.description:
        operation["description"] = route.description
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in path_parameters(route.path)
    ]
    if route.prioritized:
        parameters.append(PRIORITY_PARAMETER)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(route.body)}},
        }
    ok: dict[str, Any] = {"description": "OK"}
    if route.reply is not None:
        ok["content"] = {route.reply_media: {"schema": _ref(route.reply)}}
    elif route.reply_media != "application/json":
        ok["content"] = {route.reply_media: {"schema": {"type": "string"}}}
    operation["responses"]["200"] = ok
    statuses = set(route.errors) | ({401} if auth and not route.open else set())
    if route.method not in SAFE_METHODS:  # from another site's web page (cors.refused_origin)
        statuses.add(403)
    error = {"application/json": {"schema": _ref(route.dialect.error_model)}}
    for status in sorted(statuses):
        operation["responses"][str(status)] = {
            "description": HTTPStatus(status).phrase,
            "content": error,
        }
    if auth and route.open:
        operation["security"] = []
    return operation


def _with_limits(schemas: dict[str, Any], limits: Limits, dim: int) -> dict[str, Any]:
    """The schemas with each `x-limit` field bounded as the checks bound it: texts of 1 to
    max_text_chars characters (no control characters, not only whitespace), 1 to max_texts
    inputs, token-id lists of 1 to max_request_tokens ids; 1 to max_texts document ids to
    update, 0 to max_texts to get or delete (check_count's bound); `dimensions` the
    model's."""
    schemas = copy.deepcopy(schemas)
    for schema in schemas.values():
        for prop in schema.get("properties", {}).values():
            limit = prop.pop("x-limit", None)
            if limit == "dimensions":
                prop["anyOf"] = [{"const": dim}, {"type": "null"}]
            elif limit in ("ids", "ids_or_none"):  # each id keeps its own (MAX_ID_LENGTH)
                prop.update(maxItems=limits.max_texts)
                if limit == "ids":
                    prop.update(minItems=1)
            elif limit == "senses":  # one word's: label -> examples
                _bound_senses(prop.get("anyOf", [prop])[0], limits)
            elif limit == "words":  # an inventory's: word -> its senses
                _bound_senses(prop["additionalProperties"], limits)
            elif limit is not None:
                for branch in prop.get("anyOf", [prop]):
                    _bound(branch, limits)
    return schemas


def _bound_senses(schema: dict[str, Any], limits: Limits) -> None:
    """A word's senses as inventories.check_senses takes them: two or more, each 1 to
    MAX_EXAMPLES_PER_SENSE examples, each a text (all of them together at most max_texts,
    which no schema says)."""
    schema.update(minProperties=2)
    examples = schema["additionalProperties"]
    examples.update(minItems=1, maxItems=MAX_EXAMPLES_PER_SENSE)
    _bound(examples["items"], limits)


def _bound(schema: dict[str, Any], limits: Limits) -> None:
    kind = schema.get("type")
    if kind == "string":
        schema.update(minLength=1, maxLength=limits.max_text_chars, pattern=TEXT_PATTERN)
    elif kind == "array":
        items = schema.get("items", {})
        if items.get("type") == "integer":  # one input's token ids
            schema.update(minItems=1, maxItems=limits.max_request_tokens)
        else:  # a batch of texts or of token-id lists
            schema.update(minItems=1, maxItems=limits.max_texts)
            _bound(items, limits)


class DocsRoutes:
    """GET /openapi.json, GET /docs and the page's files: no API key needed (they hold no
    data; the page's "Authorize" button takes the key for the calls made from it)."""

    def __init__(self, document: dict[str, Any], title: str) -> None:
        self.document = orjson.dumps(document)
        self.page = PAGE.format(title=title)
        self.folder = _swagger_ui_folder()

    def routes(self, dialect: Any) -> list[HttpRoute]:
        def route(path: str, handler: Any, summary: str) -> HttpRoute:
            return HttpRoute("GET", path, handler, dialect, summary, open=True, documented=False)

        return [
            route("/openapi.json", self.openapi, "This document"),
            route("/docs", self.docs, "The interactive docs page"),
            route("/docs/", self.to_docs, "The docs page, as typed with a slash"),
            route("/docs/{asset}", self.asset, "The docs page's files"),
        ]

    async def openapi(self, request: web.Request, body: None) -> web.Response:
        return json_response(self.document)

    async def docs(self, request: web.Request, body: None) -> web.Response:
        if self.folder is None:
            raise web.HTTPNotFound(reason="the docs page needs the swagger-ui-bundle package")
        return web.Response(text=self.page, content_type="text/html")

    async def to_docs(self, request: web.Request, body: None) -> web.Response:
        # Relative, as the page's own links are: right behind a proxy's path prefix too.
        return web.Response(status=308, headers={"Location": "../docs"})

    async def asset(self, request: web.Request, body: None) -> web.StreamResponse:
        name = request.match_info["asset"]
        if self.folder is None or name not in ASSETS:  # only these files, never a path
            raise web.HTTPNotFound()
        response = web.FileResponse(self.folder / name)
        response.content_type = ASSETS[name]
        response.headers["Cache-Control"] = "public, max-age=86400"
        return response


def _swagger_ui_folder() -> Path | None:
    """Swagger UI's files as swagger-ui-bundle installs them, or None without it."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    folder = Path(str(getattr(swagger_ui_bundle, "swagger_ui_path", "")))
    if not (folder / "swagger-ui-bundle.js").is_file():  # a layout we do not know
        candidates = sorted(resources.files("swagger_ui_bundle").joinpath("vendor").iterdir())
        folder = Path(str(candidates[-1])) if candidates else folder
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None
