"""The frame reader, without sockets: whatever way a client's bytes are cut
into reads and its messages into fragments, the same messages come out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realtime.wsframe import (
    BINARY,
    CONTINUATION,
    TEXT,
    FrameReader,
    FramingError,
    MessageTooBig,
    build_frame,
    close_frame,
    parse_close,
    unmask,
)
from tests.realtime.rawws import VIOLATIONS, client_frame

LIMIT = 4096


def _fragments(payload: bytes, cuts: list[int], opcode: int) -> bytes:
    points = sorted({c % (len(payload) + 1) for c in cuts})
    bounds = zip([0, *points], [*points, len(payload)], strict=True)
    pieces = [payload[a:b] for a, b in bounds]
    out = b""
    for i, piece in enumerate(pieces):
        out += client_frame(
            piece, opcode if i == 0 else CONTINUATION, fin=i == len(pieces) - 1
        )
    return out


@given(
    messages=st.lists(
        st.tuples(
            st.binary(max_size=600),
            st.sampled_from([TEXT, BINARY]),
            st.lists(st.integers(min_value=0), max_size=4),
        ),
        max_size=8,
    ),
    read_sizes=st.lists(st.integers(min_value=1, max_value=300), min_size=1),
)
def test_messages_survive_any_fragmenting_and_any_reads(
    messages: list[tuple[bytes, int, list[int]]], read_sizes: list[int]
) -> None:
    wire = b"".join(_fragments(p, cuts, op) for p, op, cuts in messages)
    reader = FrameReader(LIMIT)
    out: list[tuple[int, bytes]] = []
    pos = 0
    i = 0
    while pos < len(wire):
        size = read_sizes[i % len(read_sizes)]
        reader.feed(wire[pos : pos + size])
        pos += size
        i += 1
        while (message := reader.next_message()) is not None:
            out.append(message)
    assert out == [(op, p) for p, op, _ in messages]
    assert reader.buffered == 0


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_unmask_is_its_own_inverse(data: bytes, mask: bytes) -> None:
    assert unmask(mask, unmask(mask, data)) == data
    assert len(unmask(mask, data)) == len(data)


def test_unmask_matches_the_definition() -> None:
    data = bytes(range(11))
    mask = b"\x01\x02\x03\x04"
    assert unmask(mask, data) == bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def test_a_message_over_the_limit_is_refused_from_its_header() -> None:
    reader = FrameReader(LIMIT)
    reader.feed(client_frame(b"", length=LIMIT + 1))
    with pytest.raises(MessageTooBig):
        reader.next_message()


def test_fragments_over_the_limit_are_refused() -> None:
    reader = FrameReader(LIMIT)
    reader.feed(client_frame(b"x" * LIMIT, fin=False))
    assert reader.next_message() is None
    reader.feed(client_frame(b"x", CONTINUATION))
    with pytest.raises(MessageTooBig):
        reader.next_message()


def test_a_message_at_the_limit_is_read() -> None:
    reader = FrameReader(LIMIT)
    reader.feed(client_frame(b"x" * LIMIT))
    assert reader.next_message() == (TEXT, b"x" * LIMIT)


@pytest.mark.parametrize("frame", VIOLATIONS.values(), ids=VIOLATIONS.keys())
def test_framing_violations(frame: bytes) -> None:
    reader = FrameReader(LIMIT)
    reader.feed(frame)
    with pytest.raises(FramingError):
        reader.next_message()


def test_a_partial_header_waits() -> None:
    reader = FrameReader(70000)
    frame = client_frame(b"y" * 66000)
    for cut in (1, 2, 5, 9, 13, len(frame) - 1):
        reader = FrameReader(70000)
        reader.feed(frame[:cut])
        assert reader.next_message() is None
        reader.feed(frame[cut:])
        assert reader.next_message() == (TEXT, b"y" * 66000)


def test_server_frames_use_the_shortest_length() -> None:
    assert build_frame(b"a" * 125, False)[:2] == b"\x81\x7d"
    assert build_frame(b"a" * 126, True)[:4] == b"\x82\x7e\x00\x7e"
    assert build_frame(b"a" * 65536, False)[:2] == b"\x81\x7f"


def test_close_frames_round_trip() -> None:
    frame = close_frame(4007, "slow_consumer")
    assert parse_close(frame[2:]) == (4007, "slow_consumer")
    assert parse_close(b"") == (1005, "")
    for bad in (b"\x03", b"\x03\xed", b"\x0b\xb8\xff", b"\x13\x88"):
        with pytest.raises(FramingError):
            parse_close(bad)
