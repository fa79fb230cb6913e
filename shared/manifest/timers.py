"""Timer schedules: standard 5-field cron (UTC), as croniter reads it."""

from __future__ import annotations

from datetime import datetime

SECONDS_OVERRIDE = "@every"
"""``@every 2s``: a schedule in seconds that the rack's timer runner takes from its own settings (tests); a
manifest's schedules are always 5-field cron."""


def schedule_problem(schedule: str) -> str | None:
    """What is wrong with ``schedule``, or None when it is a valid 5-field cron expression."""
    from croniter import croniter

    fields = schedule.split()
    if len(fields) != 5:
        return f'must be a 5-field cron schedule like "*/5 * * * *", got {len(fields)} fields'
    if not croniter.is_valid(schedule):
        return 'is not a valid cron schedule (minute hour day-of-month month day-of-week, like "*/5 * * * *")'
    return None


def every_seconds(schedule: str) -> int | None:
    words = schedule.split()
    if len(words) == 2 and words[0] == SECONDS_OVERRIDE and words[1].endswith("s") and words[1][:-1].isdigit():
        seconds = int(words[1][:-1])
        return seconds if seconds >= 1 else None
    return None


def next_run(schedule: str, after: datetime) -> datetime:
    """When ``schedule`` is next due after ``after`` (an aware UTC datetime)."""
    from datetime import timedelta

    from croniter import croniter

    seconds = every_seconds(schedule)
    if seconds is not None:
        return after + timedelta(seconds=seconds)
    result: datetime = croniter(schedule, after).get_next(datetime)
    return result
