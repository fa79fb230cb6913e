"""exec, attached runs and CPU/MEM on the aws provider, through the task's container-instance engine over
mutual TLS. Simulated: AWS (moto), the ECS agent (it plays the tasks as real containers on this host's
engine) and the instance's TLS listener (a front forwarding to this host's engine): see conftest.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from shared.errors import NotFound, Unavailable
from shared.models import ProcessRunOptions
from shared.provider.aws import processes as aws_processes
from shared.provider.aws.certificate import engine_certificates
from shared.provider.aws.processes import AttachedTask, AwsProcesses
from shared.provider.engine.docker import Engine
from shared.provider.engine.tls import client_context
from shared.stream import Terminal
from tests.aws_engine.conftest import EngineRack
from tests.aws_engine.ecs_containers_double import docker
from tests.streams import drain, joined

IMAGE = "rack-test/busybox:1"


async def until(check: Callable[[], object], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def processes(rack: EngineRack) -> AwsProcesses:
    assert isinstance(rack.provider.processes, AwsProcesses)
    return rack.provider.processes


async def running(rack: EngineRack, app: str, command: list[str] | None = None) -> str:
    """A detached one-off of ``app`` (RunTask), once the agent double runs its container; its pid."""
    process = await rack.provider.processes.run(
        app, ProcessRunOptions(service="web", image=IMAGE, command=command or ["sleep", "3600"])
    )
    await until(
        lambda: any(
            arn.endswith(process.id) or arn.replace("-", "").endswith(process.id) for arn in rack.agent.containers
        )
    )
    return process.id


def container_of(rack: EngineRack, pid: str) -> str:
    return next(c for arn, c in rack.agent.containers.items() if arn.replace("-", "").endswith(pid))


async def test_exec_reaches_the_container_through_its_instance_engine_and_passes_exit_code_3(
    rack: EngineRack,
) -> None:
    await rack.provider.apps.create("web1")
    pid = await running(rack, "web1")
    before = rack.front.accepted
    stream = await rack.provider.processes.exec("web1", pid, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    try:
        await stream.start(Terminal())
        messages = await drain(stream)
        assert await stream.wait() == 3
    finally:
        await stream.close()
    assert (joined(messages, 1), joined(messages, 2)) == (b"out\n", b"err\n")
    assert rack.front.accepted > before  # it went through the instance's TLS listener


async def test_exec_stdin_eof_reaches_the_process_over_tls(rack: EngineRack) -> None:
    await rack.provider.apps.create("cat1")
    pid = await running(rack, "cat1")
    stream = await rack.provider.processes.exec("cat1", pid, ["cat"])
    try:
        await stream.start(Terminal())
        await stream.write(b"hello over tls\n" * 1000)
        await stream.close_stdin()
        messages = await drain(stream)
        assert await stream.wait() == 0
    finally:
        await stream.close()
    assert joined(messages, 1) == b"hello over tls\n" * 1000


async def test_exec_tty_has_its_size_at_start_and_follows_a_resize(rack: EngineRack) -> None:
    await rack.provider.apps.create("tty1")
    pid = await running(rack, "tty1")
    stream = await rack.provider.processes.exec("tty1", pid, ["stty", "size"])
    try:
        await stream.start(Terminal(tty=True, width=101, height=31))
        assert joined(await drain(stream), 1) == b"31 101\r\n"
        assert await stream.wait() == 0
    finally:
        await stream.close()
    stream = await rack.provider.processes.exec("tty1", pid, ["sh", "-c", "read line; stty size; echo $line"])
    try:
        await stream.start(Terminal(tty=True, width=80, height=24))
        await stream.resize(132, 50)
        await stream.write(b"typed\r")
        output = joined(await drain(stream), 1)
    finally:
        await stream.close()
    assert output.endswith(b"50 132\r\ntyped\r\n")


async def test_a_pid_of_another_app_is_not_found(rack: EngineRack) -> None:
    await rack.provider.apps.create("mine")
    await rack.provider.apps.create("theirs")
    pid = await running(rack, "theirs")
    with pytest.raises(NotFound):
        await rack.provider.processes.exec("mine", pid, ["true"])


async def test_an_engine_refuses_a_client_without_the_racks_certificate(rack: EngineRack) -> None:
    other = await asyncio.to_thread(engine_certificates, "another-rack")
    strangers = [
        await asyncio.to_thread(client_context, other.ca, other.client_cert, other.client_key),  # another CA
        await asyncio.to_thread(  # the rack's CA trusted, but the engine's own certificate is no client's
            client_context, rack.certificates.ca, rack.certificates.server_cert, rack.certificates.server_key
        ),
    ]
    refused = rack.front.refused
    for context in strangers:
        engine = Engine(f"https://{rack.front.address}", timeout=5, tls=context)
        try:
            with pytest.raises(Unavailable):
                await engine.containers({})
        finally:
            await engine.close()
    await until(lambda: rack.front.refused >= refused + 1)
    mine = Engine(f"https://{rack.front.address}", timeout=5, tls=await processes(rack).engines.context())
    try:
        assert isinstance(await mine.containers({"com.amazonaws.ecs.cluster": rack.agent.cluster}), list)
    finally:
        await mine.close()


async def test_ps_shows_cpu_and_memory_from_the_instance_engine(rack: EngineRack) -> None:
    await rack.provider.apps.create("busy")
    pid = await running(rack, "busy", ["sh", "-c", "while :; do :; done"])

    async def busy() -> bool:
        listed = {p.id: p for p in await rack.provider.processes.list("busy")}
        return pid in listed and listed[pid].cpu > 0.02 and listed[pid].memory > 0

    await until(busy)
    idle = await rack.provider.processes.list("busy", stats=False)
    assert [(p.id, p.cpu) for p in idle] == [(pid, 0.0)]


async def test_an_attached_run_passes_its_exit_code_and_stops_its_task(rack: EngineRack) -> None:
    await rack.provider.apps.create("once")
    stream = await rack.provider.processes.run_interactive(
        "once", ProcessRunOptions(service="web", image=IMAGE, command=["sh", "-c", "echo ran $0; exit 5"])
    )
    assert isinstance(stream, AttachedTask)
    try:
        await stream.start(Terminal())
        messages = await drain(stream)
        assert await stream.wait() == 5
    finally:
        await stream.close()
    assert b"ran sh" in joined(messages, 1)
    await until(lambda: rack.agent.running_containers() == [])  # StopTask, and the agent removed it
    assert await rack.provider.processes.list("once") == []


async def test_no_process_is_left_when_the_client_goes_away(rack: EngineRack) -> None:
    await rack.provider.apps.create("gone")
    pid = await running(rack, "gone")
    container = container_of(rack, pid)
    for tty in (False, True):
        marker = "4242" if tty else "4343"
        stream = await rack.provider.processes.exec("gone", pid, ["sh", "-c", f"sleep {marker} & sleep 1{marker}"])
        await stream.start(Terminal(tty=tty, width=80, height=24))
        await until(lambda m=marker: f"sleep 1{m}" in docker("top", container, "-o", "pid,args"))  # type: ignore[misc]
        await stream.close()
        await until(
            lambda m=marker: (
                f"sleep {m}" not in (top := docker("top", container, "-o", "pid,args"))  # type: ignore[misc]
                and f"sleep 1{m}" not in top
            )
        )
    attached = await rack.provider.processes.run_interactive(
        "gone", ProcessRunOptions(service="web", image=IMAGE, command=["sleep", "3600"])
    )
    await attached.start(Terminal(tty=True, width=80, height=24))
    assert len(rack.agent.running_containers()) == 2
    await attached.close()  # the client went away mid-run: the exec ends, the task stops, its container goes
    await until(lambda: rack.agent.running_containers() == [container])


async def test_an_attached_run_whose_stream_died_is_stopped_by_the_reaper(
    rack: EngineRack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aws_processes, "LEASE", 1.0)
    await rack.provider.apps.create("dead")
    stream = await rack.provider.processes.run_interactive(
        "dead", ProcessRunOptions(service="web", image=IMAGE, command=["sleep", "3600"])
    )
    assert isinstance(stream, AttachedTask)
    await stream.start(Terminal())
    assert stream.lease is not None
    stream.lease.cancel()  # the rack died: nobody renews the task's lease, nobody closes the stream
    await until(lambda: processes(rack).reap(), within=10)  # past the lease, the reaper stops it
    await until(lambda: rack.agent.running_containers() == [])
    stream.task_arn = ""  # (the stream's own close now has nothing left to stop)
    await stream.close()
