"""How a route describes itself, for the router and the OpenAPI document alike."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import tornado.web
from pydantic import BaseModel

from protocol.errors import ErrorCode


@dataclass(frozen=True)
class Operation:
    method: str
    summary: str
    params: type[BaseModel] | None = None
    result: type[BaseModel] | None = None
    status: int = 200
    auth: bool = True
    errors: tuple[ErrorCode, ...] = ()
    description: str = ""
    #: Replaces the JSON request body, e.g. for raw uploads.
    request_body: dict[str, Any] | None = None
    #: Replaces the JSON response, e.g. for downloads.
    response_content: dict[str, Any] | None = None
    query: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Route:
    """One path: its OpenAPI template (``/v1/devices/{device_id}``), the
    handler serving it and the operations it documents."""

    path: str
    handler: type[tornado.web.RequestHandler]
    operations: tuple[Operation, ...]
    tag: str = "system"
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def pattern(self) -> str:
        parts = re.split(r"(\{\w+\})", self.path)
        return (
            "".join(
                f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else re.escape(part)
                for part in parts
            )
            + "$"
        )

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)
