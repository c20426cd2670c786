"""Every log line about a socket carries its connection id as a field
(``conn`` in JSON, ``conn=<id>`` in plain lines) and the node's id, and no
line holds the token or a message body."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest

from protocol.close_codes import CloseCode
from realtime.logs import JsonFormatter, PlainFormatter, conn_logger
from tests.conftest import Running, User
from tests.realtime.conftest import RawConnect, close_code, reply_to

SOCKET_LOGGERS = ("realtime.session", "realtime.ws", "realtime.websocket")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """What the node's socket code logs during the test, at debug level."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in SOCKET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.addHandler(handler)
    yield handler.records
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


async def test_socket_lines_carry_conn_and_node(
    app: Running,
    alice: User,
    bob: User,
    raw: RawConnect,
    records: list[logging.LogRecord],
) -> None:
    conn = await raw(alice.access)
    create = {
        "id": 1,
        "method": "conversation.create",
        "params": {"kind": "direct", "member_ids": [bob.id]},
    }
    await conn.write_message(orjson.dumps(create).decode())
    conv = (await reply_to(conn, 1))["result"]["id"]
    secret = "a message body nobody may log"
    send = {
        "id": 2,
        "method": "message.send",
        "params": {"conversation_id": conv, "client_msg_id": "c1", "text": secret},
    }
    await conn.write_message(orjson.dumps(send).decode())
    assert "result" in await reply_to(conn, 2)
    await conn.write_message(orjson.dumps({"id": 3, "method": "nope"}).decode())
    assert (await reply_to(conn, 3))["error"]["code"] == "not_found"
    # A binary frame on the JSON subprotocol: the node closes the socket.
    await conn.write_message(b"\x00", binary=True)
    assert await close_code(conn) == CloseCode.PROTOCOL_VIOLATION.code

    node_id = app.node.node_id
    as_json = JsonFormatter(node_id)
    plain = PlainFormatter(node_id)
    lines = [orjson.loads(as_json.format(r)) for r in records]
    messages = [line["msg"] for line in lines]
    # The upgrade, the authentication, each request and the close were logged.
    assert any(m.startswith("open from") for m in messages), messages
    assert any(m.startswith("authenticated user=") for m in messages), messages
    assert any(m.startswith("message.send ok in") for m in messages), messages
    assert "nope -> not_found" in messages
    assert "closing: protocol_violation" in messages

    conns = {line["conn"] for line in lines}
    assert len(conns) == 1, conns
    (conn_id,) = conns
    for record, line in zip(records, lines, strict=True):
        assert line["node"] == node_id
        assert "conn=" not in line["msg"]
        text = plain.format(record)
        assert f"[{node_id}]" in text
        assert f": conn={conn_id} {line['msg']}" in text
        for sensitive in (alice.access, secret):
            assert sensitive not in text
            assert sensitive not in orjson.dumps(line).decode()


def test_disabled_levels_make_no_record(caplog: pytest.LogCaptureFixture) -> None:
    """A line below the level is dropped before anything is formatted."""
    log = conn_logger("tests.quiet")

    class Loud:
        def __str__(self) -> str:
            raise AssertionError("formatted although disabled")

    with caplog.at_level(logging.INFO, logger="tests.quiet"):
        log.debug("c1", "never %s", Loud())
        log.info("c1", "shown %d", 3)
    (record,) = caplog.records
    assert record.getMessage() == "shown 3"
    assert record.conn == "c1"  # type: ignore[attr-defined]
    # The line points at its caller, not at the helper.
    assert record.funcName == "test_disabled_levels_make_no_record"


def test_plain_lines_without_a_connection_are_unchanged() -> None:
    record = logging.makeLogRecord(
        {"name": "realtime.hub", "levelno": 20, "levelname": "INFO", "msg": "hi %s"}
    )
    record.args = ("there",)
    line = PlainFormatter("n1").format(record)
    assert line.endswith(" INFO [n1] realtime.hub: hi there")
