"""Timestamps of log lines, as Docker writes them: RFC 3339 in UTC with nine fractional digits and a ``Z``.

Fixed width, so that comparing two as strings compares the times; every provider's lines are kept in this form.
"""

from __future__ import annotations

import calendar
import time
from datetime import UTC, datetime

TS_WIDTH = len("2015-01-01T00:00:00.000000000Z")


def ts_from_ns(ns: int) -> str:
    """Nanoseconds since the epoch -> ``2015-01-01T00:00:00.000000000Z``."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def now_ts() -> str:
    return ts_from_ns(time.time_ns())


def ts_from_datetime(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{moment.microsecond * 1000:09d}Z"


def ts_to_datetime(ts: str) -> datetime:
    """A timestamp of this module's form as an aware datetime (to the microsecond)."""
    return datetime.fromisoformat(ts[:26] + "+00:00")


def ts_to_ns(ts: str) -> int:
    seconds = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S"))
    fraction = ts[20:-1] if len(ts) > 20 and ts[19] == "." else ""
    return seconds * 1_000_000_000 + int((fraction + "000000000")[:9])


def normalize_ts(text: str) -> str | None:
    """Any RFC 3339 / ISO 8601 time -> this module's form; ``None`` when it is not one."""
    if len(text) == TS_WIDTH and text.endswith("Z") and text[10] == "T" and text[19] == ".":
        return text
    try:
        return ts_from_datetime(datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00")))
    except ValueError:
        return None
