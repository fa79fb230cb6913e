"""Timestamps of log lines, as Docker writes them: RFC 3339 in UTC with nine fractional digits and a ``Z``.

Fixed width, so that comparing two as strings compares the times; every provider's lines are kept in this form.
"""

from __future__ import annotations

import calendar
import re
import time
from datetime import UTC, datetime

TS_WIDTH = len("2015-01-01T00:00:00.000000000Z")
RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)?", re.ASCII)
"""An RFC 3339 time with any number of fractional digits (Docker's trims its trailing zeros)."""


def ts_from_ns(ns: int) -> str:
    """Nanoseconds since the epoch -> ``2015-01-01T00:00:00.000000000Z``."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def now_ts() -> str:
    return ts_from_ns(time.time_ns())


def ts_from_datetime(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _stamp(moment.astimezone(UTC), f"{moment.microsecond:06d}000")


def _stamp(moment: datetime, digits: str) -> str:
    """A UTC time to the second and nine fractional digits, in this module's form (the year with four
    digits too: the fixed width holds for Docker's zero time, ``0001-01-01T00:00:00Z``)."""
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}.{digits}Z"


def ts_to_datetime(ts: str) -> datetime:
    """A timestamp of this module's form as an aware datetime (to the microsecond)."""
    return datetime.fromisoformat(ts[:26] + "+00:00")


def ts_to_ns(ts: str) -> int:
    seconds = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S"))
    fraction = ts[20:-1] if len(ts) > 20 and ts[19] == "." else ""
    return seconds * 1_000_000_000 + int((fraction + "000000000")[:9])


def normalize_ts(text: str) -> str | None:
    """Any RFC 3339 / ISO 8601 time -> this module's form, to the nanosecond an RFC 3339 one gives; ``None``
    when it is not one (or is out of range once in UTC)."""
    if len(text) == TS_WIDTH and text.endswith("Z") and text[10] == "T" and text[19] == "." and text.isascii():
        return text
    try:
        if (found := RFC3339.fullmatch(text)) is not None:
            date, clock, fraction, zone = found.groups()
            offset = "+00:00" if zone is None or zone in "Zz" else zone
            moment = datetime.fromisoformat(f"{date}T{clock}{offset}").astimezone(UTC)
            return _stamp(moment, f"{fraction or '':0<9.9}")
        return ts_from_datetime(datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00")))
    except (ValueError, OverflowError):
        return None
