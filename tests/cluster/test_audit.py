"""The audit of a client's stream counts each kind of fault apart."""

from __future__ import annotations

from tests.cluster.audit import audit

STORED = {1: None, 2: "a", 3: "b", 4: "c"}


def test_a_complete_stream_is_clean() -> None:
    result = audit([(1, None), (2, "a"), (3, "b"), (4, "c")], STORED)
    assert result.clean
    assert result.counts == {"lost": 0, "duplicated": 0, "reordered": 0, "wrong": 0}


def test_each_fault_is_counted() -> None:
    received = [(1, None), (3, "b"), (2, "a"), (3, "b"), (5, "x"), (4, "z")]
    result = audit(received, STORED)
    assert result.lost == []
    assert result.duplicated == [3]
    assert result.reordered == [2, 4]
    assert result.wrong == [4, 5]
    assert not result.clean


def test_a_missing_event_is_lost() -> None:
    assert audit([(1, None), (2, "a"), (4, "c")], STORED).lost == [3]
