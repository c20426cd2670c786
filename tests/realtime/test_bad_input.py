"""What the socket does with frames and handshakes it must refuse, on both
storage engines: an error reply where the client can go on, a close code
where it cannot."""

from __future__ import annotations

import asyncio
import time
import uuid

import jwt
import orjson
import pytest
import tornado.httpclient
from tornado.websocket import WebSocketClientConnection

from protocol.client import RpcError
from protocol.close_codes import CloseCode
from protocol.codecs import MSGPACK, MSGPACK_SUBPROTOCOL
from tests.conftest import Running, User
from tests.realtime.conftest import (
    Connect,
    RawConnect,
    close_code,
    receive,
    reply_to,
)


def _resign(token: str, key: str | bytes, **changes: object) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    claims.update(changes)
    return jwt.encode(claims, key, algorithm="HS256")


async def _ping_works(conn: WebSocketClientConnection) -> None:
    await conn.write_message(orjson.dumps({"id": "p", "method": "ping"}).decode())
    reply = await reply_to(conn, "p")
    assert reply["result"]["pong"] is True


# Frames that are not requests.


async def test_invalid_json_gets_an_error_and_the_socket_lives(
    app: Running, alice: User, raw: RawConnect
) -> None:
    """A frame that is not JSON is answered with invalid_json and id null."""
    conn = await raw(alice.access)
    await conn.write_message("{not json")
    reply = await receive(conn)
    assert reply["id"] is None
    assert reply["error"]["code"] == "invalid_json"
    assert reply["error"]["temporary"] is False
    await _ping_works(conn)


NOT_REQUESTS = [
    ("[1, 2, 3]", None),
    ("42", None),
    ('"ping"', None),
    ("null", None),
    ('{"id": 7, "params": {}}', 7),
    ('{"id": "x", "method": ""}', "x"),
    ('{"id": "y", "method": "ping", "params": [1]}', "y"),
    ('{"id": "z", "method": "ping", "extra": 1}', "z"),
    ('{"id": "' + "i" * 65 + '", "method": "ping"}', None),
    ('{"method": "ping"}', None),
    ('{"id": true, "method": "ping"}', None),
    ('{"id": 1.5, "method": "ping"}', None),
]


async def test_frames_that_are_not_requests(
    app: Running, alice: User, raw: RawConnect
) -> None:
    """JSON that is not a request is validation_failed with a usable id or null."""
    conn = await raw(alice.access)
    for frame, request_id in NOT_REQUESTS:
        await conn.write_message(frame)
        reply = await receive(conn)
        assert reply["id"] == request_id, frame
        assert reply["error"]["code"] == "validation_failed", frame
    await _ping_works(conn)


async def test_unknown_method_is_not_found(
    app: Running, alice: User, connect: Connect
) -> None:
    """A method outside the protocol's table is not_found; the socket lives."""
    a = await connect(alice)
    for name in ("no.such.method", "Ping", "auth.", "x" * 64):
        with pytest.raises(RpcError) as info:
            await a.call(name)
        assert info.value.code == "not_found"
    assert (await a.call("ping"))["pong"] is True


CONV = str(uuid.uuid4())
MSG = {"conversation_id": CONV, "client_msg_id": "m1", "text": "hello"}


BAD_PARAMS: list[tuple[str, dict[str, object], str]] = [
    ("message.send", {**MSG, "conversation_id": 123}, "conversation_id"),
    ("message.send", {**MSG, "conversation_id": "nope"}, "conversation_id"),
    ("message.send", {"client_msg_id": "m1", "text": "t"}, "conversation_id"),
    ("message.send", {**MSG, "text": 5}, "text"),
    ("message.send", {**MSG, "text": "x" * 9000}, "text"),
    ("message.send", {**MSG, "text": ""}, "text"),
    ("message.send", {**MSG, "client_msg_id": "bad id!"}, "client_msg_id"),
    ("message.send", {**MSG, "client_msg_id": "c" * 65}, "client_msg_id"),
    ("message.send", {**MSG, "extra": 1}, "extra"),
    (
        "message.send",
        {**MSG, "attachment_ids": [str(uuid.uuid4()) for _ in range(11)]},
        "attachment_ids",
    ),
    ("message.history", {"conversation_id": CONV, "limit": 1000}, "limit"),
    ("message.history", {"conversation_id": CONV, "limit": "10"}, "limit"),
    ("message.read", {"conversation_id": CONV, "seq": -1}, "seq"),
    ("message.read", {"conversation_id": CONV, "seq": True}, "seq"),
    ("typing", {"conversation_id": CONV, "state": "maybe"}, "state"),
    (
        "conversation.create",
        {"kind": "group", "member_ids": [], "title": "t" * 200},
        "title",
    ),
    ("conversation.create", {"kind": "party", "member_ids": []}, "kind"),
    ("presence.get", {"user_ids": []}, "user_ids"),
    ("sync", {"positions": {"not-a-uuid": 1}}, "positions"),
    ("auth", {"token": "t" * 5000}, "token"),
]


async def test_bad_params_are_validation_failed(
    app: Running, alice: User, connect: Connect
) -> None:
    """Bad, missing, unknown or oversized params are validation_failed."""
    a = await connect(alice)
    for method, params, field in BAD_PARAMS:
        with pytest.raises(RpcError) as info:
            await a.call(method, params)
        assert info.value.code == "validation_failed", (method, field)
        fields = {f["field"] for f in info.value.body["details"]["fields"]}
        assert any(f == field or f.startswith(f"{field}.") for f in fields), fields
        assert "x" * 100 not in orjson.dumps(info.value.body).decode()
    assert (await a.call("ping"))["pong"] is True


# Framing rules: broken ones close the socket.


async def test_binary_frame_on_json_closes_4000(
    app: Running, alice: User, raw: RawConnect
) -> None:
    """A binary frame on squall.v1.json is a protocol violation (4000)."""
    conn = await raw(alice.access)
    await conn.write_message(orjson.dumps({"id": 1, "method": "ping"}), binary=True)
    assert await close_code(conn) == CloseCode.PROTOCOL_VIOLATION.code


async def test_text_frame_on_msgpack_closes_4000(
    app: Running, alice: User, raw: RawConnect
) -> None:
    """A text frame on squall.v1.msgpack is a protocol violation (4000)."""
    conn = await raw(alice.access, subprotocol=MSGPACK_SUBPROTOCOL)
    assert conn.selected_subprotocol == MSGPACK_SUBPROTOCOL
    await conn.write_message(orjson.dumps({"id": 1, "method": "ping"}).decode())
    assert await close_code(conn) == CloseCode.PROTOCOL_VIOLATION.code


async def test_msgpack_binary_frames_work_and_bad_ones_are_answered(
    app: Running, alice: User, raw: RawConnect
) -> None:
    """On msgpack, undecodable binary frames get invalid_json; good ones work."""
    conn = await raw(alice.access, subprotocol=MSGPACK_SUBPROTOCOL)
    await conn.write_message(b"\xc1\xc1", binary=True)
    reply = MSGPACK.decode(await conn.read_message())
    assert reply["id"] is None
    assert reply["error"]["code"] == "invalid_json"
    await conn.write_message(MSGPACK.encode({"id": 2, "method": "ping"}), binary=True)
    reply = MSGPACK.decode(await conn.read_message())
    assert reply["id"] == 2
    assert reply["result"]["pong"] is True


async def test_frame_over_the_limit_closes_1009(
    app: Running, alice: User, raw: RawConnect
) -> None:
    """A frame larger than ws_max_frame_bytes closes the socket with 1009."""
    conn = await raw(alice.access)
    await _ping_works(conn)
    limit = app.settings.ws_max_frame_bytes
    frame = orjson.dumps({"id": 1, "method": "ping", "params": {"pad": "x" * limit}})
    assert len(frame) > limit
    await conn.write_message(frame.decode())
    assert await close_code(conn) == CloseCode.MESSAGE_TOO_BIG.code


async def test_frame_at_the_limit_is_read(
    app: Running, alice: User, raw: RawConnect
) -> None:
    """A frame of exactly ws_max_frame_bytes is read and answered."""
    conn = await raw(alice.access)
    limit = app.settings.ws_max_frame_bytes
    empty = orjson.dumps({"id": 1, "method": "ping", "params": {"pad": ""}})
    pad = "x" * (limit - len(empty))
    frame = orjson.dumps({"id": 1, "method": "ping", "params": {"pad": pad}})
    assert len(frame) == limit
    await conn.write_message(frame.decode())
    reply = await reply_to(conn, 1)
    assert reply["error"]["code"] == "validation_failed"
    await _ping_works(conn)


# Authentication.


async def test_method_before_auth_is_auth_required(
    app: Running, alice: User, raw: RawConnect
) -> None:
    """Before auth, every method but auth is refused with auth_required."""
    conn = await raw()
    await conn.write_message(orjson.dumps({"id": 1, "method": "ping"}).decode())
    reply = await reply_to(conn, 1)
    assert reply["error"]["code"] == "auth_required"
    await conn.write_message(
        orjson.dumps({"id": 2, "method": "auth", "params": {"token": alice.access}})
    )
    reply = await reply_to(conn, 2)
    assert reply["result"]["user_id"] == alice.id
    assert reply["result"]["session_id"] == alice.session_id
    await _ping_works(conn)


async def test_no_auth_in_time_closes_4001(
    app: Running, raw: RawConnect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket that sends no auth within ws_auth_timeout_s is closed 4001."""
    monkeypatch.setattr(app.node.settings, "ws_auth_timeout_s", 0.3)
    conn = await raw()
    started = time.monotonic()
    assert await close_code(conn, timeout=3) == CloseCode.AUTH_TIMEOUT.code
    assert time.monotonic() - started < 2


async def test_auth_in_time_outlives_the_deadline(
    app: Running, alice: User, raw: RawConnect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket that authenticates before the deadline is not closed by it."""
    monkeypatch.setattr(app.node.settings, "ws_auth_timeout_s", 0.3)
    conn = await raw()
    await conn.write_message(
        orjson.dumps({"id": 1, "method": "auth", "params": {"token": alice.access}})
    )
    assert "result" in await reply_to(conn, 1)
    await asyncio.sleep(0.5)
    await _ping_works(conn)


@pytest.mark.parametrize(
    "header",
    ["Bearer garbage", "Bearer not.a.jwt", "Basic dXNlcjpwYXNz", "Bearer", "Bearer  "],
)
async def test_garbage_bearer_closes_4002(
    app: Running, raw: RawConnect, header: str
) -> None:
    """A malformed Authorization header closes the socket with 4002."""
    conn = await raw(headers={"Authorization": header})
    assert await close_code(conn) == CloseCode.INVALID_TOKEN.code


async def test_forged_token_closes_4002(
    app: Running, alice: User, raw: RawConnect
) -> None:
    """A forged token, or one naming an unknown session, closes with 4002."""
    forged = _resign(alice.access, "another-secret-of-sufficient-length-000")
    conn = await raw(forged)
    assert await close_code(conn) == CloseCode.INVALID_TOKEN.code
    unknown = _resign(alice.access, app.settings.hs_secret(), sid=str(uuid.uuid4()))
    conn = await raw(unknown)
    assert await close_code(conn) == CloseCode.INVALID_TOKEN.code


async def test_expired_token_closes_4003(
    app: Running, alice: User, raw: RawConnect
) -> None:
    """An expired access token in the header closes the socket with 4003."""
    past = int(time.time()) - 3600
    expired = _resign(alice.access, app.settings.hs_secret(), iat=past - 900, exp=past)
    conn = await raw(expired)
    assert await close_code(conn) == CloseCode.TOKEN_EXPIRED.code


async def test_auth_request_works(
    app: Running, alice: User, bob: User, connect: Connect
) -> None:
    """The client with auth_in_header=False authenticates by request and chats."""
    a = await connect(alice, auth_in_header=False, call_timeout_s=3)
    b = await connect(bob, auth_in_header=False, call_timeout_s=3)
    assert (await a.call("ping"))["pong"] is True
    conv = await a.call(
        "conversation.create", {"kind": "direct", "member_ids": [bob.id]}
    )
    await a.call(
        "message.send",
        {"conversation_id": conv["id"], "client_msg_id": "m1", "text": "hi"},
    )
    new = await b.next_event(match=lambda e: e["event"] == "message.new")
    assert new["data"]["text"] == "hi"


@pytest.mark.parametrize("kind", ["garbage", "forged", "expired"])
async def test_bad_auth_request_is_answered_then_closed(
    app: Running, alice: User, raw: RawConnect, kind: str
) -> None:
    """A refused first auth request gets an error reply, then its close code."""
    past = int(time.time()) - 3600
    secret = app.settings.hs_secret()
    token, code, close = {
        "garbage": ("garbage", "invalid_token", CloseCode.INVALID_TOKEN),
        "forged": (
            _resign(alice.access, "another-secret-of-sufficient-length-000"),
            "invalid_token",
            CloseCode.INVALID_TOKEN,
        ),
        "expired": (
            _resign(alice.access, secret, iat=past - 900, exp=past),
            "token_expired",
            CloseCode.TOKEN_EXPIRED,
        ),
    }[kind]
    conn = await raw()
    await conn.write_message(
        orjson.dumps({"id": "a", "method": "auth", "params": {"token": token}})
    )
    reply = await reply_to(conn, "a")
    assert reply["error"]["code"] == code
    assert await close_code(conn) == close.code


# Browser origins.


async def test_foreign_origin_is_refused(
    app: Running, alice: User, raw: RawConnect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A browser Origin not in allowed_origins never gets a working socket."""
    monkeypatch.setattr(
        app.node.settings, "allowed_origins", ["https://app.example.com"]
    )
    origins = ("https://evil.example.com", "null", "https://app.example.com.evil")
    for origin in origins:
        try:
            conn = await raw(alice.access, headers={"Origin": origin})
        except tornado.httpclient.HTTPClientError as exc:
            refused = exc.code
        else:
            refused = None
        if refused is not None:
            assert refused == 403, origin
            continue
        await conn.write_message(orjson.dumps({"id": 1, "method": "ping"}).decode())
        frame = await asyncio.wait_for(conn.read_message(), 5)
        assert frame is None, (origin, frame)
        assert conn.close_code == CloseCode.FORBIDDEN.code, origin


async def test_allowed_origin_and_no_origin_connect(
    app: Running, alice: User, raw: RawConnect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An allowed browser Origin connects, and so does a client sending none."""
    monkeypatch.setattr(
        app.node.settings, "allowed_origins", ["https://app.example.com"]
    )
    conn = await raw(alice.access, headers={"Origin": "https://app.example.com"})
    await _ping_works(conn)
    conn = await raw(alice.access)
    await _ping_works(conn)


async def test_any_origin_with_star(
    app: Running, alice: User, raw: RawConnect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """allowed_origins ["*"] lets any browser origin connect."""
    monkeypatch.setattr(app.node.settings, "allowed_origins", ["*"])
    conn = await raw(alice.access, headers={"Origin": "https://anywhere.example"})
    await _ping_works(conn)
