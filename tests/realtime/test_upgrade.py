"""The upgrade and the framing rules of RFC 6455, on the wire: a socket
Squall reads itself must refuse what Tornado's did, and keep what a
well-behaved client sends in one piece."""

from __future__ import annotations

import orjson
import pytest

from protocol.close_codes import CloseCode
from protocol.codecs import MSGPACK, MSGPACK_SUBPROTOCOL
from realtime.wsframe import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT
from tests.conftest import Running, User
from tests.realtime.conftest import WireConnect
from tests.realtime.rawws import VIOLATIONS, RawSocket, client_frame


def _ping(request_id: object) -> bytes:
    return client_frame(orjson.dumps({"id": request_id, "method": "ping"}))


async def _reply(conn: RawSocket) -> dict[str, object]:
    while True:
        frame = await conn.frame()
        if frame.opcode == TEXT:
            value: dict[str, object] = orjson.loads(frame.payload)
            if "event" not in value:
                return value


async def _closed_with(conn: RawSocket, code: CloseCode) -> None:
    frame = await conn.until_close()
    assert frame.close_code == code.code
    assert await conn.eof()


# The upgrade.


async def test_a_frame_sent_with_the_upgrade_is_read(
    app: Running, wire: WireConnect, alice: User
) -> None:
    """Bytes behind the upgrade request, in the same packet, are the first frame."""
    conn = await wire(token=alice.access, early=_ping("early"))
    assert conn.status == 101
    reply = await _reply(conn)
    assert reply["id"] == "early"


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"Sec-WebSocket-Key": None}, 400),
        ({"Sec-WebSocket-Key": "short"}, 400),
        ({"Sec-WebSocket-Version": "8"}, 426),
        ({"Upgrade": None}, 400),
        ({"Connection": "keep-alive"}, 400),
    ],
    ids=["no-key", "bad-key", "old-version", "no-upgrade", "no-connection-upgrade"],
)
async def test_malformed_upgrades_are_refused(
    app: Running, wire: WireConnect, change: dict[str, str | None], status: int
) -> None:
    conn = await wire(headers=change)  # type: ignore[arg-type]
    assert conn.status == status
    if status == 426:
        assert conn.headers["sec-websocket-version"] == "13"


async def test_accept_header_and_subprotocol(
    app: Running, wire: WireConnect, alice: User
) -> None:
    conn = await wire(
        token=alice.access,
        headers={
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Protocol": f"chat, {MSGPACK_SUBPROTOCOL}",
        },
    )
    assert conn.status == 101
    # The example of RFC 6455 section 1.3.
    assert conn.headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert conn.headers["sec-websocket-protocol"] == MSGPACK_SUBPROTOCOL


async def test_unknown_subprotocols_fall_back_to_json(
    app: Running, wire: WireConnect, alice: User
) -> None:
    conn = await wire(token=alice.access, headers={"Sec-WebSocket-Protocol": "chat"})
    assert "sec-websocket-protocol" not in conn.headers
    conn.send(_ping(1))
    assert (await _reply(conn))["id"] == 1


# Framing rules.


@pytest.mark.parametrize("frame", VIOLATIONS.values(), ids=VIOLATIONS.keys())
async def test_framing_violations_close_4000(
    app: Running, wire: WireConnect, alice: User, frame: bytes
) -> None:
    conn = await wire(token=alice.access)
    conn.send(_ping(0))
    assert (await _reply(conn))["id"] == 0
    conn.send(frame)
    await _closed_with(conn, CloseCode.PROTOCOL_VIOLATION)


async def test_text_that_is_not_utf8_closes_1007(
    app: Running, wire: WireConnect, alice: User
) -> None:
    conn = await wire(token=alice.access)
    conn.send(client_frame(b'{"id":1,"method":"\xff"}'))
    await _closed_with(conn, CloseCode.INVALID_PAYLOAD)


async def test_an_oversized_header_closes_1009_before_its_payload(
    app: Running, wire: WireConnect, alice: User
) -> None:
    """A header that announces more than the limit is refused at once."""
    conn = await wire(token=alice.access)
    conn.send(client_frame(b"", length=10 * 1024 * 1024))
    await _closed_with(conn, CloseCode.MESSAGE_TOO_BIG)


async def test_fragments_join_and_control_frames_may_interleave(
    app: Running, wire: WireConnect, alice: User
) -> None:
    request = orjson.dumps({"id": "frag", "method": "ping"})
    conn = await wire(token=alice.access)
    conn.send(
        client_frame(request[:5], fin=False)
        + client_frame(b"are you there", opcode=PING)
        + client_frame(request[5:12], opcode=CONTINUATION, fin=False)
        + client_frame(request[12:], opcode=CONTINUATION)
    )
    pong = await conn.frame()
    assert (pong.opcode, pong.payload) == (PONG, b"are you there")
    assert (await _reply(conn))["id"] == "frag"


async def test_frames_sent_in_a_burst_are_answered_in_order(
    app: Running, wire: WireConnect, alice: User
) -> None:
    """Requests queue behind the one running; none is lost or reordered."""
    conn = await wire(token=alice.access)
    # Fewer than the burst of the rate limit, so that every one is served.
    conn.send(b"".join(_ping(i) for i in range(30)))
    ids = [(await _reply(conn))["id"] for _ in range(30)]
    assert ids == list(range(30))


async def test_a_frame_split_across_writes_is_read(
    app: Running, wire: WireConnect, alice: User
) -> None:
    conn = await wire(token=alice.access)
    frame = _ping("split")
    for i in range(len(frame)):
        conn.send(frame[i : i + 1])
        await conn.writer.drain()
    assert (await _reply(conn))["id"] == "split"


async def test_client_close_is_answered_and_the_connection_ends(
    app: Running, wire: WireConnect, alice: User
) -> None:
    conn = await wire(token=alice.access)
    conn.send(_ping(1))
    await _reply(conn)
    conn.send(client_frame((4321).to_bytes(2, "big") + b"bye", opcode=CLOSE))
    frame = await conn.until_close()
    assert frame.close_code == 4321
    assert await conn.eof()
    assert not [s for s in app.node.sockets if s.principal and s.closed is False]


async def test_binary_frames_are_accepted_on_msgpack(
    app: Running, wire: WireConnect, alice: User
) -> None:
    conn = await wire(
        token=alice.access,
        headers={"Sec-WebSocket-Protocol": MSGPACK_SUBPROTOCOL},
    )
    conn.send(client_frame(MSGPACK.encode({"id": 7, "method": "ping"}), BINARY))
    frame = await conn.frame()
    assert frame.opcode == BINARY
    assert MSGPACK.decode(frame.payload)["id"] == 7
