"""The OpenAPI 3.1 document, generated from the routes and pydantic models
that serve the requests, so the two cannot drift apart."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from protocol.errors import ErrorCode, ErrorResponse

from .spec import Operation, Route

_REF = "#/components/schemas/{model}"


def _models(routes: Iterable[Route]) -> list[type[BaseModel]]:
    seen: dict[str, type[BaseModel]] = {"ErrorResponse": ErrorResponse}
    for route in routes:
        for op in route.operations:
            for model in (op.params, op.result):
                if model is not None:
                    seen[model.__name__] = model
    return list(seen.values())


def _error_responses(op: Operation) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for code in (*op.errors, ErrorCode.INTERNAL_ERROR):
        by_status.setdefault(code.status, []).append(f"`{code.code}`")
    return {
        str(status): {
            "description": "Error codes: " + ", ".join(codes),
            "content": {
                "application/json": {
                    "schema": {"$ref": _REF.format(model="ErrorResponse")}
                }
            },
        }
        for status, codes in sorted(by_status.items())
    }


def _operation(route: Route, op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "summary": op.summary,
        "operationId": f"{op.method}_{route.path.strip('/').replace('/', '_')}".replace(
            "{", ""
        ).replace("}", ""),
        "tags": [route.tag],
    }
    if op.description:
        out["description"] = op.description
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in route.path_params
    ]
    params.extend(op.query)
    if params:
        out["parameters"] = params
    if op.request_body is not None:
        out["requestBody"] = op.request_body
    elif op.params is not None:
        out["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": _REF.format(model=op.params.__name__)}
                }
            },
        }
    success: dict[str, Any] = {"description": "Success"}
    if op.response_content is not None:
        success["content"] = op.response_content
    elif op.result is not None:
        success["content"] = {
            "application/json": {
                "schema": {"$ref": _REF.format(model=op.result.__name__)}
            }
        }
    out["responses"] = {
        str(op.status): success,
        **_error_responses(op),
    }
    out["security"] = [{"bearer": []}] if op.auth else []
    return out


def build_openapi(routes: Iterable[Route], *, version: str) -> dict[str, Any]:
    routes = list(routes)
    _, defs = models_json_schema(
        [(m, "validation") for m in _models(routes)], ref_template=_REF
    )
    paths: dict[str, Any] = {}
    for route in routes:
        for op in route.operations:
            paths.setdefault(route.path, {})[op.method] = _operation(route, op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Squall",
            "version": version,
            "description": "REST surface of Squall. Every error has the shape "
            '`{"error": {"code", "message", "temporary", "details"}}`.',
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
