"""Instants as integer nanoseconds since the Unix epoch (UTC).

ZITADEL stores expiration dates exactly as sent (nanosecond precision, no
rounding, §6.1), and dates reach up to 9999-12-31.  Python's ``datetime``
drops nanoseconds, and SQLite's INTEGER overflows past 2262, so the emulator
keeps instants as plain Python ints and stores them as decimal text.
"""

from __future__ import annotations

import calendar
import functools
import re
from datetime import UTC, datetime

NS = 1_000_000_000

#: ZITADEL's v1 default expiration (`internal/domain/expiration.go`).
DEFAULT_EXPIRATION = calendar.timegm((9999, 12, 31, 23, 59, 59, 0, 0, 0)) * NS
MIN_TIMESTAMP = calendar.timegm((1, 1, 1, 0, 0, 0, 0, 0, 0)) * NS
MAX_TIMESTAMP = (calendar.timegm((9999, 12, 31, 23, 59, 59, 0, 0, 0)) + 1) * NS - 1

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


class TimestampError(ValueError):
    """The text is not an RFC 3339 timestamp protojson would accept."""


def from_seconds_nanos(seconds: int, nanos: int) -> int:
    """google.protobuf.Timestamp fields -> instant."""
    return seconds * NS + nanos


def to_seconds_nanos(instant: int) -> tuple[int, int]:
    """Instant -> google.protobuf.Timestamp (seconds, nanos), nanos in [0, 1e9)."""
    return divmod(instant, NS)


def parse_rfc3339(text: str) -> int:
    """Parse like protojson: a zone (``Z`` or ``±hh:mm``) is mandatory."""
    m = _RFC3339.match(text)
    if m is None:
        raise TimestampError(f"invalid timestamp {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    frac = (m.group(7) or "").ljust(9, "0")
    try:
        datetime(year, month, day, hour, minute, second)  # validates the calendar fields
    except ValueError as exc:
        raise TimestampError(f"invalid timestamp {text!r}") from exc
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if m.group(9):
        offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        seconds -= offset if m.group(9) == "+" else -offset
    instant = seconds * NS + int(frac)
    if not MIN_TIMESTAMP <= instant <= MAX_TIMESTAMP:
        raise TimestampError(f"timestamp {text!r} out of range")
    return instant


def _base(instant: int) -> tuple[str, int]:
    seconds, nanos = divmod(instant, NS)
    return _base_seconds(seconds), nanos


@functools.lru_cache(maxsize=4096)
def _base_seconds(seconds: int) -> str:
    # cached: a listing page formats 3,000 timestamps, most within a few seconds
    days, rem = divmod(seconds, 86400)
    date = datetime.fromordinal(days + 719163)  # 719163 = ordinal of 1970-01-01
    hh, rem = divmod(rem, 3600)
    mm, ss = divmod(rem, 60)
    return f"{date.year:04d}-{date.month:02d}-{date.day:02d}T{hh:02d}:{mm:02d}:{ss:02d}"


def format_protojson(instant: int) -> str:
    """protojson Timestamp: UTC, ``Z``, 0/3/6/9 fractional digits."""
    base, nanos = _base(instant)
    if nanos == 0:
        return base + "Z"
    if nanos % 1_000_000 == 0:
        return f"{base}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{base}.{nanos // 1000:06d}Z"
    return f"{base}.{nanos:09d}Z"


def format_go_rfc3339nano(instant: int) -> str:
    """Go ``time.RFC3339Nano`` in UTC: trailing zeros of the fraction trimmed."""
    base, nanos = _base(instant)
    if nanos == 0:
        return base + "Z"
    return f"{base}.{f'{nanos:09d}'.rstrip('0')}Z"


def to_datetime(instant: int) -> datetime:
    """Microsecond-truncated aware datetime (for logs and tests only)."""
    seconds, nanos = divmod(instant, NS)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)


def from_datetime(value: datetime) -> int:
    """Aware datetime -> instant (naive datetimes are rejected)."""
    if value.tzinfo is None:
        raise TimestampError("naive datetime has no zone")
    return calendar.timegm(value.utctimetuple()) * NS + value.microsecond * 1000
