"""HTTP Range requests (RFC 9110 section 14), one range at a time."""

from __future__ import annotations

import re

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class UnsatisfiableRange(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Turn a Range header into an inclusive ``(start, end)`` within ``size``.

    Returns None when the whole body should be sent: no header, a syntax this
    server does not serve (several ranges, other units), which RFC 9110 says
    to ignore. Raises :class:`UnsatisfiableRange` for a range that starts
    past the end.
    """
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        # Suffix range: the last N bytes.
        length = int(last)
        if length == 0:
            raise UnsatisfiableRange
        return max(0, size - length), size - 1
    start = int(first)
    if start >= size:
        raise UnsatisfiableRange
    end = int(last) if last else size - 1
    if end < start:
        return None
    return start, min(end, size - 1)
