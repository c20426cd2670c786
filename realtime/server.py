"""The Tornado application of a node, and running it until a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from realtime import ws
from realtime.drain import drain
from realtime.node import Node, build_node
from realtime.settings import Settings
from rest.base import NotFoundHandler
from rest.routes import url_rules

logger = logging.getLogger(__name__)


access_log = logging.getLogger("squall.access")


def log_request(handler: tornado.web.RequestHandler) -> None:
    """One line per request, at a level by whose fault a failure is."""
    status = handler.get_status()
    if status >= 500:
        level = logging.ERROR
    elif status >= 400:
        level = logging.INFO
    else:
        level = logging.DEBUG
    if not access_log.isEnabledFor(level):
        return
    request = handler.request
    access_log.log(
        level,
        "%d %s %s (%s) %.1fms",
        status,
        request.method,
        request.path,
        request.remote_ip,
        1000.0 * request.request_time(),
    )


def make_app(node: Node) -> tornado.web.Application:
    rules: list[Any] = [(ws.ROUTE[0], ws.ROUTE[1], {"node": node}), *url_rules(node)]
    return tornado.web.Application(
        rules,
        default_handler_class=NotFoundHandler,
        default_handler_args={"node": node},
        log_function=log_request,
        compress_response=False,
        xsrf_cookies=False,
    )


def urls(settings: Settings, port: int) -> dict[str, str]:
    host = settings.host if settings.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    base = settings.public_url.rstrip("/") or f"http://{host}:{port}"
    return {
        "REST API": f"{base}/v1",
        "OpenAPI document": f"{base}/openapi.json",
        "Health": f"{base}/healthz",
        "Metrics": f"{base}/metrics",
        "WebSocket": base.replace("http", "ws", 1) + "/v1/ws",
    }


async def serve(settings: Settings) -> None:
    """Run a node until SIGINT or SIGTERM."""
    node = await build_node(settings)
    server = tornado.httpserver.HTTPServer(
        make_app(node),
        xheaders=settings.behind_proxy,
        max_body_size=settings.upload_max_bytes + 1024 * 1024,
        idle_connection_timeout=120,
        body_timeout=300,
    )
    sockets = tornado.netutil.bind_sockets(settings.port, settings.host)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    logger.info("node %s listening on %s:%d", node.node_id, settings.host, port)
    for name, url in urls(settings, port).items():
        print(f"  {name:<18} {url}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    logger.info("stopping node %s", node.node_id)
    node.draining = True
    server.stop()
    await drain(node)
    await server.close_all_connections()
    await node.close()
