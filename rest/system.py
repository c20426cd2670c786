"""Liveness, readiness, metrics and the API description."""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import BaseModel, Field

from protocol.asyncapi import build_asyncapi
from realtime.metrics import CONTENT_TYPE

from .base import ApiHandler, json_bytes
from .openapi import build_openapi
from .spec import Operation, Route

logger = logging.getLogger(__name__)

#: Longest readiness waits for storage: a database that hangs is as
#: unready as one that refuses, and the balancer's probe must get an answer.
STORAGE_CHECK_TIMEOUT_S = 2.0


def squall_version() -> str:
    try:
        return version("squall")
    except PackageNotFoundError:
        return "0.0.0"


class HealthHandler(ApiHandler):
    """The process is up and its loop answers."""

    def get(self) -> None:
        self.finish(json_bytes({"status": "ok", "node_id": self.node.node_id}))


class Readiness(BaseModel):
    """``ready`` is true when every check passed; the same body comes with
    503 when one did not."""

    ready: bool
    checks: dict[str, str] = Field(
        description="`storage`, `bus` and `presence`: `ok` or `unreachable`; "
        "`draining`: `no` or `yes`."
    )


class ReadyHandler(ApiHandler):
    """The node can serve: storage answers, the bus reaches the other nodes
    and presence is shared with them (always, for a node alone), and it is
    not draining."""

    async def get(self) -> None:
        node = self.node
        # What the node depends on, each "ok" or "unreachable".
        checks = {
            "storage": await self._storage(),
            "bus": "ok" if node.hub.bus.healthy else "unreachable",
            "presence": "ok" if node.presence.healthy else "unreachable",
        }
        ready = all(v == "ok" for v in checks.values()) and not node.draining
        checks["draining"] = "yes" if node.draining else "no"
        self.set_status(200 if ready else 503)
        self.finish(Readiness(ready=ready, checks=checks).model_dump_json())

    async def _storage(self) -> str:
        try:
            async with asyncio.timeout(STORAGE_CHECK_TIMEOUT_S):
                await self.node.db.ping()
        except Exception as exc:  # any failure means "not ready"
            logger.warning("readiness: storage unreachable: %s", type(exc).__name__)
            return "unreachable"
        return "ok"


class MetricsHandler(ApiHandler):
    """This node's metrics in the Prometheus text format."""

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self.node.metrics.render())


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
        (
            Operation(
                "get",
                "Readiness: storage reachable, bus and presence healthy, not draining",
                result=Readiness,
                auth=False,
                description="200 when ready; 503 with the same body when not, "
                "naming the check that failed.",
            ),
        ),
    ),
    Route(
        "/metrics",
        MetricsHandler,
        (
            Operation(
                "get",
                "Metrics in the Prometheus text format",
                auth=False,
                response_content={
                    "text/plain": {
                        "schema": {"type": "string"},
                    }
                },
                description="Counters, gauges and histograms of this node: "
                "sockets, fan-out, bus, RPC latency per method, limits.",
            ),
        ),
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
