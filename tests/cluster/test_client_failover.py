"""The reference client given several nodes: when its node goes, it moves to
the next one, a call made meanwhile waits for the new connection or fails
with a retryable error, and a send retried with the same client_msg_id is
stored and delivered once."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from protocol.backoff import Backoff
from protocol.client import Closed, Disconnected
from protocol.close_codes import CloseCode
from tests.cluster.conftest import Connect
from tests.conftest import Running, register_and_login

pytestmark = pytest.mark.postgres


class SteadyBackoff(Backoff):
    """Always the same delay, so that the test can act while the client is
    between connections."""

    def next_delay(self, rng: random.Random | None = None) -> float:
        self.attempt += 1
        return 0.3


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_call_made_while_reconnecting_waits_for_the_next_node(
    two_nodes: tuple[Running, Running], connect: Connect
) -> None:
    a, b = two_nodes
    alice = await register_and_login(a, "alice")
    client = await connect([a.ws_url, b.ws_url], alice, backoff=SteadyBackoff())
    assert client.url == a.ws_url

    for conn in a.node.connections.open_sockets():
        conn.close_when_idle()
    await _until(lambda: client.close_code == CloseCode.SERVER_RESTARTING.code)

    # Between connections: the call waits for the next one.
    assert (await client.call("ping", timeout=5))["pong"]
    assert client.url == b.ws_url
    assert client.connects == 2
    assert len(b.node.connections) == 1


async def test_a_call_fails_retryable_when_no_node_answers_in_time(
    two_nodes: tuple[Running, Running], connect: Connect
) -> None:
    a, _ = two_nodes
    alice = await register_and_login(a, "alice")
    # The second URL is a port nothing listens on.
    client = await connect(
        [a.ws_url, "ws://127.0.0.1:9/v1/ws"], alice, backoff=SteadyBackoff()
    )
    for conn in a.node.connections.open_sockets():
        conn.close_when_idle()
    await _until(lambda: client.close_code == CloseCode.SERVER_RESTARTING.code)

    with pytest.raises(Disconnected) as info:
        await client.call("ping", timeout=0.1)
    assert info.value.retryable
    # It keeps trying, and is back on the first node soon.
    await _until(lambda: client.connects == 2, timeout=10)
    assert client.url == a.ws_url
    assert (await client.call("ping"))["pong"]

    await client.close()
    with pytest.raises(Closed) as closed:
        await client.call("ping")
    assert not closed.value.retryable


async def test_a_client_connects_to_the_first_node_that_answers(
    two_nodes: tuple[Running, Running], connect: Connect
) -> None:
    _, b = two_nodes
    alice = await register_and_login(b, "alice")
    client = await connect(["ws://127.0.0.1:9/v1/ws", b.ws_url], alice)
    assert client.url == b.ws_url


async def test_a_send_cut_off_after_its_commit_is_retried_and_delivered_once(
    two_nodes: tuple[Running, Running],
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Node a stores a send and dies before publishing it or answering: the
    sender gets a retryable error, retries on node b with the same
    client_msg_id, gets the stored message, and b announces it, so that a
    socket on b receives it once even though nothing is sent after it."""
    a, b = two_nodes
    alice = await register_and_login(a, "alice")
    bob = await register_and_login(a, "bob")
    sender = await connect([a.ws_url, b.ws_url], alice, backoff=SteadyBackoff())
    receiver = await connect([b.ws_url], bob)
    conv = await sender.call(
        "conversation.create", {"kind": "group", "title": "g", "member_ids": [bob.id]}
    )
    conv_id = str(conv["id"])
    await receiver.next_event(match=lambda e: e["event"] == "member.added")

    real_send = a.node.messages.send
    stored: list[int] = []

    async def publish_nothing(channel: str, envelope: dict[str, Any]) -> None:
        return None

    async def store_then_die(user_id: uuid.UUID, params: Any) -> Any:
        monkeypatch.setattr(a.node.messages, "publish", publish_nothing)
        result = await real_send(user_id, params)
        stored.append(result.seq)
        a.node.connections.close_all()  # no close frame, no reply
        return result

    monkeypatch.setattr(a.node.messages, "send", store_then_die)
    params = {"conversation_id": conv_id, "client_msg_id": "once", "text": "hi"}
    with pytest.raises(Disconnected):
        await sender.call("message.send", params)
    assert stored == [2]

    again = await sender.call("message.send", params)
    assert again["seq"] == 2
    assert sender.url == b.ws_url

    new = await receiver.next_event(match=lambda e: e["event"] == "message.new")
    assert (new["seq"], new["data"]["client_msg_id"]) == (2, "once")
    history = await receiver.call("message.history", {"conversation_id": conv_id})
    assert [m["client_msg_id"] for m in history["messages"]] == ["once"]
    with pytest.raises(TimeoutError):
        await receiver.next_event(timeout=0.3, match=lambda e: "seq" in e)
