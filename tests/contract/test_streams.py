"""Processes as streams over every provider: ``exec`` (output, exit status, stdin and its EOF, a TTY's size
and resize, no process left by a closed stream, NotFound before anything starts), ``run_interactive`` and
``metrics`` (CPU and memory every ``metrics_interval``).

Every case runs on both providers against a real Docker Engine, where the processes really run:

- ``local``: the provider on this host's engine, as everywhere in tests/contract;
- ``aws``: the provider against moto in server mode (AWS itself: ECS, DynamoDB, S3, SSM, ...), which has no
  data plane. What it lacks is played by the test doubles of tests/aws_engine/: the ECS container agent of
  one container instance (``ContainerAgent``: it runs each task placed on the instance as a real container
  on this host's engine, with the agent's labels, and registers the instance's engine address) and that
  instance's Docker Engine listening with ``--tlsverify`` (``TlsFront``: a mutual-TLS front with the
  certificates the product's installer code makes, forwarding to this host's engine). Everything between
  the provider and that front is the product's own code (certificates in SSM, the container-instance
  lookup, TLS with half-close, exec, stats). moto keeps no exit code of a task; none is read from it here.

What the tests look at beside the contract (which processes run in a container, which containers are
left) they read from the engine itself (``docker ps``, ``docker top``), the same way on both providers: the
containers of either carry the labels ``convox.rack`` and ``convox.app``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared.errors import NotFound
from shared.models import Process, ProcessRunOptions
from shared.provider import Provider, load_provider
from shared.provider.aws.certificate import engine_certificates, store_engine_certificates
from shared.provider.aws.provider import AwsProvider
from shared.stream import Terminal
from tests.aws_engine.ecs_containers_double import LABEL_TASK, ContainerAgent, docker
from tests.aws_engine.tls_front_double import TlsFront
from tests.conftest import RACK_NAME
from tests.contract.conftest import running_workers, settings_for
from tests.streams import drain, joined


@dataclass
class StreamsRack:
    """A provider whose processes run on this host's engine, and the engine's own view of them."""

    provider: Provider
    image: str
    apps: set[str] = field(default_factory=set)

    async def app(self, name: str) -> str:
        await self.provider.apps.create(name)
        self.apps.add(name)
        return name

    async def containers(self, app: str, running: bool = False) -> dict[str, str]:
        """The app's containers on the engine (only the running ones with ``running``): the task ARN (aws) or
        empty (local), by container id."""
        args = ["ps", "--no-trunc", "--filter", f"label=convox.rack={RACK_NAME}", "--filter", f"label=convox.app={app}"]
        listed = await asyncio.to_thread(
            docker, *args, *([] if running else ["-a"]), "--format", f'{{{{.ID}}}} {{{{.Label "{LABEL_TASK}"}}}}'
        )
        found: dict[str, str] = {}
        for line in listed.splitlines():
            container, _, task = line.strip().partition(" ")
            if container:
                found[container] = task
        return found

    async def container_of(self, app: str, pid: str) -> str | None:
        """The running container of process ``pid``: its id starts with the pid (local), or its task's id ends
        with it (aws, where the pid is the task id's last 12 characters)."""
        for container, task in (await self.containers(app, running=True)).items():
            if container.startswith(pid) or (task and task.replace("-", "").endswith(pid)):
                return container
        return None

    async def top(self, container: str) -> str:
        """What runs in the container now, as the engine shows it."""
        return await asyncio.to_thread(docker, "top", container, "-o", "pid,args")

    async def running(self, app: str, command: list[str] | None = None, service: str = "web") -> str:
        """A detached one-off of ``app``, once its container runs on the engine; its pid."""
        process = await self.provider.processes.run(
            app, ProcessRunOptions(service=service, image=self.image, command=command or ["sleep", "3600"])
        )
        await until(lambda: self.container_of(app, process.id))
        return process.id


async def until(check: Callable[[], Awaitable[object]], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
async def rack(provider_name: str, backend: str, tmp_path: Path, busybox_image: str) -> AsyncIterator[StreamsRack]:
    """The provider with its workers running; on aws with the agent and engine doubles (see the module). Not
    the suite's ``provider`` fixture: on aws that registers a container instance with no engine, where a task
    placed would never run; here the agent double's instance is the cluster's only one."""
    if provider_name == "local":
        async with load_provider(settings_for("local", tmp_path)) as provider, running_workers(provider):
            rack = StreamsRack(provider, busybox_image)
            try:
                yield rack
            finally:
                await remove_containers(rack)
        return
    certificates = await asyncio.to_thread(engine_certificates, RACK_NAME)
    front = await TlsFront(certificates.ca, certificates.server_cert, certificates.server_key).start()
    agent: ContainerAgent | None = None
    try:
        async with load_provider(settings_for("aws", tmp_path)) as provider:
            assert isinstance(provider, AwsProvider)
            await store_engine_certificates(await provider.clients.get("ssm"), RACK_NAME, certificates)
            agent = await asyncio.to_thread(lambda: ContainerAgent(RACK_NAME, front.address).start())
            async with running_workers(provider):
                yield StreamsRack(provider, busybox_image)
            assert not agent.errors, agent.errors
    finally:
        if agent is not None:
            await asyncio.to_thread(agent.stop)  # removes every container it played
        await front.close()


async def remove_containers(rack: StreamsRack) -> None:
    for app in rack.apps:
        ids = list(await rack.containers(app))
        if ids:
            await asyncio.to_thread(docker, "rm", "-f", *ids, check=False)  # some may be going already


# ---- exec ----------------------------------------------------------------------------------------------------


async def test_exec_streams_stdout_and_stderr_apart_and_passes_the_exit_status(rack: StreamsRack) -> None:
    app = await rack.app("exec-out")
    pid = await rack.running(app)
    for code in (0, 3):
        stream = await rack.provider.processes.exec(app, pid, ["sh", "-c", f"echo out; echo err >&2; exit {code}"])
        try:
            await stream.start(Terminal())
            messages = await drain(stream)
            assert await stream.wait() == code
        finally:
            await stream.close()
        assert (joined(messages, 1), joined(messages, 2)) == (b"out\n", b"err\n")


async def test_exec_passes_stdin_and_its_eof(rack: StreamsRack) -> None:
    app = await rack.app("exec-in")
    pid = await rack.running(app)
    stream = await rack.provider.processes.exec(app, pid, ["sh", "-c", "cat; echo eof >&2; exit 7"])
    try:
        await stream.start(Terminal())
        await stream.write(b"hello\n")
        await stream.write(memoryview(b"piped line\n" * 5000))  # more than one buffer of the way there
        await stream.close_stdin()  # cat ends only on EOF: without it, drain never returns
        async with asyncio.timeout(30):
            messages = await drain(stream)
        assert await stream.wait() == 7
    finally:
        await stream.close()
    assert joined(messages, 1) == b"hello\n" + b"piped line\n" * 5000
    assert joined(messages, 2) == b"eof\n"


async def test_exec_tty_has_its_size_at_start_and_follows_a_resize(rack: StreamsRack) -> None:
    app = await rack.app("exec-tty")
    pid = await rack.running(app)
    stream = await rack.provider.processes.exec(app, pid, ["stty", "size"])
    try:
        await stream.start(Terminal(tty=True, width=101, height=31))
        assert joined(await drain(stream), 1) == b"31 101\r\n"
        assert await stream.wait() == 0
    finally:
        await stream.close()
    stream = await rack.provider.processes.exec(app, pid, ["sh", "-c", "read line; stty size; echo $line; exit 4"])
    try:
        await stream.start(Terminal(tty=True, width=80, height=24))
        await stream.resize(132, 50)
        await stream.write(b"typed\r")  # the size is read after the line: the resize was applied before it
        output = joined(await drain(stream), 1)
        assert await stream.wait() == 4
    finally:
        await stream.close()
    assert output.endswith(b"50 132\r\ntyped\r\n")


async def test_closing_an_exec_stream_ends_its_process_tree(rack: StreamsRack) -> None:
    app = await rack.app("exec-close")
    pid = await rack.running(app)
    container = await rack.container_of(app, pid)
    assert container is not None
    await close_mid_way(rack, app, pid, container, Terminal(), "4343")  # pipes: the process tree is killed
    await close_mid_way(rack, app, pid, container, Terminal(tty=True, width=80, height=24), "4242")  # a hangup
    assert await rack.container_of(app, pid) == container  # the process exec'd into is left running


async def close_mid_way(rack: StreamsRack, app: str, pid: str, container: str, terminal: Terminal, marker: str) -> None:
    """An exec of a command with a child of its own, closed while both run (the client went away): both go,
    nothing is orphaned in the container."""
    stream = await rack.provider.processes.exec(app, pid, ["sh", "-c", f"sleep {marker} & sleep 1{marker}"])
    await stream.start(terminal)
    await until(lambda: has(rack.top(container), f"sleep {marker}", f"sleep 1{marker}"))
    await stream.close()
    await until(lambda: lacks(rack.top(container), f"sleep {marker}", f"sleep 1{marker}"))


async def has(text: Awaitable[str], *parts: str) -> bool:
    shown = await text
    return all(part in shown for part in parts)


async def lacks(text: Awaitable[str], *parts: str) -> bool:
    shown = await text
    return not any(part in shown for part in parts)


async def test_exec_on_an_unknown_app_or_pid_is_not_found_before_anything_starts(rack: StreamsRack) -> None:
    with pytest.raises(NotFound):
        await rack.provider.processes.exec("exec-nowhere", "0123456789ab", ["true"])
    app = await rack.app("exec-unknown")
    for pid in ("0123456789ab", "0" * 32, "not-a-pid"):
        with pytest.raises(NotFound):
            await rack.provider.processes.exec(app, pid, ["true"])
    pid = await rack.running(app)
    await rack.provider.processes.stop(app, pid)
    await until(lambda: absent(rack.container_of(app, pid)))
    with pytest.raises(NotFound):  # a process that has gone is unknown too
        await rack.provider.processes.exec(app, pid, ["true"])


async def absent(value: Awaitable[object]) -> bool:
    return await value is None


async def test_exec_on_a_pid_of_another_app_is_not_found(rack: StreamsRack) -> None:
    mine = await rack.app("exec-mine")
    theirs = await rack.app("exec-theirs")
    pid = await rack.running(theirs, ["sh", "-c", "sleep 3600"])
    with pytest.raises(NotFound):
        await rack.provider.processes.exec(mine, pid, ["touch", "/tmp/reached"])
    container = await rack.container_of(theirs, pid)
    assert container is not None
    # nothing ran in their process: the file the command would have made is not there
    probe = await rack.provider.processes.exec(theirs, pid, ["sh", "-c", "test -e /tmp/reached"])
    try:
        await probe.start(Terminal())
        await drain(probe)
        assert await probe.wait() == 1
    finally:
        await probe.close()


# ---- run_interactive -----------------------------------------------------------------------------------------


async def test_an_attached_run_streams_its_output_and_exit_status_and_leaves_nothing(rack: StreamsRack) -> None:
    app = await rack.app("run-out")
    options = ProcessRunOptions(
        service="web", image=rack.image, command=["sh", "-c", "echo ran $0; cat; echo err >&2; exit 5"]
    )
    stream = await rack.provider.processes.run_interactive(app, options)
    try:
        await stream.start(Terminal())
        await stream.write(b"piped\n")
        await stream.close_stdin()
        async with asyncio.timeout(30):
            messages = await drain(stream)
        assert await stream.wait() == 5
    finally:
        await stream.close()
    assert (joined(messages, 1), joined(messages, 2)) == (b"ran sh\npiped\n", b"err\n")
    await until(lambda: empty(rack.containers(app)))  # its container is removed (aws: its task is stopped)
    assert await rack.provider.processes.list(app) == []


async def empty(value: Awaitable[dict[str, str]]) -> bool:
    return not await value


async def test_an_attached_tty_run_has_its_size_and_its_exit_status(rack: StreamsRack) -> None:
    app = await rack.app("run-tty")
    options = ProcessRunOptions(
        service="web", image=rack.image, command=["sh", "-c", "stty size; read x; echo got $x; exit 3"]
    )
    stream = await rack.provider.processes.run_interactive(app, options)
    try:
        await stream.start(Terminal(tty=True, width=90, height=20))
        await stream.write(b"abc\r")
        output = joined(await drain(stream), 1)
        assert await stream.wait() == 3
    finally:
        await stream.close()
    # the terminal echoes what is typed when it comes, which may be before the command's first line
    assert output.replace(b"abc\r\n", b"", 1) == b"20 90\r\ngot abc\r\n", output
    await until(lambda: empty(rack.containers(app)))


async def test_closing_an_attached_run_mid_way_ends_it_and_leaves_nothing(rack: StreamsRack) -> None:
    app = await rack.app("run-close")
    for tty in (False, True):
        options = ProcessRunOptions(service="web", image=rack.image, command=["sleep", "3600"])
        stream = await rack.provider.processes.run_interactive(app, options)
        await stream.start(Terminal(tty=tty, width=80, height=24))
        [process] = await rack.provider.processes.list(app)
        container = await rack.container_of(app, process.id)
        assert container is not None and "sleep 3600" in await rack.top(container)
        await stream.close()  # the client went away mid-run
        await until(lambda: empty(rack.containers(app)))
        assert await rack.provider.processes.list(app) == []


# ---- metrics -------------------------------------------------------------------------------------------------


async def test_metrics_yield_the_processes_with_cpu_and_memory_every_interval(rack: StreamsRack) -> None:
    app = await rack.app("metrics")
    busy = await rack.running(app, ["sh", "-c", "while :; do :; done"], service="busy")
    idle = await rack.running(app, ["sleep", "3600"], service="web")
    interval = rack.provider.processes.metrics_interval
    assert interval > 0

    def enough(received: list[tuple[float, list[Process]]]) -> bool:
        shown = {p.id: p for p in received[-1][1]}
        assert set(shown) == {busy, idle}
        return shown[busy].cpu > 0.02 and shown[busy].memory > 0 and len(received) >= 6

    try:
        received = await sampled(rack.provider.processes.metrics(app), enough)
        [(_, only)] = await sampled(rack.provider.processes.metrics(app, service="busy"), lambda _: True)
    finally:
        await rack.provider.processes.stop(app, busy)  # a busy loop on a shared engine: not a moment longer
    assert [p.id for p in only] == [busy]
    assert {p.id: p.name for p in received[-1][1]} == {busy: "busy", idle: "web"}
    assert all(p.cpu >= 0.0 and 0.0 <= p.memory <= 1.0 for _, ps in received for p in ps)
    # one sample per interval, from the start of one listing to the next: seen where they arrive, a gap is
    # that less what one listing took longer than the next (the first, which warms up, is left out)
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(received[1:])]
    assert len(gaps) >= 4 and min(gaps) >= interval * 0.5, gaps
    assert interval * 0.85 <= sum(gaps) / len(gaps) <= interval + 2.0, gaps


async def sampled(
    samples: AsyncIterator[list[Process]],
    enough: Callable[[list[tuple[float, list[Process]]]], bool],
    within: float = 60.0,
) -> list[tuple[float, list[Process]]]:
    """What ``samples`` yields (with when it came) until ``enough`` of it came; then it is closed as the
    processes service closes it, by cancelling its reader."""
    received: list[tuple[float, list[Process]]] = []
    done = asyncio.Event()

    async def read() -> None:
        async for processes in samples:
            received.append((time.monotonic(), processes))
            if enough(received):
                done.set()

    reader = asyncio.create_task(read())
    waiter = asyncio.create_task(done.wait())
    try:
        finished, _ = await asyncio.wait({reader, waiter}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        if reader in finished:
            reader.result()  # what went wrong in it
            raise AssertionError("the metrics ended on their own")
        assert waiter in finished, f"not enough samples within {within} s: {received}"
    finally:
        for task in (reader, waiter):
            task.cancel()
        await asyncio.gather(reader, waiter, return_exceptions=True)
    return received
