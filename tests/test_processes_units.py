"""The small parts of processes, without a rack: figures as docker stats computes them (from the engine's
document and from cgroup files), the CLI's rendering and command lines, and the CLI's copy of the stream codec."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cli import stream as client
from cli.cmd_processes import ago, percent, rows
from services.processes.routes import shell_words
from shared import stream
from shared.errors import Conflict, NotFound, RackError, Unavailable
from shared.protocol import Process
from shared.provider.engine.docker import Engine
from shared.provider.engine.exec import SIZED, _Attached, _before_exec, sized
from shared.provider.engine.stats import Cgroups, Sample, Sampler, cpu_fraction, memory_fraction, parse
from shared.provider.local.docker import Docker
from shared.provider.local.runners import Runner
from shared.provider.local.sandboxes import Sandboxes, pause_program

DOCKER_STATS = {  # trimmed from a real `GET /containers/{id}/stats` (cgroup v1)
    "cpu_stats": {
        "cpu_usage": {"total_usage": 5_644_025_622, "percpu_usage": [3_090_676_557, 2_553_349_065]},
        "system_cpu_usage": 2_299_020_000_000,
        "online_cpus": 2,
    },
    "memory_stats": {
        "usage": 851_968,
        "limit": 25_276_510_208,
        "stats": {"total_inactive_file": 262_144, "cache": 520_192},
    },
}


def test_figures_are_computed_as_docker_stats_computes_them() -> None:
    first = parse(DOCKER_STATS, at=0.0)
    assert first is not None
    assert first.memory == 851_968 - 262_144  # without the inactive page cache
    later = Sample(at=1.0, cpu=first.cpu + 500_000_000, system=first.system + 2_000_000_000, online=2,
                   memory=first.memory, limit=first.limit)  # fmt: skip
    assert cpu_fraction(first, later) == pytest.approx(0.5)  # half a CPU: docker's 50.00%
    assert cpu_fraction(None, later) == 0.0
    assert cpu_fraction(later, first) == 0.0  # a counter that went back (a restart) is no figure
    assert memory_fraction(first) == pytest.approx((851_968 - 262_144) / 25_276_510_208)
    assert parse({"cpu_stats": {}, "memory_stats": {}}, at=0.0) is None  # not running


async def test_stats_that_the_engine_ends_empty_are_no_figures_and_keep_the_sampler_alive(tmp_path: Path) -> None:
    """dockerd answers ``GET /containers/{id}/stats`` 200 with an empty body when the container stops or goes
    while it answers (seen on the aws engine path as an AttributeError that killed the sampler's task). The
    engine here is a test double on a unix socket that answers every request so."""
    asked = asyncio.Event()

    async def empty_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                body = b'{"ApiVersion": "1.43"}' if b" /version " in head.split(b"\r\n", 1)[0] else b""
                if b"/stats" in head:
                    asked.set()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(empty_answers, str(tmp_path / "engine.sock"))
    engine = Engine(f"unix://{tmp_path / 'engine.sock'}", timeout=5)
    sampler = Sampler(engine, local=False)
    try:
        with pytest.raises(Conflict, match="not running"):
            await engine.stats_once("0123456789ab" * 2)
        assert await sampler.figures(["0123456789ab" * 2]) == {}
        asked.clear()
        async with asyncio.timeout(10):
            await asked.wait()  # a round of the background sampling, which asks again
        assert sampler.task is not None and not sampler.task.done()  # still sampling what listings asked for
    finally:
        await sampler.close()  # raises what the task died of, if it did
        await engine.close()
        server.close()


def test_a_process_that_has_not_become_its_command_yet_is_told_apart() -> None:
    """The TTY prelude's wait (ExecStream._prelude_done) reads the exec'd process's command line; what runc
    shows before the command, and the nothing of a process in the middle of its exec, are no answer yet."""
    assert _before_exec(b"runc\x00init\x00") and _before_exec("runc init")
    assert _before_exec(b"") and _before_exec("[sh]")  # /proc's and ps's views of an empty command line
    assert not _before_exec(b"stty\x00size\x00") and not _before_exec("sh -c read line")
    assert not _before_exec(b"/bin/sh\x00-c\x00" + SIZED.encode())  # the prelude itself: told by SIZED


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_host(tmp_path: Path) -> tuple[Path, Path]:
    proc = tmp_path / "proc"
    write(proc / "stat", "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0 0 0 0\n")
    write(proc / "meminfo", "MemTotal:       1000000 kB\n")
    return tmp_path / "cgroup", proc


def test_cgroup_v1_files_give_the_same_sample(tmp_path: Path) -> None:
    root, proc = fake_host(tmp_path)
    cpu = root / "cpuacct" / "docker" / "abc" / "cpuacct.usage"
    memory = root / "memory" / "docker" / "abc"
    write(cpu, "123456789\n")
    write(memory / "memory.usage_in_bytes", "3000000\n")
    write(memory / "memory.limit_in_bytes", "9223372036854771712\n")  # no limit: the host's memory counts
    write(memory / "memory.stat", "cache 2000000\ntotal_inactive_file 1000000\n")
    cgroups = Cgroups(root, proc)
    sample = cgroups.read(["abc", "missing"])
    assert sample["missing"] is None
    found = sample["abc"]
    assert found is not None
    assert (found.cpu, found.memory, found.limit) == (123456789, 2_000_000, 1_024_000_000)
    assert found.system == 1000 * 1_000_000_000 // 100  # clock ticks in nanoseconds


def test_cgroup_v2_files_give_the_same_sample(tmp_path: Path) -> None:
    root, proc = fake_host(tmp_path)
    scope = root / "system.slice" / "docker-abc.scope"
    write(scope / "cpu.stat", "usage_usec 1000\nuser_usec 600\nsystem_usec 400\n")
    write(scope / "memory.current", "5000000\n")
    write(scope / "memory.max", "10000000\n")
    write(scope / "memory.stat", "anon 4000000\ninactive_file 500000\n")
    found = Cgroups(root, proc).read(["abc"])["abc"]
    assert found is not None
    assert (found.cpu, found.memory, found.limit) == (1_000_000, 4_500_000, 10_000_000)


def test_a_tty_command_is_started_at_its_size() -> None:
    argv = sized(["vi", "file"], stream.Terminal(tty=True, width=132, height=43))
    assert argv[:2] == ["/bin/sh", "-c"] and argv[3:] == ["sh", "43", "132", "vi", "file"]
    assert 'exec "$@"' in argv[2]


def test_one_string_runs_under_sh_c() -> None:
    assert shell_words("echo $GREETING") == ["sh", "-c", "echo $GREETING"]
    assert shell_words(["echo $GREETING"]) == ["sh", "-c", "echo $GREETING"]
    assert shell_words(["bin/web"]) == ["bin/web"]  # one plain word runs as it is
    assert shell_words(["ls", "-la", "$HOME"]) == ["ls", "-la", "$HOME"]  # words are an argv, not expanded
    assert shell_words([]) == [] and shell_words("  ") == []


def test_ps_rows_show_percentages_and_relative_times() -> None:
    now = datetime(2015, 1, 6, tzinfo=UTC)
    assert ago("2015-01-01T00:00:00Z", now) == "5 days ago"
    assert ago((now - timedelta(seconds=1)).isoformat(), now) == "1 second ago"
    assert ago((now - timedelta(hours=2, minutes=5)).isoformat(), now) == "2 hours ago"
    assert ago(now.isoformat(), now) == "just now"
    assert ago(None) == ""
    assert (percent(0.2439), percent(0), percent(None)) == ("24.39%", "0.00%", "0.00%")
    process = Process(id="68831d3dce63ab", app="a", name="web", release="RNJYVQUMKKU", command="sh -c bin/web",
                      image="", host="", ports=[], cpu=0.0, memory=0.2439, started=None, status="running")  # fmt: skip
    assert rows([process]) == [("68831d3dce63", "web", "RNJYVQUMKKU", "0.00%", "24.39%", "", "sh -c bin/web")]


def test_the_cli_speaks_the_same_protocol_as_the_rack() -> None:
    assert client.SUBPROTOCOL == stream.SUBPROTOCOL
    for channel in stream.Channel:
        assert client.encode(channel, b"x") == stream.encode(channel, b"x")
    assert client.encode(client.CLOSE_CHANNEL, bytes((client.STDIN_CHANNEL,))) == stream.close(stream.Channel.STDIN)
    assert stream.parse_resize(client.resize_message(80, 24)[1:]) == stream.Resize(width=80, height=24)
    assert client.parse_status(stream.status(exit_code=7)[1:]) == client.Status(exit_code=7)
    assert client.parse_status(stream.status(error="boom")[1:]) == client.Status(error="boom")
    assert client.parse_status(b"not json") is None


@pytest.mark.parametrize(
    "argv",
    [
        ["exec", "--help"],
        ["exec", "abc"],  # no command: Typer's usage error
        ["run", "--detach", "web", "true"],  # a plain HTTP request: Typer's command
        ["run", "--timeout", "0", "web", "true"],
        ["run", "--unknown", "web", "true"],
        ["ps"],
        [],
    ],
)
def test_the_fast_entry_leaves_everything_else_to_typer(argv: list[str]) -> None:
    assert client.fast(argv) is None


def test_the_fast_entry_reads_options_before_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []

    def recorded(kind: str, code: int) -> Callable[..., int]:
        def command(*args: object) -> int:
            calls.append((kind, *args))
            return code

        return command

    monkeypatch.setattr(client, "exec_command", recorded("exec", 5))
    monkeypatch.setattr(client, "run_command", recorded("run", 6))
    assert client.fast(["exec", "-a", "myapp", "abc123", "ls", "--app", "-la"]) == 5
    assert client.fast(["run", "--app=myapp", "-e", "A=1", "--env", "B=2=3", "-t", "9", "web", "sh", "-c", "x"]) == 6
    assert calls == [
        ("exec", "myapp", "abc123", ["ls", "--app", "-la"]),
        ("run", "myapp", "web", ["sh", "-c", "x"], {"A": "1", "B": "2=3"}, None, 9),
    ]
    assert client.fast(["run", "-e", "NOEQUALS", "web", "true"]) == 1  # ERROR: --env: expected KEY=VALUE


async def test_a_sandbox_is_handed_to_one_process_and_given_back_once(tmp_path: Path) -> None:
    sandboxes = Sandboxes(Docker(None), "rack", "convox-rack", None, Runner(tmp_path))  # type: ignore[arg-type]
    sandboxes.give_back("app", "s1")
    sandboxes.give_back("app", "s1")  # seen idle by a sweep before its maker gave it back: no second entry
    assert [s for s, _ in sandboxes.idle["app"]] == ["s1"] and not sandboxes.tasks
    assert sandboxes.take("app") == "s1" and sandboxes.take("app") is None  # one process at a time
    assert sandboxes.held == {"s1": "app"}
    sandboxes.want("app")  # its sandbox is only busy: nothing to make
    assert not sandboxes.making and not sandboxes.tasks
    sandboxes.give_back("app", "s1")
    assert sandboxes.held == {} and sandboxes.take("app") == "s1"
    assert not sandboxes.expiries  # a taken sandbox has no idle time running
    sandboxes.give_back("app", "s1")
    assert list(sandboxes.expiries) == ["s1"]
    await sandboxes.close()
    assert not sandboxes.expiries


class EndedOnTheNthAsk(_Attached):
    """A stream whose ``_end`` fails with the given errors before it succeeds (no engine: what is simulated
    is the engine's failed answers)."""

    def __init__(self, errors: list[RackError]) -> None:
        self.conn = None
        self.closed = False
        self.errors = errors
        self.asked = 0

    @property
    def _what(self) -> str:
        return "process p"

    def _resize_path(self) -> str | None:
        return None

    async def _end(self) -> None:
        self.asked += 1
        if self.errors:
            raise self.errors.pop(0)


async def test_a_closed_stream_asks_again_once_when_the_engine_did_not_answer() -> None:
    unanswered = EndedOnTheNthAsk([Unavailable("the engine did not answer")])
    await unanswered.close()
    assert unanswered.asked == 2 and unanswered.closed
    gone = EndedOnTheNthAsk([NotFound("process p: not found")])
    await gone.close()  # the process is gone already: nothing to ask again
    assert gone.asked == 1
    down = EndedOnTheNthAsk([Unavailable("down"), Unavailable("down"), Unavailable("down")])
    await down.close()  # an engine that stays down does not hold the close for long
    assert down.asked == 2


def test_the_pause_program_is_a_static_x86_64_executable() -> None:
    program = pause_program()
    assert program[:4] == b"\x7fELF" and program[4:6] == b"\x02\x01"  # 64-bit, little endian
    e_type, e_machine, _, entry, phoff = struct.unpack_from("<HHIQQ", program, 16)
    assert (e_type, e_machine, phoff) == (2, 0x3E, 64)
    p_type, p_flags, offset, vaddr, _, filesz, memsz = struct.unpack_from("<IIQQQQQ", program, 64)
    assert (p_type, p_flags, offset, filesz, memsz) == (1, 5, 0, len(program), len(program))
    assert program[entry - vaddr :] == bytes.fromhex("b822000000 0f05 ebf7")  # pause(2), again


async def test_an_idle_sandbox_goes_when_its_idle_time_is_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shared.provider.local.sandboxes.IDLE_SECONDS", 0.05)
    sandboxes = Sandboxes(Docker(None), "rack", "convox-rack", None, Runner(tmp_path))  # type: ignore[arg-type]
    removed: list[str] = []
    gone = asyncio.Event()

    async def remove(sandbox: str) -> None:
        removed.append(sandbox)
        gone.set()

    monkeypatch.setattr(sandboxes, "_remove", remove)
    sandboxes.give_back("app", "s1")
    sandboxes.give_back("other", "s2")
    assert sandboxes.take("other") == "s2"  # taken in time: it stays
    await asyncio.wait_for(gone.wait(), 5)
    await asyncio.gather(*sandboxes.tasks)
    assert removed == ["s1"] and sandboxes.idle["app"] == [] and not sandboxes.expiries  # s2's time was cancelled
    await sandboxes.close()
