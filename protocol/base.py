"""Base classes for every schema on the wire."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """What a client sends. Unknown fields and loose types are refused, so a
    typo in a field name is an error rather than a silently ignored value."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Result(BaseModel):
    """What the server answers."""

    model_config = ConfigDict(frozen=True)
