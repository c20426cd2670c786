"""The AsyncAPI 3.0 document of the ``/v1/ws`` channel.

Built from the method table, the event table, the envelope and error
models and the close codes, so the description cannot drift from the
contract. The document describes the server: a client's request is an
operation the server receives and replies to; an event is one it sends.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from .close_codes import CloseCode
from .codecs import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL
from .envelope import ErrorReply, Event, Reply, Request
from .errors import ErrorBody, ErrorCode
from .events import EVENT_SPECS, EventSpec
from .methods import METHODS, MethodSpec

CHANNEL = "ws"
ADDRESS = "/v1/ws"
_SCHEMA_REF = "#/components/schemas/{model}"
_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
#: A reply carries the id of its request.
_CORRELATION = {"location": "$message.payload#/id"}

_DESCRIPTION = """\
One WebSocket per device. Pick a subprotocol: `squall.v1.json` (JSON on
text frames) or `squall.v1.msgpack` (MessagePack on binary frames; the same
values, with ids and times as strings).

Three frame shapes:

- request `{"id", "method", "params"}` from the client;
- reply `{"id", "result"}` or `{"id", "error"}`, exactly one per request;
- event `{"event", "channel"?, "seq"?, "data"}` pushed by the server.

Authenticate with `Authorization: Bearer <access token>` on the handshake,
or with an `auth` request within the auth deadline (10 s by default).
Per conversation, events that carry a `seq` arrive in seq order with no gap
and no duplicate; after a reconnect, call `sync` until `complete`.

The close codes and what a client should do on each are listed under
`x-close-codes`.
"""


def _schemas() -> tuple[dict[tuple[object, str], Any], dict[str, Any]]:
    """JSON schemas of every model on the wire, keyed for lookup by model
    and mode, and the definitions they refer to."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (Request, "validation"),
        (Reply, "serialization"),
        (ErrorReply, "serialization"),
        (Event, "serialization"),
        (ErrorBody, "serialization"),
    ]
    for method in METHODS.values():
        wanted.append((method.params, "validation"))
        wanted.append((method.result, "serialization"))
    for event in EVENT_SPECS.values():
        wanted.append((event.data, "serialization"))
    keys, defs = models_json_schema(
        list(dict.fromkeys(wanted)), ref_template=_SCHEMA_REF
    )
    refs: dict[tuple[object, str], Any] = {key: ref for key, ref in keys.items()}
    schemas: dict[str, Any] = defs.get("$defs", {})
    return refs, schemas


def _request(spec: MethodSpec, envelope: Any, params: Any) -> dict[str, Any]:
    return {
        "name": spec.name,
        "title": f"{spec.name} request",
        "summary": spec.summary,
        "correlationId": _CORRELATION,
        "payload": {
            "type": "object",
            "allOf": [envelope],
            "properties": {"method": {"const": spec.name}, "params": params},
            "required": ["id", "method"],
        },
    }


def _reply(spec: MethodSpec, envelope: Any, result: Any) -> dict[str, Any]:
    return {
        "name": f"{spec.name} reply",
        "title": f"{spec.name} reply",
        "summary": f"The result of `{spec.name}`.",
        "correlationId": _CORRELATION,
        "payload": {
            "type": "object",
            "allOf": [envelope],
            "properties": {"result": result},
            "required": ["id", "result"],
        },
    }


def _channel_pattern(template: str) -> str:
    prefix = template.split(":", 1)[0]
    return f"^{prefix}:{_UUID}$"


def _event(spec: EventSpec, envelope: Any, data: Any) -> dict[str, Any]:
    properties: dict[str, Any] = {"event": {"const": spec.name}, "data": data}
    required = ["event", "data"]
    if spec.channel is not None:
        properties["channel"] = {
            "type": "string",
            "pattern": _channel_pattern(spec.channel),
            "description": f"`{spec.channel}`",
        }
        required.append("channel")
    if spec.seq:
        properties["seq"] = {
            "type": "integer",
            "minimum": 1,
            "description": "Position in the conversation's log.",
        }
        required.append("seq")
    return {
        "name": spec.name,
        "title": f"{spec.name} event",
        "summary": spec.summary,
        "payload": {
            "type": "object",
            "allOf": [envelope],
            "properties": properties,
            "required": required,
        },
        "x-seq": spec.seq,
    }


def _message_ref(key: str) -> dict[str, str]:
    return {"$ref": f"#/channels/{CHANNEL}/messages/{key}"}


def _operation(
    action: Literal["send", "receive"], key: str, summary: str
) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{CHANNEL}"},
        "summary": summary,
        "messages": [_message_ref(key)],
    }


def _close_codes() -> list[dict[str, Any]]:
    return [
        {
            "code": close.code,
            "reason": close.reason,
            "reconnect": close.reconnect,
            "advice": close.advice,
        }
        for close in CloseCode
    ]


def build_asyncapi(version: str) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of protocol v1, as a JSON-ready dict."""
    refs, schemas = _schemas()
    messages: dict[str, Any] = {
        "error": {
            "name": "error reply",
            "title": "Error reply",
            "summary": "The answer to a request that failed.",
            "correlationId": _CORRELATION,
            "payload": refs[(ErrorReply, "serialization")],
            "x-error-codes": [
                {"code": code.code, "temporary": code.temporary} for code in ErrorCode
            ],
        }
    }
    operations: dict[str, Any] = {}

    # Requests, each answered by its reply or by an error reply.
    for spec in METHODS.values():
        request, reply = f"request.{spec.name}", f"reply.{spec.name}"
        messages[request] = _request(
            spec, refs[(Request, "validation")], refs[(spec.params, "validation")]
        )
        messages[reply] = _reply(
            spec, refs[(Reply, "serialization")], refs[(spec.result, "serialization")]
        )
        operation = _operation("receive", request, spec.summary)
        operation["reply"] = {
            "channel": {"$ref": f"#/channels/{CHANNEL}"},
            "messages": [_message_ref(reply), _message_ref("error")],
        }
        operation["x-rate-class"] = spec.rate_class
        operation["x-socket-only"] = spec.socket_only
        operations[f"call.{spec.name}"] = operation

    # Events the server pushes.
    for event in EVENT_SPECS.values():
        key = f"event.{event.name}"
        messages[key] = _event(
            event, refs[(Event, "serialization")], refs[(event.data, "serialization")]
        )
        operations[key] = _operation("send", key, event.summary)

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Squall realtime protocol",
            "version": version,
            "description": "The WebSocket RPC protocol of Squall, version 1.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "node": {
                "host": "{host}",
                "protocol": "ws",
                "description": "A Squall node; `wss` behind TLS.",
                "variables": {"host": {"default": "127.0.0.1:8000"}},
                "security": [{"$ref": "#/components/securitySchemes/bearer"}],
            }
        },
        "channels": {
            CHANNEL: {
                "address": ADDRESS,
                "title": "Squall socket",
                "description": _DESCRIPTION,
                "messages": {
                    key: {"$ref": f"#/components/messages/{key}"} for key in messages
                },
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "headers": {
                            "type": "object",
                            "properties": {
                                "Authorization": {
                                    "type": "string",
                                    "description": "`Bearer <access token>`; "
                                    "without it, send `auth` first.",
                                },
                                "Sec-WebSocket-Protocol": {
                                    "type": "string",
                                    "enum": [JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL],
                                },
                            },
                        },
                        "bindingVersion": "0.1.0",
                    }
                },
                "x-subprotocols": [
                    {
                        "name": JSON_SUBPROTOCOL,
                        "frames": "text",
                        "contentType": "application/json",
                    },
                    {
                        "name": MSGPACK_SUBPROTOCOL,
                        "frames": "binary",
                        "contentType": "application/msgpack",
                    },
                ],
                "x-close-codes": _close_codes(),
            }
        },
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The access token, on the handshake or in "
                    "an `auth` request.",
                }
            },
        },
    }
