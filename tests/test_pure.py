"""Small pure pieces: rate limits, byte ranges, content sniffing, filenames."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realtime.ratelimit import KeyedLimiter, TokenBucket
from realtime.services.uploads import clean_filename
from realtime.sniff import ContentSniffer
from rest.ranges import UnsatisfiableRange, parse_range


def test_token_bucket_refills_over_time() -> None:
    bucket = TokenBucket(rate=1.0, burst=2.0, tokens=2.0, updated=0.0)
    assert bucket.take(0.0) == 0
    assert bucket.take(0.0) == 0
    assert bucket.take(0.0) == pytest.approx(1.0)
    assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(1.0) == 0


def test_keyed_limiter_is_bounded() -> None:
    now = [0.0]
    limiter = KeyedLimiter(rate=1, burst=1, max_keys=10, clock=lambda: now[0])
    for i in range(1000):
        limiter.take(f"k{i}")
    assert len(limiter._buckets) == 10
    assert limiter.take("k999") > 0
    assert limiter.take("fresh") == 0


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-4", 10, (0, 4)),
        ("bytes=5-", 10, (5, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-30", 10, (0, 9)),
        ("bytes=8-100", 10, (8, 9)),
        ("bytes=4-2", 10, None),
        ("bytes=0-1,3-4", 10, None),
        ("items=0-1", 10, None),
        ("bytes=-", 10, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: object) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=10-20", "bytes=-0"])
def test_unsatisfiable_range(header: str) -> None:
    with pytest.raises(UnsatisfiableRange):
        parse_range(header, 10)


@given(st.text(max_size=40), st.integers(min_value=1, max_value=10_000))
def test_parse_range_stays_in_bounds(header: str, size: int) -> None:
    try:
        result = parse_range("bytes=" + header, size)
    except UnsatisfiableRange:
        return
    if result is not None:
        start, end = result
        assert 0 <= start <= end < size


def _sniff(declared: str, *chunks: bytes) -> bool:
    sniffer = ContentSniffer(declared)
    for chunk in chunks:
        sniffer.feed(chunk)
    return sniffer.matches()


def test_sniffing() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    assert _sniff("image/png", png)
    assert not _sniff("image/jpeg", png)
    assert _sniff("image/jpeg", b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    assert _sniff("application/pdf", b"%PDF-1.4\n")
    assert _sniff("text/plain", "héllo".encode()[:2], "héllo".encode()[2:])
    assert not _sniff("text/plain", b"\xff\xfe")
    assert not _sniff("text/plain", b"ok", b"\x00")
    assert not _sniff("text/plain", "é".encode()[:1])
    assert not _sniff("image/png", b"")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("photo.jpg", "photo.jpg"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\a.txt", "a.txt"),
        ('a"b\r\n.txt', "ab.txt"),
        ("...", None),
        ("", None),
        (None, None),
        ("x" * 300, "x" * 255),
    ],
)
def test_clean_filename(raw: str | None, clean: str | None) -> None:
    assert clean_filename(raw) == clean
