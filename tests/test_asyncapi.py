"""The AsyncAPI document names every method, event and close code, holds no
dangling reference, is served by a node, and the events a node really
sends have the data the event table describes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol.asyncapi import build_asyncapi
from protocol.client import SquallClient
from protocol.close_codes import CloseCode
from protocol.codecs import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL
from protocol.events import EVENT_SPECS, EVENTS
from protocol.methods import METHODS
from rest.system import squall_version
from tests.conftest import Running, User, register_and_login

DOC = build_asyncapi("1.2.3")


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        for value in node.values():
            found.extend(_refs(value))
        return found
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        key = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict), ref
        assert key in node, ref
        node = node[key]
    return node


def test_document_header() -> None:
    assert DOC["asyncapi"] == "3.0.0"
    assert DOC["info"]["version"] == "1.2.3"
    channel = DOC["channels"]["ws"]
    assert channel["address"] == "/v1/ws"
    names = {p["name"] for p in channel["x-subprotocols"]}
    assert names == {JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL}


def test_every_method_is_an_operation_with_its_schemas() -> None:
    operations = DOC["operations"]
    messages = DOC["components"]["messages"]
    for name, spec in METHODS.items():
        op = operations[f"call.{name}"]
        assert op["action"] == "receive"
        assert op["x-rate-class"] == spec.rate_class
        assert op["x-socket-only"] == spec.socket_only
        request = messages[f"request.{name}"]["payload"]
        assert request["properties"]["method"] == {"const": name}
        params = _resolve(DOC, request["properties"]["params"]["$ref"])
        assert params["title"] == spec.params.__name__
        reply = messages[f"reply.{name}"]["payload"]
        result = _resolve(DOC, reply["properties"]["result"]["$ref"])
        assert result["title"] == spec.result.__name__
        replies = [m["$ref"] for m in op["reply"]["messages"]]
        assert replies[-1].endswith("/error")


def test_every_event_is_an_operation_with_its_schema() -> None:
    assert set(EVENTS) == set(EVENT_SPECS)
    assert not [name for name in EVENTS if name.startswith("_")]
    for name, model in EVENTS.items():
        op = DOC["operations"][f"event.{name}"]
        assert op["action"] == "send"
        payload = DOC["components"]["messages"][f"event.{name}"]["payload"]
        assert payload["properties"]["event"] == {"const": name}
        data = _resolve(DOC, payload["properties"]["data"]["$ref"])
        assert data["title"] == model.__name__
        assert ("seq" in payload["required"]) == EVENT_SPECS[name].seq


def test_every_close_code_is_listed() -> None:
    listed = {c["code"]: c for c in DOC["channels"]["ws"]["x-close-codes"]}
    for close in CloseCode:
        assert listed[close.code]["reason"] == close.reason
        assert listed[close.code]["reconnect"] is close.reconnect
        assert listed[close.code]["advice"] == close.advice


def test_every_ref_resolves() -> None:
    refs = _refs(DOC)
    assert len(refs) > 50
    for ref in refs:
        _resolve(DOC, ref)


async def test_node_serves_the_document(app: Running) -> None:
    async with app.client() as http:
        r = await http.get("/asyncapi.json")
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("application/json")
        assert r.json() == json.loads(json.dumps(build_asyncapi(squall_version())))
        again = await http.get("/asyncapi.json")
    assert again.content == r.content


def _check(frame: dict[str, Any]) -> str:
    """Assert that a received event frame matches the event table."""
    name: str = frame["event"]
    spec = EVENT_SPECS[name]
    data = frame["data"]
    EVENTS[name].model_validate(data)
    unknown = set(data) - set(EVENTS[name].model_fields)
    assert not unknown, (name, unknown)
    assert (frame.get("seq") is not None) == spec.seq, frame
    if spec.channel is None:
        assert frame.get("channel") is None, frame
    else:
        prefix = spec.channel.split("{", 1)[0]
        assert frame["channel"].startswith(prefix), frame
    return name


async def test_sent_events_match_the_event_table(
    app: Running, alice: User, bob: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A warning window longer than a token's life: session.expiring at once.
    monkeypatch.setattr(app.settings, "ws_expiry_warning_s", 10_000.0)
    carol = await register_and_login(app, "carol")
    url = app.ws_url
    a = SquallClient(url, alice.access)
    b = SquallClient(url, bob.access, codec="msgpack")
    c = SquallClient(url, carol.access)
    seen: set[str] = set()

    async def expect(client: SquallClient, name: str) -> dict[str, Any]:
        frame = await client.next_event(match=lambda e: e["event"] == name)
        seen.add(_check(frame))
        return frame

    try:
        await a.connect()
        await b.connect()
        await expect(a, "session.expiring")

        conv = await a.call(
            "conversation.create",
            {"kind": "group", "member_ids": [bob.id], "title": "Team"},
        )
        cid = conv["id"]
        await expect(b, "member.added")
        await a.call("conversation.update", {"conversation_id": cid, "title": "Crew"})
        renamed = await expect(b, "conversation.updated")
        assert renamed["data"]["title"] == "Crew"
        sent = await a.call(
            "message.send", {"conversation_id": cid, "client_msg_id": "m1", "text": "x"}
        )
        await expect(b, "message.new")
        ref = {"conversation_id": cid, "message_id": sent["message_id"]}
        await a.call("message.edit", {**ref, "text": "y"})
        await expect(b, "message.edited")
        await b.call("message.read", {"conversation_id": cid, "seq": sent["seq"]})
        await expect(a, "receipt")
        await b.call("typing", {"conversation_id": cid, "state": "start"})
        await expect(a, "typing")
        await a.call("message.delete", ref)
        await expect(b, "message.deleted")
        await a.call("presence.get", {"user_ids": [carol.id]})
        await c.connect()
        online = await expect(a, "presence")
        assert online["data"]["online"] is True
        await c.close()
        offline = await expect(a, "presence")
        assert offline["data"]["online"] is False
        await a.call(
            "conversation.remove_member", {"conversation_id": cid, "user_id": bob.id}
        )
        await expect(b, "member.removed")
    finally:
        for client in (a, b, c):
            await client.close()

    assert seen == set(EVENTS)
