"""The yardstick for ``bench/fanout.py``: fan-out as a plain Tornado
WebSocket server does it, with nothing of Squall.

    .venv/bin/python bench/baseline_tornado.py [fanout options]   # measure
    .venv/bin/python bench/baseline_tornado.py serve --port 0     # serve only

For each ``message.send`` a client sends, the server builds an event dict
shaped like Squall's ``message.new`` and, for every open socket, serialises
it with ``json.dumps`` and calls ``write_message``: the obvious first
version of a chat server. It stores nothing, checks no token and keeps no
order, so all Squall does beyond this (storage, auth, per-socket ordering
and flow control) is work it has to pay for from what it saves by encoding
each event once.

``serve --raw-send`` is a floor rather than a baseline: the event is
encoded and framed once, and each socket gets one ``socket.send`` of the
same bytes, straight to the kernel when its stream has nothing queued
(through Tornado's stream otherwise). Nothing a Python server does per
delivery can cost much less than that on the same machine.

Measuring runs the same receivers, sender and CPU accounting as
``bench/fanout.py`` (it is ``fanout.py --baseline-only``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import struct
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket

SUBPROTOCOL = "squall.v1.json"
SOCKETS: set[FanoutSocket] = set()
RAW_SEND = False
_seq = itertools.count(1)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class FanoutSocket(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin: str) -> bool:
        return True

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return SUBPROTOCOL if SUBPROTOCOL in subprotocols else None

    def open(self, *args: str, **kwargs: str) -> None:
        SOCKETS.add(self)

    def on_close(self) -> None:
        SOCKETS.discard(self)

    def on_message(self, message: str | bytes) -> None:
        request = json.loads(message)
        params = request.get("params") or {}
        if request.get("method") != "message.send":
            self.reply(request.get("id"), {"pong": True, "server_time": _now()})
            return
        seq = next(_seq)
        conversation_id = params.get("conversation_id") or str(uuid.UUID(int=0))
        message_id = str(uuid.uuid4())
        created_at = _now()
        event = {
            "event": "message.new",
            "channel": f"conv:{conversation_id}",
            "seq": seq,
            "data": {
                "id": message_id,
                "conversation_id": conversation_id,
                "seq": seq,
                "sender_id": str(uuid.UUID(int=1)),
                "client_msg_id": params.get("client_msg_id", ""),
                "text": params.get("text", ""),
                "attachment_ids": [],
                "created_at": created_at,
                "edited_at": None,
                "deleted": False,
            },
        }
        if RAW_SEND:
            send_raw(frame(json.dumps(event).encode()))
        else:
            for socket in tuple(SOCKETS):
                try:
                    socket.write_message(json.dumps(event))
                except tornado.websocket.WebSocketClosedError:
                    SOCKETS.discard(socket)
        self.reply(
            request.get("id"),
            {"message_id": message_id, "seq": seq, "created_at": created_at},
        )

    def reply(self, request_id: Any, result: dict[str, Any]) -> None:
        self.write_message(json.dumps({"id": request_id, "result": result}))


def frame(payload: bytes) -> bytes:
    """An unmasked, final text frame (RFC 6455 section 5.2)."""
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", 0x81, size) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def send_raw(data: bytes) -> None:
    for socket in tuple(SOCKETS):
        conn = socket.ws_connection
        stream = getattr(conn, "stream", None)
        if conn is None or stream is None or stream.closed():
            SOCKETS.discard(socket)
            continue
        sent = 0
        if not stream.writing():
            try:
                sent = stream.socket.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                SOCKETS.discard(socket)
                continue
        if sent < len(data):
            stream.write(data[sent:])


class Health(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"ok": True})


async def serve(port: int) -> None:
    app = tornado.web.Application(
        [(r"/v1/ws", FanoutSocket), (r"/healthz", Health)],
        websocket_ping_interval=25.0,
        websocket_ping_timeout=25.0,
    )
    server = tornado.httpserver.HTTPServer(app)
    sockets = tornado.netutil.bind_sockets(port, "127.0.0.1")
    server.add_sockets(sockets)
    bound = sockets[0].getsockname()[1]
    print(f"  WebSocket          ws://127.0.0.1:{bound}/v1/ws", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    await server.close_all_connections()


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        parser = argparse.ArgumentParser(prog="baseline_tornado.py serve")
        parser.add_argument("--port", type=int, default=0)
        parser.add_argument(
            "--raw-send", action="store_true", help="the floor, not the baseline"
        )
        args = parser.parse_args(argv[1:])
        global RAW_SEND
        RAW_SEND = args.raw_send
        if os.environ.get("BENCH_PROBE_DIR"):
            import nodeprobe

            signal.signal(signal.SIGUSR2, nodeprobe.profile)
        asyncio.run(serve(args.port))
        return 0
    import fanout

    return fanout.main(["--baseline-only", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
