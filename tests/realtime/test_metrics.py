"""``/metrics`` parses as Prometheus text and its counts follow real
traffic: sockets, fan-out, RPCs on both transports, rate limits and
close codes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from protocol.client import RpcError
from protocol.close_codes import CloseCode
from tests.conftest import Running, User
from tests.realtime.conftest import Connect, RawConnect, close_code, reply_to
from tests.scrape import scrape, value


def _limits(app: Running, **classes: tuple[float, float]) -> dict[str, Any]:
    return {**app.settings.ws_rate_limits, **classes}


async def test_counts_follow_traffic(
    app: Running,
    alice: User,
    bob: User,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sockets, a fan-out, RPCs over both transports and a rate-limit
    rejection each move their metric."""
    before = await scrape(app)

    a = await connect(alice)
    b = await connect(bob)
    conv = await a.call(
        "conversation.create", {"kind": "direct", "member_ids": [bob.id]}
    )
    await a.call(
        "message.send",
        {"conversation_id": conv["id"], "client_msg_id": "m1", "text": "hi"},
    )
    await b.next_event(match=lambda e: e["event"] == "message.new")
    async with app.client(bob.access) as http:
        r = await http.post("/v1/rpc/conversation.list", json={})
        assert r.status_code == 200, r.text

    # A typing bucket of one: the second call is refused.
    monkeypatch.setattr(
        app.node.settings, "ws_rate_limits", _limits(app, typing=(0.001, 1.0))
    )
    typing = {"conversation_id": conv["id"], "state": "start"}
    await a.call("typing", typing)
    with pytest.raises(RpcError) as refused:
        await a.call("typing", typing)
    assert refused.value.code == "rate_limited"

    after = await scrape(app)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(after, "squall_ws_open_sockets") >= 2
    assert value(after, "squall_ws_sessions") >= 2
    assert moved("squall_ws_connections_total") >= 2
    assert moved("squall_events_published_total") >= 1
    # The message reached both of alice's and bob's sockets.
    assert moved("squall_socket_deliveries_total") >= 2
    assert moved("squall_fanout_seconds_count") >= 1
    assert (
        moved(
            "squall_rpc_duration_seconds_count", method="message.send", transport="ws"
        )
        == 1
    )
    assert (
        moved(
            "squall_rpc_duration_seconds_count",
            method="conversation.list",
            transport="rest",
        )
        == 1
    )
    assert (
        moved("squall_rpc_duration_seconds_count", method="typing", transport="ws") == 2
    )
    assert moved("squall_rate_limited_total", scope="socket") == 1
    assert moved("squall_rpc_errors_total", transport="ws", code="rate_limited") == 1
    # A node alone: its bus is always up and carries nothing.
    assert value(after, "squall_bus_up") == 1
    assert value(after, "squall_bus_published_total") == 0
    assert value(after, "squall_draining") == 0
    assert value(after, "process_resident_memory_bytes") > 0


async def test_made_up_methods_share_one_label(
    app: Running, alice: User, raw: RawConnect
) -> None:
    """A method name a client invents is counted as `unknown`, so clients
    cannot add series."""
    before = await scrape(app)
    conn = await raw(alice.access)
    for i in range(3):
        await conn.write_message(
            orjson.dumps({"id": i, "method": f"nope.{i}", "params": {}}).decode()
        )
        reply = await reply_to(conn, i)
        assert reply["error"]["code"] == "not_found"
    after = await scrape(app)
    labels = {dict(k[1]).get("method") for k in after if k[0].startswith("squall_rpc")}
    assert not any(m and m.startswith("nope.") for m in labels)
    counted = value(
        after, "squall_rpc_duration_seconds_count", method="unknown", transport="ws"
    ) - value(
        before, "squall_rpc_duration_seconds_count", method="unknown", transport="ws"
    )
    assert counted == 3


async def test_close_codes_sent_are_counted(
    app: Running, alice: User, raw: RawConnect
) -> None:
    """A socket the node closes is counted under its close code."""
    before = await scrape(app)
    conn = await raw(alice.access)
    # A binary frame on the JSON subprotocol breaks the rules: 4000.
    await conn.write_message(b"\x00", binary=True)
    assert await close_code(conn) == CloseCode.PROTOCOL_VIOLATION.code
    after = await scrape(app)
    labels = {"code": "4000", "reason": "protocol_violation"}
    assert (
        value(after, "squall_ws_closes_sent_total", **labels)
        - value(before, "squall_ws_closes_sent_total", **labels)
        == 1
    )


async def test_metrics_and_readiness_are_documented(app: Running) -> None:
    async with app.client() as http:
        doc = (await http.get("/openapi.json")).json()
    assert (
        "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    )
    ready = doc["paths"]["/readyz"]["get"]["responses"]["200"]
    assert ready["content"]["application/json"]["schema"]["$ref"].endswith("/Readiness")
