"""The pieces of the logs pipeline without a Docker Engine: Docker's messages to lines, the history on disk,
the time ordering, followers (also slow ones), the rack's own log, the CLI's resume without duplicates."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.cmd_logs import Printer, since_time
from services.logs.routes import parse_since
from shared.errors import BadRequest
from shared.logstore.applog import AppLog, SourceProgress, matcher
from shared.logstore.history import History, Limits
from shared.logstore.lines import Line, Offset, advance, advance_all
from shared.logstore.racklog import rack_line, read_rack_log
from shared.logstore.timestamps import normalize_ts, ts_from_datetime, ts_from_ns, ts_to_datetime
from shared.provider.local.docker import EngineEvent
from shared.provider.local.events import docker_since
from shared.provider.local.splitter import PARTIAL, Splitter

TS = "2026-01-02T03:04:05.000000001Z"


def ts(n: int) -> str:
    """The n-th nanosecond after a fixed second: ordered timestamps for tests."""
    return f"2026-01-02T03:04:05.{n:09d}Z"


def message(stamp: str, content: bytes) -> bytes:
    return stamp.encode() + b" " + content


def framed(stream: int, stamp: str, content: bytes) -> bytes:
    """One message as the Engine's logs API sends it without a TTY: its 8-byte frame, then the message."""
    payload = message(stamp, content)
    return bytes((stream, 0, 0, 0)) + len(payload).to_bytes(4, "big") + payload


# ---- Docker's messages -> lines ----------------------------------------------------------------------------


def test_whole_lines_come_out_as_they_are() -> None:
    out: list[tuple[str, bytes]] = []
    splitter = Splitter(tty=False, max_line=1 << 20)
    splitter.feed(framed(1, ts(1), b"hello\n"), out)
    splitter.feed(framed(2, ts(2), b"oops\n"), out)
    assert out == [(ts(1), b"hello"), (ts(2), b"oops")]


@pytest.mark.parametrize("newline_at_end", [True, False], ids=["json-file", "local"])
def test_a_line_docker_split_at_16k_is_joined(newline_at_end: bool) -> None:
    line = bytes(range(97, 123)) * 4000  # 104,000 bytes
    pieces = [line[i : i + PARTIAL] for i in range(0, len(line), PARTIAL)]
    out: list[tuple[str, bytes]] = []
    splitter = Splitter(tty=False, max_line=1 << 20)
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        splitter.feed(framed(1, ts(1), piece + (b"\n" if last and newline_at_end else b"")), out)
        if i == 2:  # stderr in between, as Docker interleaves it
            splitter.feed(framed(2, ts(2), b"err\n"), out)
    if not newline_at_end:
        splitter.feed(framed(1, ts(3), b"next\n"), out)
    assert (ts(2), b"err") in out
    assert (ts(1), line) in out
    assert len(out) == (2 if newline_at_end else 3)


def test_a_line_of_exactly_one_mib_is_whole_and_a_longer_one_is_cut() -> None:
    line = b"x" * (1 << 20)
    out: list[tuple[str, bytes]] = []
    splitter = Splitter(tty=False, max_line=1 << 20)
    for i in range(0, len(line), PARTIAL):
        splitter.feed(framed(1, ts(1), line[i : i + PARTIAL]), out)
    splitter.feed(framed(1, ts(1), b"\n"), out)
    assert out == [(ts(1), line)]
    out.clear()
    for i in range(0, len(line) + PARTIAL, PARTIAL):
        splitter.feed(framed(1, ts(2), (line + b"y" * PARTIAL)[i : i + PARTIAL]), out)
    splitter.feed(framed(1, ts(2), b"\n"), out)
    assert [len(data) for _, data in out] == [1 << 20, PARTIAL]


def test_a_held_piece_is_whole_when_the_log_ends() -> None:
    out: list[tuple[str, bytes]] = []
    splitter = Splitter(tty=False, max_line=1 << 20)
    splitter.feed(framed(1, ts(1), b"z" * PARTIAL), out)
    assert out == []
    splitter.finish(out)
    assert out == [(ts(1), b"z" * PARTIAL)]


MESSAGES = st.lists(
    st.tuples(st.sampled_from([1, 2]), st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\n")),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(messages=MESSAGES, cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12))
def test_framed_messages_make_the_same_lines_however_the_stream_is_cut(
    messages: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(framed(channel, ts(n), content) for n, (channel, content) in enumerate(messages))
    expected = [(ts(n), content[:-1]) for n, (_, content) in enumerate(messages)]
    out: list[tuple[str, bytes]] = []
    splitter = Splitter(tty=False, max_line=1 << 20)
    at = 0
    for cut in [*sorted({min(cut, len(stream)) for cut in cuts}), len(stream)]:
        splitter.feed(stream[at:cut], out)
        at = cut
    assert out == expected
    assert not splitter.torn


def test_a_stream_that_ends_inside_a_message_is_torn() -> None:
    whole = framed(1, ts(1), b"hello\n")
    out: list[tuple[str, bytes]] = []
    splitter = Splitter(tty=False, max_line=1 << 20)
    splitter.feed(whole + whole[:11], out)
    assert out == [(ts(1), b"hello")]
    assert splitter.torn


def test_tty_output_is_split_at_newlines_and_docker_timestamps_inside_a_long_line_are_removed() -> None:
    long = b"q" * (PARTIAL * 2 + 10)
    raw = message(ts(1), b"one\r\n") + message(ts(2), long[:PARTIAL]) + message(ts(2), long[PARTIAL : 2 * PARTIAL])
    raw += message(ts(2), long[2 * PARTIAL :] + b"\r\n") + message(ts(3), b"tail")
    out: list[tuple[str, bytes]] = []
    splitter = Splitter(tty=True, max_line=1 << 20)
    for i in range(0, len(raw), 1000):  # chunk boundaries anywhere
        splitter.feed(raw[i : i + 1000], out)
    splitter.finish(out)
    assert out == [(ts(1), b"one"), (ts(2), long), (ts(3), b"tail")]


def test_bytes_that_are_not_utf8_are_escaped_not_dropped() -> None:
    line = Line(TS, "web", "R", "p", b"x\xffy \xe2\x82".decode("utf-8", "backslashreplace"))
    assert line.text == "x\\xffy \\xe2\\x82"
    assert line.render().endswith(b" web:R/p x\\xffy \\xe2\\x82\n")


# ---- timestamps and cursors ------------------------------------------------------------------------------


def test_timestamps_round_trip() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert ts_from_datetime(moment) == "2026-01-02T03:04:05.123456000Z"
    assert ts_to_datetime("2026-01-02T03:04:05.123456789Z") == moment
    assert ts_from_ns(1_767_323_045_000_000_001) == "2026-01-02T03:04:05.000000001Z"
    assert docker_since("2026-01-02T03:04:05.000000001Z") == "1767323045.000000001"
    assert normalize_ts("2026-01-02T03:04:05.5+00:00") == "2026-01-02T03:04:05.500000000Z"
    assert normalize_ts("2026-01-02T03:04:05+00:00") == "2026-01-02T03:04:05.000000000Z"
    assert normalize_ts("not a time") is None


def test_a_time_is_normalized_to_the_nanosecond_and_to_the_fixed_width() -> None:
    # Docker's RFC 3339 times trim their trailing zeros (a container's FinishedAt): every digit is kept
    assert normalize_ts("2026-12-04T21:27:16.1234567Z") == "2026-12-04T21:27:16.123456700Z"
    assert normalize_ts("2026-12-04T23:27:16.123456789+02:00") == "2026-12-04T21:27:16.123456789Z"
    assert normalize_ts("2026-12-04T21:27:16.1234567891Z") == "2026-12-04T21:27:16.123456789Z"
    # Docker's zero time (a container that never finished) keeps the width, so comparing as strings holds
    zero = normalize_ts("0001-01-01T00:00:00Z")
    assert zero == "0001-01-01T00:00:00.000000000Z" and zero < "1970"
    assert ts_from_datetime(datetime(1, 1, 1, tzinfo=UTC)) == zero
    assert normalize_ts("0001-01-01T00:00:00+01:00") is None  # before the first time there is
    assert normalize_ts("2026-12-04") == "2026-12-04T00:00:00.000000000Z"  # ISO 8601 beyond RFC 3339 too
    assert normalize_ts("2026-12-04T21:27:16.\u0661\u0662Z") is None  # digits of other scripts: not a time
    assert normalize_ts("2026-12-04T21:27:16.\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669Z") is None


def test_a_cursor_counts_the_lines_at_its_timestamp() -> None:
    offsets: dict[str, Offset] = {}
    advance(offsets, "c:abc", ts(1))
    advance(offsets, "c:abc", ts(1))
    advance(offsets, "c:abc", ts(0))  # older: no change
    assert (offsets["c:abc"].cursor, offsets["c:abc"].count) == (ts(1), 2)
    advance(offsets, "e:app", "9")
    advance(offsets, "e:app", "10")  # numbers, not strings
    assert offsets["e:app"].cursor == "10"


# ---- history on disk -------------------------------------------------------------------------------------


def lines(first: int, count: int, src: str = "c:abc", size: int = 10) -> list[Line]:
    made = [Line(ts(n), "web", "R1", "abc", f"n={n} " + "x" * size, src, ts(n)) for n in range(first, first + count)]
    for n, line in enumerate(made, start=first):
        line.seq = n
    return made


def test_history_rotates_keeps_its_bound_and_recovers_after_a_kill(tmp_path: Path) -> None:
    limits = Limits(max_bytes=64 * 1024 * 4)  # segments of 64 KiB
    history = History(tmp_path / "app", limits)
    for first in range(1, 5001, 100):
        history.append(lines(first, 100, size=200))
    assert len(history.segments) > 2
    assert history.total <= limits.max_bytes + limits.segment_bytes
    history.close()
    newest = history.path(history.segments[-1])
    with newest.open("ab") as handle:  # a batch torn by kill -9
        handle.write(b"5001\t" + ts(5001).encode() + b"\tweb\tR1\tabc\tc:abc\t")
    reopened = History(tmp_path / "app", limits)
    seq, offsets = reopened.open()
    assert seq == 5000
    assert (offsets["c:abc"].cursor, offsets["c:abc"].count) == (ts(5000), 1)
    assert newest.read_bytes().endswith(b"\n")
    assert reopened.segments == history.segments


def test_history_drops_segments_older_than_the_age_bound(tmp_path: Path) -> None:
    history = History(tmp_path / "app", Limits(max_bytes=64 * 1024 * 8, max_age=60))
    history.append(lines(1, 2000, size=100))
    history.append(lines(2001, 10))
    old = history.segments[:-1]
    for first in old:
        path = history.path(first)
        stamp = path.stat().st_mtime - 3600
        os.utime(path, (stamp, stamp))
    history.prune(time.time())
    assert history.segments and all(first not in history.segments for first in old)
    history.close()


# ---- ordering, release, followers ------------------------------------------------------------------------


@pytest.fixture
def applog(tmp_path: Path) -> Iterator[Callable[..., AppLog]]:
    made: list[AppLog] = []

    def make(**limits: float) -> AppLog:
        chosen = Limits(**limits)  # type: ignore[arg-type]
        log = AppLog("app", History(tmp_path / "app", chosen), chosen, 0)
        made.append(log)
        return log

    yield make
    for log in made:
        log.history.close()


def test_lines_wait_for_a_delivering_process_but_not_for_a_quiet_one(applog: Callable[..., AppLog]) -> None:
    log = applog(order_window=0.25)
    log.sources = {"c:a": SourceProgress(ts(10), 100.0), "c:b": SourceProgress(ts(5), 100.0)}
    log.add(Line(ts(8), "a", "", "a", "a8"), 100.0)
    log.add(Line(ts(6), "b", "", "b", "b6"), 100.0)
    assert log.release_due(100.1) is not None  # b (delivering, at 5) may still send something before 6
    assert log.seq == 0
    log.sources["c:b"] = SourceProgress(ts(7), 100.1)
    log.release_due(100.1)
    assert [line.text for line in log.recent] == ["b6"]
    assert log.release_due(100.4) is None  # b has been quiet for longer than the window: not waited for
    assert [line.text for line in log.recent] == ["b6", "a8"]
    assert [line.seq for line in log.recent] == [1, 2]


def test_a_container_catching_up_holds_the_apps_lines_until_it_has_read_to_its_end(
    applog: Callable[..., AppLog],
) -> None:
    log = applog(order_window=0.1)
    log.sources = {"c:a": SourceProgress(ts(1), 100.0, catching_up=True)}
    log.add(Line(ts(9), "b", "", "b", "b9"), 100.0)
    log.release_due(103.0)  # past the window and the hold, but the catch-up is not done
    assert log.seq == 0
    log.sources["c:a"].catching_up = False
    log.release_due(103.0)
    assert log.seq == 1


def test_a_line_later_than_the_ordering_goes_out_in_time_order_with_the_time_it_is_emitted(
    applog: Callable[..., AppLog],
) -> None:
    log = applog(order_window=0.1)
    log.add(Line(ts(8), "web", "", "a", "a8", "c:a", ts(8)), 100.0)
    log.release_due(100.0)
    late = Line(ts(6), "convox", "", "", "event recorded late", "e:app", "7")  # its source lagged: too late
    log.add(late, 101.0)
    log.add(Line(ts(9), "web", "", "a", "a9", "c:a", ts(9)), 101.0)
    log.release_due(101.0)
    assert [(line.text, line.ts) for line in log.recent] == [("a8", ts(8)), ("event recorded late", ts(8)),
                                                             ("a9", ts(9))]  # fmt: skip
    assert late.cur == "7"  # its source's cursor is its own


def run_of(src: str, *at: int) -> list[Line]:
    return [Line(ts(n), "web", "", src[2:], f"{src[2:]}{n}", src, ts(n)) for n in at]


def test_a_run_of_one_container_goes_out_as_it_is_and_is_taken_apart_to_merge_with_other_sources(
    applog: Callable[..., AppLog],
) -> None:
    log = applog(order_window=0.1)
    alone = run_of("c:a", 1, 2, 3)
    log.add_run(alone, 100.0)
    assert log.release_due(100.0) is None
    assert list(log.recent) == alone and [line.seq for line in alone] == [1, 2, 3]
    log.sources = {"c:b": SourceProgress(ts(5), 100.0)}  # b is delivering: a's run waits, then merges with b's
    log.add_run(run_of("c:a", 4, 6, 8), 100.0)
    assert log.release_due(100.0) is not None
    log.add_run(run_of("c:b", 5, 7), 100.0)
    log.add(Line(ts(9), "convox", "", "", "event", "e:app", "1"), 100.0)
    log.sources["c:b"].ts = ts(9)
    assert log.release_due(100.0) is None
    assert [line.text for line in log.recent][3:] == ["a4", "b5", "a6", "b7", "a8", "event"]
    assert [line.seq for line in log.recent] == list(range(1, 10))


def test_runs_held_one_after_the_other_go_out_as_they_are_and_overlapping_ones_are_merged(
    applog: Callable[..., AppLog],
) -> None:
    log = applog()
    for run in (run_of("c:a", 1, 2), run_of("c:a", 3, 4), run_of("c:b", 5)):
        log.add_run(run, 100.0)
    assert log._chained()
    log.release_due(100.0)
    assert [line.text for line in log.recent] == ["a1", "a2", "a3", "a4", "b5"]
    log.add_run(run_of("c:a", 6, 8), 100.0)
    log.add_run(run_of("c:b", 7, 9), 100.0)
    assert not log._chained()
    log.release_due(100.0)
    assert [line.text for line in log.recent][5:] == ["a6", "b7", "a8", "b9"]
    assert [line.seq for line in log.recent] == list(range(1, 10))


def test_a_run_older_than_what_went_out_is_retimed_like_any_line(applog: Callable[..., AppLog]) -> None:
    log = applog()
    log.add_run(run_of("c:a", 5), 100.0)
    log.release_due(100.0)
    log.add_run(run_of("c:b", 3, 4, 6), 100.0)  # its reader lagged past the ordering
    log.release_due(100.0)
    assert [(line.text, line.ts, line.cur) for line in log.recent] == [
        ("a5", ts(5), ts(5)), ("b3", ts(5), ts(3)), ("b4", ts(5), ts(4)), ("b6", ts(6), ts(6))]  # fmt: skip


def test_the_cursor_of_a_run_is_its_newest_time_and_counts_the_lines_at_it() -> None:
    offsets: dict[str, Offset] = {"c:a": Offset(ts(2), 1)}
    advance_all(offsets, run_of("c:a", 3, 4))
    assert offsets["c:a"] == Offset(ts(4), 1)
    advance_all(offsets, [*run_of("c:a", 4), *run_of("c:a", 4)])  # same time, e.g. stdout and stderr
    assert offsets["c:a"] == Offset(ts(4), 3)
    advance_all(offsets, [*run_of("c:a", 7), *run_of("c:b", 9)])  # two sources: each its own cursor
    assert (offsets["c:a"], offsets["c:b"]) == (Offset(ts(7), 1), Offset(ts(9), 1))


def test_the_newest_time_of_the_history_bounds_what_is_released_after_a_restart(tmp_path: Path) -> None:
    history = History(tmp_path / "app", Limits())
    history.append(lines(1, 5))
    history.close()
    reopened = History(tmp_path / "app", Limits())
    seq, _ = reopened.open()
    log = AppLog("app", reopened, Limits(), seq)
    log.release([Line(ts(3), "web", "", "b", "behind", "c:b", ts(3))])
    assert (log.recent[-1].seq, log.recent[-1].ts, log.recent[-1].cur) == (6, ts(5), ts(3))
    reopened.close()


def test_lines_wait_for_the_start_of_a_created_container_and_for_the_exit_of_a_finished_one(
    applog: Callable[..., AppLog],
) -> None:
    log = applog(order_window=0.1)  # the hold: 0.4 s
    log.sources = {"c:new": SourceProgress(ts(5), 100.0, pending=True)}  # created at 5, its start event not seen yet
    log.add(Line(ts(8), "web", "", "a", "a8"), 100.0)
    log.release_due(100.2)  # past the window: a container that delivers nothing would not be waited for
    assert log.seq == 0
    log.release_due(100.4)  # but not past the hold
    assert log.seq == 1
    log.sources = {"c:old": SourceProgress(ts(10), 101.0, pending=True)}  # read to its end at 10, its exit not seen yet
    log.add(Line(ts(9), "web", "", "a", "a9"), 101.0)
    log.add(Line(ts(11), "web", "", "a", "a11"), 101.0)
    log.release_due(101.1)
    assert [line.text for line in log.recent] == ["a8", "a9"]
    del log.sources["c:old"]  # its die event came
    log.release_due(101.1)
    assert [line.text for line in log.recent] == ["a8", "a9", "a11"]
    log.sources = {"c:gone": SourceProgress(ts(12), 101.0, pending=True)}
    log.release_due(101.0 + 5.1)  # an event that never comes is not waited for again
    assert not log.sources


class SlowState:
    """The state as the collector reads it, with the database slow to answer (a loaded machine)."""

    async def fetch_one(self, sql: str, params: tuple[object, ...] = ()) -> dict[str, int]:
        await asyncio.sleep(0.2)
        return {"1": 1}

    async def fetch_all(self, sql: str, params: tuple[object, ...] = ()) -> list[dict[str, object]]:
        return []


class QuickDocker:
    """A container that wrote one line just after it started, and has exited."""

    def __init__(self, written: str, finished: str) -> None:
        self.written = written
        self.finished = finished

    async def inspect(self, container: str) -> dict[str, object]:
        return {"State": {"Running": False, "FinishedAt": self.finished}, "Config": {"Tty": False}}

    async def logs(self, container: str, **options: object) -> AsyncIterator[bytes]:
        yield framed(1, self.written, b"web-up\n")


async def test_a_process_start_goes_out_before_its_lines_and_its_exit_before_later_lines(tmp_path: Path) -> None:
    from shared.provider.local.logs import LocalLogs

    container = "c0ffee" * 10 + "abcd"
    labels = {"convox.rack": "r", "convox.app": "app", "convox.type": "web", "convox.release": "R1"}
    docker = QuickDocker(ts(200), ts(300))
    logs = LocalLogs(SlowState(), docker, None, "r", tmp_path)  # type: ignore[arg-type]
    logs.running = True
    logs.events_read_to = "~"
    pump = asyncio.create_task(logs._pump())
    try:

        def event(action: str, at: int, **more: str) -> EngineEvent:
            return {"Action": action, "Actor": {"ID": container, "Attributes": {**labels, **more}},
                    "timeNano": 1_767_323_045_000_000_000 + at}  # fmt: skip

        await logs._on_event(event("create", 50))
        await logs._on_event(event("start", 100))  # the database answers slowly; the reader is quick
        await asyncio.wait_for(asyncio.gather(*logs.readers.values()), 5)
        applog = logs.logs["app"]
        assert "c:" + container in applog.sources  # read to its end at 300, its exit not seen yet
        logs._add(applog, [Line(ts(400), "worker", "R1", "b", "later", "c:b", ts(400))])
        await asyncio.sleep(0.1)
        await logs._on_event(event("die", 350, exitCode="1"))  # Docker's event stream lagged
        await asyncio.sleep(0.1)
        assert [(line.ts, line.text) for line in applog.recent] == [
            (ts(100), "web started"),
            (ts(200), "web-up"),
            (ts(350), "web crashed (exit code 1)"),
            (ts(400), "later"),
        ]
    finally:
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
        for applog in logs.logs.values():
            applog.history.close()


async def collect(stream: AsyncIterator[list[Line]], until: int, within: float = 5.0) -> list[str]:
    got: list[str] = []

    async def run() -> None:
        async for batch in stream:
            got.extend(line.text for line in batch)
            if len(got) >= until:
                return

    await asyncio.wait_for(run(), within)
    return got


def flush(log: AppLog) -> None:
    """What the collector's flusher does: the released lines into the history, then out to the followers."""
    log.history.append(log.unflushed)
    log.flushed_to(log.unflushed[-1].seq)
    log.unflushed = []


async def test_a_follower_gets_history_then_memory_then_live_lines_once_each(applog: Callable[..., AppLog]) -> None:
    log = applog(recent_bytes=2000)
    log.release([Line(ts(n), "web", "R", "abc", f"n={n}") for n in range(300)])
    flush(log)
    assert log.recent[0].seq > 1  # the oldest are on disk only
    log.release([Line(ts(n), "web", "R", "abc", f"n={n}") for n in range(300, 310)])
    flush(log)  # and in memory
    follower = log.read("", True, matcher())
    first = await collect(follower, 310)
    log.release([Line(ts(n), "web", "R", "abc", f"n={n}") for n in range(310, 320)])
    flush(log)
    rest = await collect(follower, 10)
    assert first + rest == [f"n={n}" for n in range(320)]
    await follower.aclose()  # type: ignore[attr-defined]
    assert not log.subscribers


async def test_a_slow_follower_catches_up_from_the_history_without_a_gap(applog: Callable[..., AppLog]) -> None:
    log = applog(follower_queue=100, recent_bytes=1000)
    follower = asyncio.create_task(collect(log.read("", True, matcher()), 5000))
    for _ in range(10):  # let it subscribe
        await asyncio.sleep(0)
    assert log.subscribers
    for start in range(0, 5000, 50):  # the collector never waits for the follower
        log.release([Line(ts(n), "web", "R", "abc", f"n={n}") for n in range(start, start + 50)])
        flush(log)
    assert next(iter(log.subscribers)).overflow
    assert await follower == [f"n={n}" for n in range(5000)]


async def test_a_follower_is_sent_only_lines_already_in_the_history(applog: Callable[..., AppLog]) -> None:
    """A collector killed before its flush loses what it had not written, and the next one re-reads it (maybe
    with another time, for the order): a follower that had been sent it would see it twice after resuming."""
    log = applog()
    log.release([Line(ts(n), "web", "R", "abc", f"n={n}") for n in range(5)])
    flush(log)
    follower = log.read("", True, matcher())
    assert await collect(follower, 5) == [f"n={n}" for n in range(5)]
    log.release([Line(ts(n), "web", "R", "abc", f"n={n}") for n in range(5, 8)])  # released, not written yet
    later = asyncio.ensure_future(collect(follower, 3))
    await asyncio.sleep(0.05)
    assert not later.done()
    assert [line.text async for batch in log.read("", False, matcher()) for line in batch][-1] == "n=4"
    flush(log)
    assert await later == ["n=5", "n=6", "n=7"]
    await follower.aclose()  # type: ignore[attr-defined]


async def test_a_follower_with_a_direct_way_is_handed_new_lines_as_they_are_written_and_never_out_of_order(
    applog: Callable[..., AppLog],
) -> None:
    """The way out (a followed raw stream's socket) is a list here; it declines when told to, or fails."""
    log = applog()

    def lines(start: int, stop: int) -> list[Line]:
        return [Line(ts(n), "web" if n % 2 else "worker", "R", "abc", f"n={n}") for n in range(start, stop)]

    log.release(lines(0, 6))
    flush(log)
    direct: list[str] = []
    mode = ["take"]

    def take(batch: list[Line]) -> bool:
        if mode[0] == "fail":
            raise OSError("gone")
        if mode[0] == "decline":
            return False
        direct.extend(line.text for line in batch)
        return True

    follower = log.read(ts(2), True, matcher(service="web"), take)
    assert await collect(follower, 2) == ["n=3", "n=5"]  # what was there before, through the stream
    log.release(lines(6, 10))
    flush(log)
    assert direct == ["n=7", "n=9"]  # in the collector's turn: nothing awaited in between
    mode[0] = "decline"
    log.release(lines(10, 12))
    flush(log)
    mode[0] = "take"
    log.release(lines(12, 14))
    flush(log)  # queued behind what was declined, not handed on before it
    assert direct == ["n=7", "n=9"]
    assert await collect(follower, 2) == ["n=11", "n=13"]
    log.release(lines(14, 16))
    flush(log)
    assert direct == ["n=7", "n=9", "n=15"]
    mode[0] = "fail"
    log.release(lines(16, 18))
    flush(log)  # a failing way out is dropped: its lines go through the stream, which finds out itself
    mode[0] = "take"
    log.release(lines(18, 20))
    flush(log)
    assert await collect(follower, 2) == ["n=17", "n=19"]
    assert direct == ["n=7", "n=9", "n=15"]
    await follower.aclose()  # type: ignore[attr-defined]


async def test_no_follow_reads_to_the_end_then_stops_and_filters_apply(applog: Callable[..., AppLog]) -> None:
    log = applog()
    log.release([Line(ts(n), "web" if n % 2 else "worker", "R", f"p{n % 2}", f"n={n}") for n in range(20)])
    log.release([Line(ts(20), "convox", "R", "p1", "web crashed (exit code 1)")])
    flush(log)
    got = [line.text async for batch in log.read(ts(10), False, matcher(service="web")) for line in batch]
    assert got == [f"n={n}" for n in range(11, 20, 2)] + ["web crashed (exit code 1)"]
    got = [line.text async for batch in log.read("", False, matcher(pid="p0", text="n=1")) for line in batch]
    assert got == ["n=10", "n=12", "n=14", "n=16", "n=18"]


# ---- the rack's own log ----------------------------------------------------------------------------------


def rack_text(start: int, count: int) -> str:
    return "".join(
        f"2026-01-02T03:04:{n:02d}.000001+00:00 {'gateway' if n % 2 else 'apps'}: ns=x at=n{n}\n"
        for n in range(start, start + count)
    )


async def test_the_rack_log_is_read_from_since_and_followed(tmp_path: Path) -> None:
    path = tmp_path / "rack.log"
    path.write_text(rack_text(0, 30))
    since = "2026-01-02T03:04:20.000000000Z"
    got = [line async for batch in read_rack_log(path, since, False, 0.01) for line in batch]
    assert [line.text for line in got] == [f"ns=x at=n{n}" for n in range(20, 30)]
    assert (got[1].service, got[1].release, got[1].pid) == ("gateway", "", "")
    assert got[1].render() == b"2026-01-02T03:04:21.000001Z gateway: ns=x at=n21\n"
    follower = read_rack_log(path, since, True, 0.01)
    seen = await collect_lines(follower, 10)
    with path.open("a") as handle:
        handle.write(rack_text(30, 2)[:-5])  # a line being written
    await asyncio.sleep(0.05)
    with path.open("a") as handle:
        handle.write(rack_text(30, 2)[-5:])
    seen += await collect_lines(follower, 2)
    assert seen == [f"ns=x at=n{n}" for n in range(20, 32)]
    await follower.aclose()  # type: ignore[attr-defined]


async def collect_lines(stream: AsyncIterator[list[Line]], count: int) -> list[str]:
    got: list[str] = []
    while len(got) < count:
        got.extend(line.text for line in await asyncio.wait_for(anext(stream), 5))
    return got


def test_a_rack_line_without_a_timestamp_is_not_a_line() -> None:
    assert rack_line(b"garbage") is None
    line = rack_line(b"2026-01-02T03:04:05.5+00:00 supervisor: ns=supervisor at=start service=apps pid=1")
    assert line is not None and line.service == "supervisor" and line.text.startswith("ns=supervisor")


# ---- rendering, since, the CLI's resume ------------------------------------------------------------------


def test_a_line_renders_as_convox_shows_it() -> None:
    when = "2015-01-01T00:00:00.000000999Z"
    line = Line(when, "web", "RNJYVQUMKKU", "68831d3dce63", "hi")
    assert line.render() == b"2015-01-01T00:00:00.000000Z web:RNJYVQUMKKU/68831d3dce63 hi\n"
    event = Line(when, "convox", "RNJYVQUMKKU", "", "release promoted")
    assert event.render() == b"2015-01-01T00:00:00.000000Z convox:RNJYVQUMKKU release promoted\n"


def test_since_takes_durations_and_times() -> None:
    now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    assert parse_since("1h30m", now) == datetime(2026, 1, 2, 10, 30, tzinfo=UTC)
    assert parse_since("2d", now) == datetime(2025, 12, 31, 12, 0, tzinfo=UTC)
    assert parse_since("2026-01-02T11:00:00Z") == datetime(2026, 1, 2, 11, tzinfo=UTC)
    assert parse_since("") is None
    with pytest.raises(BadRequest):
        parse_since("yesterday")
    assert since_time("90s", now) == "2026-01-02T11:58:30.000000Z"


def test_a_resumed_stream_skips_exactly_what_was_printed() -> None:
    out = io.BytesIO()
    printer = Printer(out)
    a = b"2026-01-02T03:04:05.000001Z web:R/a same\n"
    b = b"2026-01-02T03:04:05.000002Z web:R/b other\n"
    printer.feed(a + a + b)  # a line may legitimately repeat
    resume = printer.resume()
    assert resume == "2026-01-02T03:04:00.000002Z"
    late = b"2026-01-02T03:04:05.000001Z convox:R late event\n"
    printer.feed(a + late + a + b + b"2026-01-02T03:04:06.000000Z web:R/a new\n")
    assert out.getvalue() == a + a + b + late + b"2026-01-02T03:04:06.000000Z web:R/a new\n"


def test_the_cli_prints_messages_as_they_come_and_remembers_only_the_last_seconds_to_resume() -> None:
    out = io.BytesIO()
    printer = Printer(out)

    def line(second: int, n: int) -> bytes:
        return b"2026-01-02T03:%02d:%02d.%06dZ web:R/a line %d\n" % (second // 60, second % 60, n, n)

    sent = [b"".join(line(second, second * 10 + k) for k in range(3)) for second in range(60)]
    for message in sent:
        printer.feed(message)
    assert out.getvalue() == b"".join(sent)
    assert printer.printed == 180
    assert len(printer.window) <= 13  # about two margins of seconds, not the whole stream
    assert printer.resume() == "2026-01-02T03:00:54.000592Z"
    again = b"".join(sent[55:])  # a resumed stream: the lines since then, and on
    printer.feed(again + line(61, 1))
    assert out.getvalue() == b"".join(sent) + line(61, 1)


def test_a_follow_knows_the_lines_the_engine_sends_again_and_takes_slightly_older_new_ones() -> None:
    from shared.provider.local.log_containers import Recent

    recent = Recent()
    stamps = [f"2026-12-03T07:00:{n // 1000:02d}.{n % 1000:03d}000000Z" for n in range(3000)]
    assert not any(recent.again(ts, b"line %d" % n) for n, ts in enumerate(stamps))
    # a rotation: the Engine goes back and sends its last thousand lines again
    assert all(recent.again(ts, b"line %d" % n) for n, ts in enumerate(stamps) if n >= 2000)
    # stderr read a moment before stdout's newest line: older, yet new
    assert not recent.again(stamps[2990], b"an error")
    assert recent.again(stamps[2990], b"an error")  # and that one, sent again, is known
    assert not recent.again(stamps[5], b"line 5 but different")


async def test_a_read_in_rising_time_is_one_run_and_the_lines_the_engine_sends_again_are_still_known(
    tmp_path: Path,
) -> None:
    from shared.provider.local.log_containers import Resume
    from shared.provider.local.logs import LocalLogs

    logs = LocalLogs(SlowState(), None, None, "r", tmp_path)  # type: ignore[arg-type]
    applog = await logs.applog("app")
    resume = Resume(ts(2), 1)  # collected up to 2, one line at it
    logs._writing = True  # as if the history were being written in a thread: what is collected is held
    try:
        read = [(ts(n), b"x%d" % n) for n in (2, 3, 4)]
        assert logs._collect(applog, "c:a", "web", "R", "a", read, resume) == 2  # the line at 2 is skipped
        assert [len(lines) for lines, _ in applog.runs] == []  # not a run: a line at the cursor was looked at
        assert logs._collect(applog, "c:a", "web", "R", "a", [(ts(5), b"x5"), (ts(6), b"x6")], resume) == 2
        assert [len(lines) for lines, _ in applog.runs] == [2]  # newer than all, rising: one run
        again = [(ts(n), b"x%d" % n) for n in (4, 5, 6)]  # a rotation: the Engine sends these again
        assert logs._collect(applog, "c:a", "web", "R", "a", again, resume) == 0
        mixed = [(ts(8), b"out"), (ts(7), b"err")]  # stdout and stderr a little apart: new, not a run
        assert logs._collect(applog, "c:a", "web", "R", "a", mixed, resume) == 2
        assert len(applog.runs) == 1
        applog.release_due(asyncio.get_running_loop().time())
        assert [line.text for line in applog.recent] == ["x3", "x4", "x5", "x6", "err", "out"]
        assert logs.offsets["c:a"] == Offset(ts(8), 1)
    finally:
        applog.history.close()
