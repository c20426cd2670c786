"""The limits a socket lives under, on both storage engines: rate limits,
the outbox bound, token swaps, and sessions ended elsewhere."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import datetime
from typing import Any

import httpx
import jwt
import orjson
import pytest

from protocol.client import Closed, RpcError, SquallClient
from protocol.close_codes import CloseCode
from tests.conftest import Running, User
from tests.realtime.conftest import (
    Connect,
    RawConnect,
    close_code,
    login,
    reply_to,
)
from tests.scrape import scrape, value


def _limits(app: Running, **classes: tuple[float, float]) -> dict[str, Any]:
    return {**app.settings.ws_rate_limits, **classes}


async def _direct(client: SquallClient, other: User) -> str:
    conv = await client.call(
        "conversation.create", {"kind": "direct", "member_ids": [other.id]}
    )
    conv_id: str = conv["id"]
    return conv_id


async def _closed_with(client: SquallClient, timeout: float = 5.0) -> int | None:
    """Wait until the client's connection ends for good; its close code."""
    with pytest.raises(Closed) as info:
        await client.next_event(timeout=timeout, match=lambda e: False)
    return info.value.code


async def _refresh(app: Running, refresh_token: str) -> httpx.Response:
    async with app.client() as http:
        return await http.post(
            "/v1/auth/refresh", json={"refresh_token": refresh_token}
        )


# Rate limits.


async def test_rapid_writes_are_rate_limited(
    app: Running,
    alice: User,
    bob: User,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Writes past the bucket get rate_limited, retry_after_ms > 0; socket lives."""
    monkeypatch.setattr(
        app.node.settings, "ws_rate_limits", _limits(app, write=(2.0, 3.0))
    )
    a = await connect(alice)
    conv = await _direct(a, bob)

    outcomes = await asyncio.gather(
        *(
            a.call(
                "message.send",
                {"conversation_id": conv, "client_msg_id": f"m{i}", "text": "spam"},
            )
            for i in range(10)
        ),
        return_exceptions=True,
    )
    limited = [o for o in outcomes if isinstance(o, RpcError)]
    sent = [o for o in outcomes if isinstance(o, dict)]
    assert len(sent) + len(limited) == 10, outcomes
    # Two tokens are left after the create, plus what refills meanwhile.
    assert 2 <= len(sent) <= 5
    assert len(limited) >= 5
    for error in limited:
        assert error.code == "rate_limited"
        assert error.retry_after_ms is not None
        assert 0 < error.retry_after_ms <= 500
        assert error.body["temporary"] is True

    # Reads and pings have their own buckets.
    assert (await a.call("ping"))["pong"] is True
    history = await a.call("message.history", {"conversation_id": conv})
    assert len(history["messages"]) == len(sent)

    await asyncio.sleep(max(e.retry_after_ms or 0 for e in limited) / 1000)
    again = await a.call(
        "message.send",
        {"conversation_id": conv, "client_msg_id": "later", "text": "calm"},
    )
    assert again["seq"] > max(s["seq"] for s in sent)


async def test_sustained_abuse_closes_4006(
    app: Running,
    alice: User,
    bob: User,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A socket that keeps hitting its rate limit is closed with 4006."""
    monkeypatch.setattr(
        app.node.settings, "ws_rate_limits", _limits(app, write=(0.1, 2.0))
    )
    monkeypatch.setattr(app.node.settings, "ws_abuse_limit", 5)
    before = await scrape(app)
    a = await connect(alice, reconnect=False, call_timeout_s=3)
    conv = await _direct(a, bob)

    codes = []
    for i in range(30):
        if a.close_code is not None:
            break
        try:
            await a.call(
                "message.send",
                {"conversation_id": conv, "client_msg_id": f"m{i}", "text": "spam"},
            )
        except RpcError as exc:
            codes.append(exc.code)
        except Closed:
            break
    else:
        pytest.fail("the socket outlived 30 writes at a 0.1/s limit")
    assert set(codes) == {"rate_limited"}
    assert len(codes) > 5
    assert await _closed_with(a) == CloseCode.RATE_LIMITED.code

    # /metrics saw every rejection and the close.
    after = await scrape(app)
    rejected = value(after, "squall_rate_limited_total", scope="socket") - value(
        before, "squall_rate_limited_total", scope="socket"
    )
    assert rejected >= len(codes)
    labels = {"code": "4006", "reason": "rate_limited"}
    closes = value(after, "squall_ws_closes_sent_total", **labels) - value(
        before, "squall_ws_closes_sent_total", **labels
    )
    assert closes == 1


async def test_rate_limits_are_per_socket(
    app: Running,
    alice: User,
    bob: User,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One socket exhausting its bucket does not limit another socket."""
    monkeypatch.setattr(
        app.node.settings, "ws_rate_limits", _limits(app, write=(0.1, 2.0))
    )
    a1 = await connect(alice)
    a2 = await connect(alice)
    conv = await _direct(a1, bob)
    await a1.call(
        "message.send", {"conversation_id": conv, "client_msg_id": "a", "text": "1"}
    )
    with pytest.raises(RpcError) as info:
        await a1.call(
            "message.send",
            {"conversation_id": conv, "client_msg_id": "b", "text": "2"},
        )
    assert info.value.code == "rate_limited"
    sent = await a2.call(
        "message.send", {"conversation_id": conv, "client_msg_id": "c", "text": "3"}
    )
    assert sent["seq"] == 3


# The outbox bound.


def _sessions_of(app: Running, user: User) -> list[Any]:
    return [
        s
        for s in app.node.sockets
        if s.principal is not None and str(s.principal.user_id) == user.id
    ]


async def test_slow_consumer_is_closed(
    app: Running,
    alice: User,
    bob: User,
    raw: RawConnect,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A socket that stops reading while events pile up is closed; readers stay."""
    monkeypatch.setattr(app.node.settings, "ws_outbox_max_bytes", 16384)
    monkeypatch.setattr(
        app.node.settings, "ws_rate_limits", _limits(app, write=(1000.0, 1000.0))
    )
    a = await connect(alice)
    conv = await _direct(a, bob)
    before = await scrape(app)

    # bob authenticates, then never reads again.
    conn = await raw(bob.access)
    await conn.write_message(orjson.dumps({"id": 1, "method": "ping"}).decode())
    assert "result" in await reply_to(conn, 1)
    (session,) = _sessions_of(app, bob)
    # On loopback the kernel lets a send buffer grow to megabytes before a
    # write would block; shrink both ends so that the outbox fills after a
    # few dozen kilobytes instead of after seconds of flooding.
    conn.protocol.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server_socket = session.transport.socket
    server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    text = "x" * 2000
    deadline = time.monotonic() + 20
    batch = 0
    while _sessions_of(app, bob):
        assert time.monotonic() < deadline, "the node never gave up on bob"
        await asyncio.gather(
            *(
                a.call(
                    "message.send",
                    {
                        "conversation_id": conv,
                        "client_msg_id": f"m{batch}-{i}",
                        "text": text,
                    },
                )
                for i in range(10)
            )
        )
        batch += 1
    assert session.closed

    # Reading now, bob gets what was already on its way, then the close.
    assert await close_code(conn, timeout=10) == CloseCode.SLOW_CONSUMER.code

    # alice read everything all along and is still connected.
    assert (await a.call("ping"))["pong"] is True
    assert a.close_code is None

    after = await scrape(app)
    overflows = value(after, "squall_ws_outbox_overflows_total") - value(
        before, "squall_ws_outbox_overflows_total"
    )
    assert overflows == 1


async def test_a_reader_that_keeps_up_is_never_a_slow_consumer(
    app: Running,
    alice: User,
    bob: User,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reader that keeps up is never closed 4007, even for a frame over the bound."""
    monkeypatch.setattr(app.node.settings, "ws_outbox_max_bytes", 8192)
    a = await connect(alice, reconnect=False)
    b = await connect(bob, reconnect=False)
    conv = await _direct(a, bob)
    await a.call(
        "message.send",
        {"conversation_id": conv, "client_msg_id": "big", "text": "y" * 8000},
    )
    new = await b.next_event(match=lambda e: e["event"] == "message.new")
    assert new["data"]["text"] == "y" * 8000
    assert (await a.call("ping"))["pong"] is True
    assert (await b.call("ping"))["pong"] is True


async def test_catch_up_larger_than_the_outbox_completes(
    app: Running,
    alice: User,
    bob: User,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A catch-up larger than the default outbox bound still completes."""
    monkeypatch.setattr(
        app.node.settings, "ws_rate_limits", _limits(app, write=(1000.0, 1000.0))
    )
    a = await connect(alice)
    b1 = await connect(bob)
    conv = await _direct(a, bob)
    await b1.next_event(match=lambda e: e["event"] == "member.added")
    await b1.close()

    # A little over 1 MiB of messages, while bob is away.
    count, text = 140, "z" * 7900
    assert count * len(text) > app.settings.ws_outbox_max_bytes
    for start in range(0, count, 20):
        await asyncio.gather(
            *(
                a.call(
                    "message.send",
                    {"conversation_id": conv, "client_msg_id": f"m{i}", "text": text},
                )
                for i in range(start, min(count, start + 20))
            )
        )

    b2 = await connect(bob, positions=b1.positions, reconnect=False, call_timeout_s=3)
    seqs = []
    while len(seqs) < count:
        event = await b2.next_event(
            timeout=10, match=lambda e: e["event"] == "message.new"
        )
        seqs.append(event["seq"])
    assert seqs == list(range(2, 2 + count))
    assert b2.connects == 1


# Swapping the token of a live socket.


async def test_auth_again_swaps_the_token_without_dropping_events(
    app: Running, alice: User, bob: User, connect: Connect
) -> None:
    """auth with a refreshed token on a live socket drops no event."""
    a = await connect(alice)
    b = await connect(bob)
    conv = await _direct(b, alice)
    await a.next_event(match=lambda e: e["event"] == "member.added")

    r = await _refresh(app, alice.refresh)
    assert r.status_code == 200, r.text
    fresh = r.json()["access_token"]
    assert fresh != alice.access

    async def flood() -> list[int]:
        seqs = []
        for i in range(10):
            sent = await b.call(
                "message.send",
                {"conversation_id": conv, "client_msg_id": f"m{i}", "text": str(i)},
            )
            seqs.append(sent["seq"])
        return seqs

    flooding = asyncio.ensure_future(flood())
    await asyncio.sleep(0.05)
    swapped = await a.call("auth", {"token": fresh})
    assert swapped["user_id"] == alice.id
    assert swapped["session_id"] == alice.session_id
    claims = jwt.decode(fresh, options={"verify_signature": False})
    expires_at = datetime.fromisoformat(swapped["expires_at"].replace("Z", "+00:00"))
    assert expires_at.timestamp() == claims["exp"]
    sent_seqs = await flooding

    got = []
    while len(got) < len(sent_seqs):
        event = await a.next_event(match=lambda e: e["event"] == "message.new")
        got.append(event["seq"])
    assert got == sent_seqs
    assert got == list(range(got[0], got[0] + len(got)))


async def test_auth_with_another_users_token_is_refused(
    app: Running, alice: User, bob: User, connect: Connect
) -> None:
    """A live socket cannot be switched to another user; it stays as it was."""
    a = await connect(alice)
    with pytest.raises(RpcError) as info:
        await a.call("auth", {"token": bob.access})
    assert info.value.code == "forbidden"
    assert (await a.call("ping"))["pong"] is True
    again = await a.call("auth", {"token": alice.access})
    assert again["user_id"] == alice.id


# Sessions ended elsewhere.


async def test_logout_closes_that_sessions_socket_only(
    app: Running, alice: User, connect: Connect
) -> None:
    """Logout closes that session's sockets with 4004; another login's stays."""
    other = await login(app, alice)
    assert other.session_id != alice.session_id
    a1 = await connect(alice, reconnect=False)
    a2 = await connect(other)

    async with app.client(alice.access) as http:
        r = await http.post("/v1/auth/logout", json={})
    assert r.status_code == 200, r.text

    started = time.monotonic()
    assert await _closed_with(a1) == CloseCode.SESSION_REVOKED.code
    assert time.monotonic() - started < 3
    assert (await a2.call("ping"))["pong"] is True


async def test_logout_by_refresh_token_closes_the_socket(
    app: Running, alice: User, connect: Connect
) -> None:
    """Logout naming the session by its refresh token closes its sockets."""
    a = await connect(alice, reconnect=False)
    async with app.client() as http:
        r = await http.post("/v1/auth/logout", json={"refresh_token": alice.refresh})
    assert r.status_code == 200, r.text
    assert await _closed_with(a) == CloseCode.SESSION_REVOKED.code


async def test_refresh_reuse_closes_that_sessions_socket_only(
    app: Running, alice: User, connect: Connect
) -> None:
    """Refresh-token reuse closes that session's sockets 4004; others stay."""
    other = await login(app, alice)
    a1 = await connect(alice, reconnect=False)
    a2 = await connect(other)

    first = await _refresh(app, alice.refresh)
    assert first.status_code == 200, first.text
    assert (await a1.call("ping"))["pong"] is True
    reused = await _refresh(app, alice.refresh)
    assert reused.status_code == 401
    assert reused.json()["error"]["code"] == "refresh_reused"

    assert await _closed_with(a1) == CloseCode.SESSION_REVOKED.code
    assert (await a2.call("ping"))["pong"] is True


async def test_revoked_session_cannot_open_a_socket(
    app: Running, alice: User, raw: RawConnect
) -> None:
    """A logged-out session's token is refused 4004, by header or by auth."""
    async with app.client(alice.access) as http:
        r = await http.post("/v1/auth/logout", json={})
    assert r.status_code == 200
    conn = await raw(alice.access)
    assert await close_code(conn) == CloseCode.SESSION_REVOKED.code

    conn = await raw()
    await conn.write_message(
        orjson.dumps({"id": 1, "method": "auth", "params": {"token": alice.access}})
    )
    reply = await reply_to(conn, 1)
    assert reply["error"]["code"] == "token_revoked"
    assert await close_code(conn) == CloseCode.SESSION_REVOKED.code
