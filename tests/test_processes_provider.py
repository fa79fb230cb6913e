"""Processes on the local provider against the real Docker Engine: listing with CPU and MEM, isolation, exec
and interactive runs as streams (stdin EOF, exit codes, TTY size, no orphans), one-offs from a release."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.config import RackSettings
from shared.errors import BadRequest, Conflict, NotFound
from shared.manifest import Manifest, Service
from shared.models import ProcessRunOptions
from shared.provider import load_provider
from shared.provider.local import LocalProvider
from shared.provider.local.attached import AttachedRun
from shared.provider.local.images import image_name
from shared.provider.local.processes import LocalProcesses
from shared.stream import Terminal
from tests.conftest import RACK_NAME
from tests.streams import drain, joined


@pytest.fixture
async def provider(tmp_path: Path, docker_engine: str) -> AsyncIterator[LocalProvider]:
    opened = load_provider(RackSettings(data_dir=tmp_path, name=RACK_NAME))
    assert isinstance(opened, LocalProvider)
    async with opened:
        yield opened
        for app in await opened.apps.list():
            for _ in range(50):  # a one-off that just ended may be in the middle of its AutoRemove, or gone
                try:
                    await opened.apps.delete(app.name)
                    break
                except (Conflict, NotFound):
                    await asyncio.sleep(0.1)
        await opened.processes.close()


def processes_of(provider: LocalProvider) -> LocalProcesses:
    assert isinstance(provider.processes, LocalProcesses)
    return provider.processes


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if check and done.returncode:
        raise AssertionError(f"docker {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def container_processes(pid: str) -> str:
    """What `docker top` shows running in a container."""
    return docker("top", pid, "-o", "pid,args")


async def sleeper(provider: LocalProvider, app: str, service: str = "web", **options: object) -> str:
    process = await provider.processes.run(
        app, ProcessRunOptions(service=service, image="rack-test/busybox:1", command=["sleep", "3600"], **options)
    )
    return process.id


async def until(check: object, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check() if asyncio.iscoroutinefunction(check) else check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


# ---- ps ------------------------------------------------------------------------------------------------------


async def test_list_shows_every_process_with_fractions_and_filters(provider: LocalProvider, busybox_image: str) -> None:
    await provider.apps.create("listing")
    web = await sleeper(provider, "listing", release="RAAAAAAAAAA")
    worker = await sleeper(provider, "listing", service="worker", release="RBBBBBBBBBB")
    listed = await provider.processes.list("listing")
    assert [(p.id, p.name, p.release) for p in listed] == [
        (web, "web", "RAAAAAAAAAA"),
        (worker, "worker", "RBBBBBBBBBB"),
    ]
    for process in listed:
        assert process.app == "listing" and process.command == "sleep 3600" and process.started
        assert 0.0 <= process.cpu < 0.5
        assert 0.0 < process.memory < 0.01  # a sleeping busybox under the host's memory
    assert [p.id for p in await provider.processes.list("listing", service="worker")] == [worker]
    assert [p.id for p in await provider.processes.list("listing", release="RAAAAAAAAAA")] == [web]
    assert await provider.processes.list("listing", service="nope") == []
    plain = await provider.processes.list("listing", stats=False)
    assert {(p.cpu, p.memory) for p in plain} == {(0.0, 0.0)}


async def test_cpu_and_memory_are_computed_as_docker_stats_does(provider: LocalProvider, busybox_image: str) -> None:
    await provider.apps.create("busy")
    spinner_id = docker(
        "run", "-d", "--init", "--cpus", "0.25", "--label", f"convox.rack={RACK_NAME}", "--label", "convox.app=busy",
        "--label", "convox.type=spin", busybox_image, "sh", "-c", "while :; do :; done",
    ).strip()  # fmt: skip
    spinner = await provider.processes.get("busy", spinner_id[:12])  # a busy loop held to a quarter of a CPU
    hog = await provider.processes.run(
        "busy",
        ProcessRunOptions(
            service="hog",
            image=busybox_image,
            memory=64,
            command=["sh", "-c", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=30; sleep 3600"],
        ),
    )
    await asyncio.sleep(2)
    await provider.processes.list("busy")  # first sight: sampled now
    await asyncio.sleep(1.5)  # then kept sampled in the background
    ours = {p.id: p for p in await provider.processes.list("busy")}
    theirs = {}
    for line in docker(
        "stats", "--no-stream", "--format", "{{.ID}} {{.CPUPerc}} {{.MemPerc}}", spinner.id, hog.id
    ).splitlines():
        cid, cpu, mem = line.split()
        theirs[cid[:12]] = (float(cpu.rstrip("%")) / 100, float(mem.rstrip("%")) / 100)
    assert ours[spinner.id].cpu == pytest.approx(0.25, abs=0.1)
    assert ours[spinner.id].cpu == pytest.approx(theirs[spinner.id][0], abs=0.1)
    assert ours[hog.id].memory == pytest.approx(theirs[hog.id][1], rel=0.15)
    assert 0.2 < ours[hog.id].memory < 1.0  # 30 MB of its own 64 MB limit, not of the host's memory


async def test_listing_twenty_processes_does_not_wait_on_samples(provider: LocalProvider, busybox_image: str) -> None:
    await provider.apps.create("twenty")
    await asyncio.gather(*(sleeper(provider, "twenty") for _ in range(20)))
    started = time.perf_counter()
    first = await provider.processes.list("twenty")
    first_took = time.perf_counter() - started
    sampler = provider.processes.sampler
    fresh = [c for c in sampler.samples if sampler._fresh(c, time.monotonic())]
    assert len(fresh) == 20  # the next listing is answered from these, sampled in the background
    started = time.perf_counter()
    again = await provider.processes.list("twenty")
    again_took = time.perf_counter() - started
    assert len(first) == len(again) == 20
    assert first_took < 1.0  # one short sampling interval for all of them, not a second each
    assert again_took < 1.0  # no sampling interval waited (loose: the machine may be loaded)
    assert all(p.memory > 0 for p in again)


async def test_a_pid_is_found_only_through_its_own_app(provider: LocalProvider, busybox_image: str) -> None:
    await provider.apps.create("mine")
    await provider.apps.create("theirs")
    theirs = await sleeper(provider, "theirs")
    unlabelled = docker("run", "-d", "--rm", "--label", "test.cleanup=1", busybox_image, "sleep", "300").strip()
    other_rack = docker(
        "run", "-d", "--rm", "--label", "convox.rack=other-rack", "--label", "convox.app=mine", busybox_image,
        "sleep", "300",
    ).strip()  # fmt: skip
    try:
        for pid in (theirs, unlabelled[:12], other_rack[:12], "0123456789ab", "../../x", "mine", ""):
            with pytest.raises(NotFound):
                await provider.processes.get("mine", pid)
            with pytest.raises(NotFound):
                await provider.processes.exec("mine", pid, ["true"])
            with pytest.raises(NotFound):
                await provider.processes.stop("mine", pid)
        with pytest.raises(NotFound):
            await provider.processes.exec("convox", theirs, ["true"])  # the rack's own processes are not an app's
        assert (await provider.processes.get("theirs", theirs)).id == theirs
    finally:
        docker("rm", "-f", unlabelled, other_rack, check=False)


async def test_stop_ends_the_process_and_removes_it(provider: LocalProvider, busybox_image: str) -> None:
    await provider.apps.create("stopping")
    pid = await sleeper(provider, "stopping")
    started = time.monotonic()
    await provider.processes.stop("stopping", pid)
    assert time.monotonic() - started < 5  # SIGTERM reached sleep through the container's init
    assert await provider.processes.list("stopping") == []
    with pytest.raises(NotFound):
        await provider.processes.get("stopping", pid)


# ---- exec ----------------------------------------------------------------------------------------------------


async def test_exec_passes_stdin_eof_and_the_exit_code(provider: LocalProvider, busybox_image: str) -> None:
    await provider.apps.create("piping")
    pid = await sleeper(provider, "piping")
    stream = await provider.processes.exec("piping", pid, ["sh", "-c", "cat; echo oops >&2; exit 7"])
    try:
        await stream.start(Terminal())
        await stream.write(b"hello\n")
        await stream.write(b"world\n")
        await stream.close_stdin()
        messages = await drain(stream)
        assert await stream.wait() == 7
    finally:
        await stream.close()
    assert joined(messages, 1) == b"hello\nworld\n"
    assert joined(messages, 2) == b"oops\n"


async def test_exec_output_is_complete_and_in_large_messages(provider: LocalProvider, busybox_image: str) -> None:
    await provider.apps.create("bulk")
    pid = await sleeper(provider, "bulk")
    stream = await provider.processes.exec("bulk", pid, ["sh", "-c", "head -c 20000000 /dev/zero; echo end >&2"])
    try:
        await stream.start(Terminal())
        messages = await drain(stream)
        assert await stream.wait() == 0
    finally:
        await stream.close()
    assert len(joined(messages, 1)) == 20_000_000 and set(joined(messages, 1)) == {0}
    assert joined(messages, 2) == b"end\n"
    assert len(messages) < 2000  # coalesced from Docker's 32 KiB frames


async def test_exec_tty_has_its_size_at_start_and_follows_resizes(provider: LocalProvider, busybox_image: str) -> None:
    await provider.apps.create("sizing")
    pid = await sleeper(provider, "sizing")
    for attempt in range(5):  # the size must be right every time, not by luck of a race
        stream = await provider.processes.exec("sizing", pid, ["stty", "size"])
        try:
            await stream.start(Terminal(tty=True, width=100 + attempt, height=30))
            assert joined(await drain(stream), 1) == f"30 {100 + attempt}\r\n".encode()
            assert await stream.wait() == 0
        finally:
            await stream.close()
    stream = await provider.processes.exec("sizing", pid, ["sh", "-c", "read line; stty size; echo $line"])
    try:
        await stream.start(Terminal(tty=True, width=80, height=24))
        await stream.resize(132, 50)
        await stream.write(b"typed\r")
        output = joined(await drain(stream), 1)
    finally:
        await stream.close()
    assert output.endswith(b"50 132\r\ntyped\r\n")


async def test_a_closed_exec_stream_leaves_no_process(provider: LocalProvider, busybox_image: str) -> None:
    await provider.apps.create("orphans")
    pid = await sleeper(provider, "orphans")
    for tty in (False, True):
        marker = "4242" if tty else "4343"
        stream = await provider.processes.exec("orphans", pid, ["sh", "-c", f"sleep {marker} & sleep 1{marker}"])
        await stream.start(Terminal(tty=tty, width=80, height=24))
        await until(lambda m=marker: f"sleep 1{m}" in container_processes(pid))
        await stream.close()
        await until(
            lambda m=marker: (
                f"sleep {m}" not in container_processes(pid) and f"sleep 1{m}" not in container_processes(pid)
            )
        )


async def test_exec_needs_a_command_and_a_running_process(provider: LocalProvider, busybox_image: str) -> None:
    await provider.apps.create("stopped")
    pid = await sleeper(provider, "stopped")
    with pytest.raises(BadRequest):
        await provider.processes.exec("stopped", pid, [])
    exited = docker(
        "run", "-d", "--label", f"convox.rack={RACK_NAME}", "--label", "convox.app=stopped", busybox_image, "true"
    ).strip()  # fmt: skip
    docker("wait", exited)
    with pytest.raises(Conflict, match="not running"):
        await provider.processes.exec("stopped", exited[:12], ["true"])


# ---- one-off processes ---------------------------------------------------------------------------------------


async def test_an_interactive_run_streams_and_is_removed(provider: LocalProvider, busybox_image: str) -> None:
    await provider.apps.create("oneoff")
    options = ProcessRunOptions(
        service="web", image=busybox_image, command=["sh", "-c", "stty size; read x; echo got $x; exit 3"]
    )
    stream = await provider.processes.run_interactive("oneoff", options)
    try:
        await stream.start(Terminal(tty=True, width=90, height=20))
        listed = await provider.processes.list("oneoff")
        assert [(p.name, p.command) for p in listed] == [("web", "sh -c 'stty size; read x; echo got $x; exit 3'")]
        await stream.write(b"abc\r")
        output = joined(await drain(stream), 1)
        assert await stream.wait() == 3
    finally:
        await stream.close()
    assert output.startswith(b"20 90\r\n") and output.endswith(b"got abc\r\n")
    await until(lambda: not docker("ps", "-aq", "--filter", f"id={listed[0].id}").strip())

    options = ProcessRunOptions(service="web", image=busybox_image, command=["sh", "-c", "cat; exit 5"])
    stream = await provider.processes.run_interactive("oneoff", options)
    try:
        await stream.start(Terminal())
        await stream.write(b"piped\n")
        await stream.close_stdin()
        assert joined(await drain(stream), 1) == b"piped\n"
        assert await stream.wait() == 5
    finally:
        await stream.close()


async def test_an_interactive_run_closed_early_is_ended_and_removed(
    provider: LocalProvider, busybox_image: str
) -> None:
    await provider.apps.create("early")
    for tty in (False, True):
        options = ProcessRunOptions(service="web", image=busybox_image, command=["sleep", "3600"])
        stream = await provider.processes.run_interactive("early", options)
        await stream.start(Terminal(tty=tty, width=80, height=24))
        [process] = await provider.processes.list("early")
        await stream.close()
        await until(lambda p=process.id: not docker("ps", "-aq", "--filter", f"id={p}").strip())


async def test_a_detached_run_is_listed_while_it_runs_then_removed(provider: LocalProvider, busybox_image: str) -> None:
    await provider.apps.create("detached")
    process = await provider.processes.run(
        "detached", ProcessRunOptions(service="web", image=busybox_image, command=["sleep", "2"])
    )
    assert [p.id for p in await provider.processes.list("detached")] == [process.id]
    await until(lambda: not docker("ps", "-aq", "--filter", f"id={process.id}").strip(), within=15)


# ---- one-offs of a release -----------------------------------------------------------------------------------


async def release_with_build(provider: LocalProvider, app: str, busybox_image: str) -> tuple[str, str]:
    """A complete build of ``app`` (its web image tagged from busybox) and a promoted-looking release."""
    manifest = Manifest(
        environment=["GREETING=hello", "SHARED=manifest"],
        services={"web": Service(name="web", command="sleep 3600", environment=["LEVEL=1"], port=3000)},
    )
    build = "B" + "".join("QWERTYUIOP")
    now = datetime.now(UTC).isoformat()
    await provider.state.execute(
        "INSERT INTO builds (id, app, status, manifest, created, runner) VALUES (?, ?, 'complete', ?, ?, ?)",
        (build, app, manifest.model_dump_json(), now, provider.runner.hold()),
    )
    docker("tag", busybox_image, image_name(RACK_NAME, app, "web", build))
    release = await provider.releases.create(app, build=build, env={"SHARED": "app", "SECRET": "s3"})
    await provider.apps.set_status(app, "running", release=release.id)
    return build, release.id


async def test_a_run_uses_the_release_image_and_environment(provider: LocalProvider, busybox_image: str) -> None:
    await provider.apps.create("released")
    with pytest.raises(BadRequest, match="no release"):
        await provider.processes.run("released", ProcessRunOptions(service="web", command=["true"]))
    build, release = await release_with_build(provider, "released", busybox_image)
    try:
        options = ProcessRunOptions(service="web", command=["sh", "-c", "env | sort"], environment={"EXTRA": "x"})
        stream = await provider.processes.run_interactive("released", options)
        try:
            await stream.start(Terminal())
            env = joined(await drain(stream), 1).decode().splitlines()
            assert await stream.wait() == 0
        finally:
            await stream.close()
        for pair in ("GREETING=hello", "SHARED=app", "SECRET=s3", "LEVEL=1", "EXTRA=x", "PORT=3000"):
            assert pair in env
        process = await provider.processes.run("released", ProcessRunOptions(service="web", command=["sleep", "30"]))
        assert (process.release, process.image) == (release, image_name(RACK_NAME, "released", "web", build))
        await provider.processes.stop("released", process.id)
        with pytest.raises(BadRequest, match="no service named nope"):
            await provider.processes.run("released", ProcessRunOptions(service="nope", command=["true"]))
        with pytest.raises(NotFound, match="no such release"):
            await provider.processes.run("released", ProcessRunOptions(service="web", release="RNOPENOPENO"))
    finally:
        docker("rmi", image_name(RACK_NAME, "released", "web", build), check=False)


def test_the_contract_names_every_method_the_local_provider_serves() -> None:
    from shared.provider.contract import ProcessesAPI

    wanted = {"run", "run_interactive", "list", "get", "stop", "exec", "metrics"}
    assert wanted <= set(dir(ProcessesAPI))
    assert wanted <= set(dir(LocalProcesses))
    assert "adopt" not in dir(ProcessesAPI)  # what outlives a service is the workers' owner's


# ---- network sandboxes of one-offs ---------------------------------------------------------------------------


async def on_rack_network(provider: LocalProvider) -> LocalProcesses:
    """The provider's processes, with the rack's network made (as an app's first roll-out makes it)."""
    processes = processes_of(provider)
    await processes.docker.ensure_network(processes.network, {"convox.rack": RACK_NAME})
    return processes


async def run_output(provider: LocalProvider, app: str, script: str, image: str) -> tuple[str, str]:
    """Run ``script`` as an interactive one-off of ``app``; its output, and how its container was networked."""
    options = ProcessRunOptions(service="web", image=image, command=["sh", "-c", f"read go; {script}"])
    stream = await provider.processes.run_interactive(app, options)
    try:
        await stream.start(Terminal())
        assert isinstance(stream, AttachedRun)
        mode = docker("inspect", "--format", "{{.HostConfig.NetworkMode}}", stream.container_id).strip()
        await stream.write(b"go\n")
        output = joined(await drain(stream), 1).decode()
        assert await stream.wait() == 0, output
    finally:
        await stream.close()
    return output, mode


def address(output: str) -> str:
    return next(line.split()[1] for line in output.splitlines() if "inet " in line and "127.0.0.1" not in line)


async def test_a_run_joins_the_sandbox_the_first_one_left_on_the_rack_network(
    provider: LocalProvider, busybox_image: str
) -> None:
    processes = await on_rack_network(provider)
    await provider.apps.create("boxed")
    peer = docker(
        "run", "-d", "--network", processes.network, "--network-alias", "web.peer", "--label",
        f"convox.rack={RACK_NAME}", busybox_image, "sleep", "3600",
    ).strip()  # fmt: skip
    first, mode = await run_output(provider, "boxed", "ip addr", busybox_image)
    assert mode == processes.network and address(first)
    await until(lambda: processes.sandboxes.idle.get("boxed"))  # made once the first run has ended
    [(sandbox, _)] = processes.sandboxes.idle["boxed"]
    labels = docker("inspect", "--format", "{{json .Config.Labels}}", sandbox)
    assert '"convox.sandbox":"boxed"' in labels and "convox.app" not in labels

    second, mode = await run_output(provider, "boxed", "ip addr; nslookup web.peer", busybox_image)
    assert mode == f"container:{sandbox}"
    peer_address = docker("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", peer)
    assert address(second) and f"Address: {peer_address.strip()}" in second
    assert processes.sandboxes.idle["boxed"] == [(sandbox, processes.sandboxes.idle["boxed"][0][1])]  # given back
    assert await provider.processes.list("boxed") == []  # a sandbox is no process of the app
    docker("rm", "-f", peer)


async def test_concurrent_runs_never_share_a_sandbox(provider: LocalProvider, busybox_image: str) -> None:
    processes = await on_rack_network(provider)
    await provider.apps.create("crowd")
    await run_output(provider, "crowd", "true", busybox_image)
    await until(lambda: processes.sandboxes.idle.get("crowd"))
    outputs = await asyncio.gather(*(run_output(provider, "crowd", "ip addr", busybox_image) for _ in range(3)))
    modes = [mode for _, mode in outputs]
    assert sum(mode.startswith("container:") for mode in modes) == 1 and modes.count(processes.network) == 2
    assert len({address(output) for output, _ in outputs}) == 3  # an address, ports and localhost each
    await until(lambda: len(processes.sandboxes.idle.get("crowd", [])) == 1)
    await asyncio.sleep(0.5)
    assert len(docker("ps", "-aq", "--filter", "label=convox.sandbox=crowd").split()) == 1  # extras removed


async def test_a_vanished_sandbox_leaves_the_run_on_the_network_itself(
    provider: LocalProvider, busybox_image: str
) -> None:
    processes = await on_rack_network(provider)
    await provider.apps.create("vanish")
    await run_output(provider, "vanish", "true", busybox_image)
    await until(lambda: processes.sandboxes.idle.get("vanish"))
    [(sandbox, _)] = processes.sandboxes.idle["vanish"]
    docker("rm", "-f", sandbox)
    output, mode = await run_output(provider, "vanish", "ip addr", busybox_image)
    assert mode == processes.network and address(output)
    await until(lambda: processes.sandboxes.idle.get("vanish") and processes.sandboxes.idle["vanish"][0][0] != sandbox)


async def test_a_sweep_removes_sandboxes_idle_too_long(
    provider: LocalProvider, busybox_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    processes = await on_rack_network(provider)
    await provider.apps.create("idler")
    await run_output(provider, "idler", "true", busybox_image)
    await until(lambda: processes.sandboxes.idle.get("idler"))
    [(sandbox, _)] = processes.sandboxes.idle["idler"]
    monkeypatch.setattr("shared.provider.local.sandboxes.IDLE_SECONDS", 0.0)
    await processes.sweep()
    assert not processes.sandboxes.idle["idler"]  # not taken back by the same sweep that expired it
    await asyncio.gather(*processes.sandboxes.tasks)
    assert not docker("ps", "-aq", "--filter", f"id={sandbox}").strip()
