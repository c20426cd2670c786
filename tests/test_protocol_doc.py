"""docs/protocol.md names every method, every event and every close code of
the protocol tables, with the facts a client branches on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from protocol.close_codes import CloseCode
from protocol.codecs import CODECS
from protocol.events import EVENT_SPECS
from protocol.methods import METHODS

DOC = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()


def _tables() -> dict[str, dict[str, list[str]]]:
    """Each markdown table by the heading of its first column; each row by
    its first cell."""
    tables: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in DOC.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if current is None:
            current = tables.setdefault(cells[0], {})
        elif not set(cells[0]) <= {"-", ":"}:
            current[cells[0]] = cells
    return tables


TABLES = _tables()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_is_in_the_table(name: str) -> None:
    spec = METHODS[name]
    row = TABLES["method"].get(f"`{name}`")
    assert row is not None, name
    assert row[3] == spec.rate_class, row
    assert row[4] == ("yes" if spec.socket_only else "no"), row
    for field in spec.params.model_fields:
        assert field in row[1], (name, field)


@pytest.mark.parametrize("name", sorted(EVENT_SPECS))
def test_every_event_is_in_the_table(name: str) -> None:
    spec = EVENT_SPECS[name]
    row = TABLES["event"].get(f"`{name}`")
    assert row is not None, name
    assert row[2] == ("yes" if spec.seq else "no"), row
    for field in spec.data.model_fields:
        assert field in row[3], (name, field)


@pytest.mark.parametrize("close", list(CloseCode), ids=lambda c: str(c.code))
def test_every_close_code_is_in_the_table(close: CloseCode) -> None:
    row = TABLES["code"].get(str(close.code))
    assert row is not None, close.code
    assert row[1] == f"`{close.reason}`"
    assert row[2] == ("yes" if close.reconnect else "no")


def test_nothing_documented_that_does_not_exist() -> None:
    assert set(TABLES["method"]) == {f"`{name}`" for name in METHODS}
    assert set(TABLES["event"]) == {f"`{name}`" for name in EVENT_SPECS}
    assert set(TABLES["code"]) == {str(close.code) for close in CloseCode}


def test_subprotocols_and_endpoints() -> None:
    assert "`/v1/ws`" in DOC
    for name in CODECS:
        assert f"`{name}`" in DOC
    assert "POST /v1/rpc/{method}" in DOC
    assert "/asyncapi.json" in DOC
