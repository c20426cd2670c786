"""Every HTTP route of a node, in one list."""

from __future__ import annotations

from typing import Any

from realtime.node import Node

from . import accounts, devices, rpc, system, uploads
from .spec import Operation, Route
from .system import OpenApiHandler

API_ROUTES: tuple[Route, ...] = (
    *system.ROUTES,
    *accounts.ROUTES,
    *devices.ROUTES,
    *uploads.ROUTES,
    *rpc.ROUTES,
)

OPENAPI_ROUTE = Route(
    "/openapi.json",
    OpenApiHandler,
    (Operation("get", "This document", auth=False),),
)


def url_rules(node: Node) -> list[tuple[str, Any, dict[str, Any]]]:
    """Tornado URL rules for every route."""
    routes = (*API_ROUTES, OPENAPI_ROUTE)
    rules: list[tuple[str, Any, dict[str, Any]]] = [
        (route.pattern, route.handler, {"node": node, **route.kwargs})
        for route in API_ROUTES
    ]
    rules.append(
        (
            OPENAPI_ROUTE.pattern,
            OPENAPI_ROUTE.handler,
            {"node": node, "routes": routes},
        )
    )
    return rules
