"""Liveness, readiness and the API description."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from protocol.asyncapi import build_asyncapi

from .base import ApiHandler, json_bytes
from .openapi import build_openapi
from .spec import Operation, Route

logger = logging.getLogger(__name__)


def squall_version() -> str:
    try:
        return version("squall")
    except PackageNotFoundError:
        return "0.0.0"


class HealthHandler(ApiHandler):
    """The process is up and its loop answers."""

    def get(self) -> None:
        self.finish(json_bytes({"status": "ok", "node_id": self.node.node_id}))


class ReadyHandler(ApiHandler):
    """The node can serve: storage answers and it is not draining."""

    async def get(self) -> None:
        checks: dict[str, str] = {}
        try:
            await self.node.db.ping()
            checks["storage"] = "ok"
        except Exception as exc:  # any failure means "not ready"
            logger.warning("readiness: storage unreachable: %s", type(exc).__name__)
            checks["storage"] = "unreachable"
        if self.node.draining:
            checks["draining"] = "yes"
        ready = checks.get("storage") == "ok" and not self.node.draining
        self.set_status(200 if ready else 503)
        self.finish(json_bytes({"ready": ready, "checks": checks}))


class OpenApiHandler(ApiHandler):
    document: dict[str, Any] | None = None

    def initialize(self, node: Any, routes: tuple[Route, ...] = ()) -> None:
        super().initialize(node)
        self.routes = routes

    def get(self) -> None:
        cls = type(self)
        if cls.document is None:
            cls.document = build_openapi(self.routes, version=squall_version())
        self.set_header("Cache-Control", "public, max-age=60")
        self.finish(json_bytes(cls.document))


class AsyncApiHandler(ApiHandler):
    """The AsyncAPI 3.0 document of the WebSocket protocol, built once."""

    document: dict[str, Any] | None = None

    def get(self) -> None:
        cls = type(self)
        if cls.document is None:
            cls.document = build_asyncapi(squall_version())
        self.set_header("Cache-Control", "public, max-age=60")
        self.finish(json_bytes(cls.document))


ROUTES = (
    Route(
        "/healthz",
        HealthHandler,
        (Operation("get", "Liveness", auth=False),),
    ),
    Route(
        "/readyz",
        ReadyHandler,
        (Operation("get", "Readiness: storage reachable, not draining", auth=False),),
    ),
    Route(
        "/asyncapi.json",
        AsyncApiHandler,
        (
            Operation(
                "get",
                "AsyncAPI 3.0 document of the WebSocket protocol at /v1/ws",
                auth=False,
            ),
        ),
    ),
)
