"""Logging set-up: plain lines for people, one JSON object a line for machines.

Every line carries the node's id. A line about one socket carries its
connection id as the record's ``conn`` field (see :class:`ConnLogger`):
a field of its own in JSON, ``conn=<id>`` at the front of the message in
plain lines, so that both can be searched for one connection.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

#: Record fields a plain line shows before its message, in this order.
CONTEXT_FIELDS = ("conn",)


class ConnLogger:
    """A logger for lines about one connection: ``log.info(conn_id, msg,
    *args)``. The connection id becomes the record's ``conn`` field; the
    message keeps its lazy ``%`` arguments, and a disabled level costs one
    check, with no record, dict or string made. Shared by all sockets: a
    per-socket adapter would cost memory on every idle socket."""

    __slots__ = ("logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def isEnabledFor(self, level: int) -> bool:
        return self.logger.isEnabledFor(level)

    def debug(self, conn: str, msg: str, *args: object) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(msg, *args, extra={"conn": conn}, stacklevel=2)

    def info(self, conn: str, msg: str, *args: object) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info(msg, *args, extra={"conn": conn}, stacklevel=2)

    def warning(self, conn: str, msg: str, *args: object) -> None:
        if self.logger.isEnabledFor(logging.WARNING):
            self.logger.warning(msg, *args, extra={"conn": conn}, stacklevel=2)

    def exception(self, conn: str, msg: str, *args: object) -> None:
        """At error level, with the traceback being handled: call it from
        an ``except`` block, as ``logging.exception``."""
        if self.logger.isEnabledFor(logging.ERROR):
            self.logger.exception(  # noqa: LOG004 (the caller's except block)
                msg, *args, extra={"conn": conn}, stacklevel=2
            )


def conn_logger(name: str) -> ConnLogger:
    """The :class:`ConnLogger` of module ``name``."""
    return ConnLogger(logging.getLogger(name))


class JsonFormatter(logging.Formatter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": self.node_id,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class PlainFormatter(logging.Formatter):
    """``time LEVEL [node] logger: conn=<id> message``."""

    def __init__(self, node_id: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s [{node_id}] %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        context = "".join(
            f"{name}={getattr(record, name)} "
            for name in CONTEXT_FIELDS
            if hasattr(record, name)
        )
        if not context:
            return super().formatMessage(record)
        # The record is shared with other handlers: changed only meanwhile.
        message = record.message
        record.message = context + message
        try:
            return super().formatMessage(record)
        finally:
            record.message = message


def configure(level: str, *, json: bool, node_id: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json:
        handler.setFormatter(JsonFormatter(node_id))
    else:
        handler.setFormatter(PlainFormatter(node_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
