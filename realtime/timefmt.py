"""Times on the wire: RFC 3339 in UTC with a `Z`, the way pydantic writes them."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def iso_from_epoch(epoch: float) -> str:
    return iso_utc(datetime.fromtimestamp(epoch, UTC))
