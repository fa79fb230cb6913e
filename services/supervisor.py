"""`convox rack start`: the gateway and the five services as separate OS processes, supervised (forked by
:mod:`services.forkserver`, see :mod:`services.forkpool`).

Each child is named by its command line (``python -m services.apps --socket ...``), gets the per-start
secret through its environment (never its command line), has its output prefixed with its name and kept
in the rack's log, and is restarted within two seconds when it dies. SIGINT or SIGTERM stops them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import queue
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import httpx

from services.forkpool import ForkedProcess, ForkPool, ForkServerError
from shared.logfmt import format_line
from shared.tls import pinned_context
from shared.topology import INTERNAL_HEADER, SERVICES

RESTART_DELAYS = (0.1, 0.5, 1.0, 1.5)
"""Back-off between restarts of a service that keeps dying; never past the 2 s promise."""
STABLE_AFTER = 10.0
LOG_MAX_BYTES = 32 << 20
"""The rack's own log is kept to two files of about this size: rack.log and rack.log.1."""
MAX_LINE = 16 << 10
"""A child's output line longer than this is cut (the rest of it dropped), never fatal to its reader."""
PASSWORD_MIN_LENGTH = 16


class StartError(Exception):
    """The rack cannot start (a bad password, a data dir in use): said once, clearly, before anything runs."""


class DiedAtStart(RuntimeError):
    """A service exited before it answered (the watcher's turn, or the start's one more try, starts it)."""


READY_SECONDS = 90.0
"""How long a service may take to answer at start (six Python processes importing at once on a busy
machine take tens of seconds)."""


def preloaded(provider: str) -> list[str]:
    """What the fork server imports before it forks the services: what they all import, the provider the
    rack runs on (only that one: an aws rack's libraries stay out of a local rack), and the services'
    own packages (each is imported by one service only, but forked, its pages count once anyway)."""
    modules = ["shared.serve", "shared.service"]
    if provider in ("local", "aws"):
        modules.append(f"shared.provider.{provider}")
    return [*modules, *(f"services.{name}" for name in SERVICES), "services.gateway"]


def check_password(password: str, origin: str) -> str:
    if not password.strip():
        raise StartError(f"the rack password ({origin}) is empty")
    if len(password) < PASSWORD_MIN_LENGTH:
        raise StartError(
            f"the rack password ({origin}) is too short: {len(password)} characters, at least "
            f"{PASSWORD_MIN_LENGTH} are needed"
        )
    if password != password.strip() or "\n" in password:
        raise StartError(f"the rack password ({origin}) has leading or trailing blanks or a line break")
    return password


def write_private_atomic(path: Path, text: str) -> None:
    """``text`` in ``path`` mode 0600, all or nothing: a temp file, fsync, rename, fsync of the directory."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def ensure_password(data_dir: Path, from_env: str | None) -> tuple[str, bool]:
    """The rack password: stored at first start (``CONVOX_PASSWORD`` or generated), mode 0600.
    Returns the password and whether it was generated now (and so must be shown once). An empty, blank or
    short password (given or stored) is :class:`StartError`."""
    path = data_dir / "password"
    if path.exists():
        return check_password(path.read_text().rstrip("\n"), f"stored in {path}"), False
    if from_env is not None:
        check_password(from_env, "CONVOX_PASSWORD")
    password = from_env or secrets.token_urlsafe(24)
    write_private_atomic(path, password + "\n")
    return password, not from_env


def open_private_log(path: Path) -> TextIO:
    """``path`` opened to append, readable by this user only (0600, also when it was there before)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


class DataDirLock:
    """An exclusive ``flock`` on ``<data dir>/rack.lock`` for the life of one `rack start`: a second start on
    the same data dir is refused at once, before it touches the first one's sockets or files."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "rack.lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StartError(
                f"the data dir {self.path.parent} is in use by another rack"
                + (f" (pid {holder})" if holder else "")
                + ": stop it first or give another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    @classmethod
    def adopt(cls, data_dir: Path, fd: int) -> DataDirLock:
        """The lock a process held before it exec'd this one (the same open file, so the same flock)."""
        lock = cls(data_dir)
        os.set_inheritable(fd, False)
        lock.fd = fd
        return lock

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def rack_socket(data_dir: Path) -> Path:
    """The gateway's unix socket, for the CLI on this machine (``unix://`` + this): plain HTTP, mode 0600."""
    return data_dir / "rack.sock"


def rack_url(host: str, port: int, *, tls: bool) -> str:
    return f"{'https' if tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}"


@dataclass
class Child:
    name: str
    argv: list[str]
    socket: Path | None
    process: ForkedProcess | None = None
    started: float = 0.0
    restarts: int = 0
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        data_dir: Path,
        host: str,
        port: int,
        rack: str = "convox",
        log_max_bytes: int = LOG_MAX_BYTES,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.run_dir = data_dir / "run"
        self.log_path = data_dir / "logs" / "rack.log"
        self.log_max_bytes = log_max_bytes
        self.host = host
        self.port = port
        self.rack = rack
        self.secret = secrets.token_hex(32)
        self.stopping = asyncio.Event()
        self._writing = asyncio.Lock()
        self.tls = tls
        self.lines: asyncio.Queue[str | None] = asyncio.Queue(maxsize=10_000)
        self.console: queue.Queue[str] = queue.Queue(maxsize=10_000)
        self.console_dropped = 0
        self.stdout: TextIO = sys.stdout
        threading.Thread(target=self._print_console, name="console", daemon=True).start()
        python = sys.executable
        common = ["--data-dir", str(data_dir)]
        self.children = [
            Child(
                name,
                [python, "-m", f"services.{name}", "--socket", str(self.run_dir / f"{name}.sock"), *common],
                self.run_dir / f"{name}.sock",
            )
            for name in SERVICES
        ]
        gateway = [python, "-m", "services.gateway", "--host", host, "--port", str(port), *common]
        gateway += ["--socket", str(rack_socket(data_dir))]
        if tls is not None:
            gateway += ["--certfile", str(tls[0]), "--keyfile", str(tls[1])]
        self.children.append(Child("gateway", gateway, None))
        self.pool = ForkPool(
            preloaded(os.environ.get("RACK_PROVIDER", "local")),
            self.environment,
            lambda line: self.emit("forkserver", line[:MAX_LINE].decode("utf-8", "backslashreplace")),
            str(data_dir),
        )

    @property
    def url(self) -> str:
        return rack_url(self.host, self.port, tls=self.tls is not None)

    def _print_console(self) -> None:
        """The supervisor's stdout, written by a thread of its own: a stdout nobody reads (a full pipe, a
        stopped terminal) blocks this thread only, never the rack; lines past the queue are dropped."""
        while True:
            text = self.console.get()
            with contextlib.suppress(OSError, ValueError):
                self.stdout.write(text)
                self.stdout.flush()
            self.console.task_done()

    async def drain_console(self, within: float = 2.0) -> None:
        deadline = time.monotonic() + within
        while self.console.unfinished_tasks and time.monotonic() < deadline:  # noqa: ASYNC110 - a thread's queue
            await asyncio.sleep(0.01)

    def emit(self, source: str, line: str) -> None:
        """A line of the rack's log: ``source: line``, to stdout and to the log file; neither ever blocks."""
        text = f"{source}: {line}"
        try:
            self.console.put_nowait(text + "\n")
        except queue.Full:
            self.console_dropped += 1
        with contextlib.suppress(asyncio.QueueFull):
            self.lines.put_nowait(f"{datetime.now(UTC).isoformat()} {text}\n")

    def note(self, at: str, **fields: object) -> None:
        self.emit("supervisor", format_line(ns="supervisor", at=at, **fields))

    async def write_log(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle: TextIO = await asyncio.to_thread(open_private_log, self.log_path)
        try:
            done = False
            while not done:
                batch = [await self.lines.get()]
                while not self.lines.empty():
                    batch.append(self.lines.get_nowait())
                done = None in batch
                handle = await asyncio.to_thread(self._write, handle, "".join(line for line in batch if line))
        finally:
            await asyncio.to_thread(handle.close)

    def _write(self, handle: TextIO, text: str) -> TextIO:
        """Append ``text``; past ``log_max_bytes`` the log becomes ``rack.log.1`` and a new one starts."""
        handle.write(text)
        handle.flush()
        if handle.tell() < self.log_max_bytes:
            return handle
        handle.close()
        os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        return open_private_log(self.log_path)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("CONVOX_PASSWORD", None)
        env.update(
            RACK_BALANCER_HOST=self.host,
            RACK_INTERNAL_SECRET=self.secret,
            RACK_DATA_DIR=str(self.data_dir),
            RACK_NAME=self.rack,
            PYTHONUNBUFFERED="1",
        )
        return env

    async def spawn(self, child: Child) -> None:
        """Start ``child`` as a fork of the fork server (:mod:`services.forkserver`); RuntimeError if it
        cannot be (the watcher tries again)."""
        try:
            child.process = await self.pool.spawn(child.argv, self.environment())
        except (ForkServerError, OSError) as exc:
            raise RuntimeError(f"{child.name} could not be started: {exc}") from None
        child.started = time.time()
        child.pumps = [asyncio.create_task(self.pump(child, child.process.stdout))]
        self.note("start", service=child.name, pid=child.process.pid)
        await self.write_processes()

    async def pump(self, child: Child, stdout: asyncio.StreamReader) -> None:
        """The child's output, line by line, into the rack's log. A line over :data:`MAX_LINE` is cut (the
        rest dropped up to its newline) so that no line, however long, stops the reading: a child whose
        output is not read blocks on its own log."""
        buffer = b""
        cutting = False
        while chunk := await stdout.read(1 << 16):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if cutting:
                    cutting = False
                    continue
                self._emit_output(child, line, cut=len(line) > MAX_LINE)
            if len(buffer) > MAX_LINE:
                if not cutting:
                    self._emit_output(child, buffer, cut=True)
                cutting = True
                buffer = b""
        if buffer and not cutting:
            self._emit_output(child, buffer, cut=False)

    def _emit_output(self, child: Child, line: bytes, cut: bool) -> None:
        text = line[:MAX_LINE].decode("utf-8", "backslashreplace")
        self.emit(child.name, text + (f" [line cut at {MAX_LINE} bytes]" if cut else ""))

    async def write_processes(self) -> None:
        """``run/processes.json``: what `convox ps --app convox` lists."""
        entries = [
            {"name": c.name, "pid": c.process.pid, "started": c.started, "command": " ".join(c.argv[1:])}
            for c in self.children
            if c.process is not None and c.process.returncode is None
        ]
        entries.insert(
            0, {"name": "supervisor", "pid": os.getpid(), "started": self.began, "command": "convox rack start"}
        )
        path = self.run_dir / "processes.json"
        async with self._writing:  # several services may die at once (the fork server did): one at a time
            await asyncio.to_thread(self._replace, path, json.dumps(entries))

    @staticmethod
    def _replace(path: Path, text: str) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)

    async def ready(self, child: Child, within: float = READY_SECONDS) -> None:
        """Wait until the child answers ``GET /check``."""
        if child.socket is not None:
            transport = httpx.AsyncHTTPTransport(uds=str(child.socket), verify=False)  # plain HTTP: no CA bundle
            base = f"http://{child.name}"
        else:
            verify = pinned_context(self.tls[0]) if self.tls else True
            transport = httpx.AsyncHTTPTransport(verify=verify)
            base = self.url
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(transport=transport, base_url=base, timeout=2.0) as client:
            while True:
                with contextlib.suppress(httpx.TransportError, OSError):
                    response = await client.get("/check", headers={INTERNAL_HEADER: self.secret})
                    if response.status_code == 200:
                        return
                if child.process is not None and child.process.returncode is not None:
                    raise DiedAtStart(f"{child.name} exited with code {child.process.returncode} at start")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{child.name} did not answer within {within:.0f}s")
                await asyncio.sleep(0.05)

    async def spawned(self, child: Child) -> None:
        """:meth:`spawn` at the rack's start, tried once more when the fork server went away under it."""
        try:
            await self.spawn(child)
        except RuntimeError as exc:
            self.note("retry", service=child.name, message=str(exc))
            await self.spawn(child)

    async def started(self, child: Child) -> None:
        """Wait until the spawned ``child`` answers; one that dies at start (as every service does when the
        fork server dies under it) is started once more before the rack's start fails."""
        try:
            await self.ready(child)
        except DiedAtStart as exc:
            self.note("retry", service=child.name, message=str(exc))
            await asyncio.gather(*child.pumps, return_exceptions=True)
            await self.spawned(child)
            await self.ready(child)

    async def watch(self, child: Child) -> None:
        """Restart ``child`` whenever it dies, until the rack stops."""
        while not self.stopping.is_set():
            assert child.process is not None
            code = await child.process.wait()
            died = time.monotonic()
            await asyncio.gather(*child.pumps, return_exceptions=True)
            if self.stopping.is_set():
                return
            if time.time() - child.started > STABLE_AFTER:
                child.restarts = 0
            delay = RESTART_DELAYS[min(child.restarts, len(RESTART_DELAYS) - 1)]
            child.restarts += 1
            self.note("exit", service=child.name, code=code, restart_in=delay)
            await self.write_processes()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
                return
            try:
                await self.spawn(child)
            except RuntimeError as exc:  # the fork server could not start it: the next turn tries again
                self.note("failed", service=child.name, message=str(exc))
                continue
            self.note("restart", service=child.name, pid=child.process.pid, attempt=child.restarts)
            with contextlib.suppress(RuntimeError):  # it died again at start: the next turn restarts it
                await self.ready(child)
                self.note("ready", service=child.name, pid=child.process.pid, seconds=f"{time.monotonic() - died:.2f}")

    async def stop_children(self) -> None:
        running = [c for c in self.children if c.process is not None and c.process.returncode is None]
        for child in reversed(running):  # the gateway first
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for child in running:
            assert child.process is not None
            try:
                await asyncio.wait_for(child.process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.process.wait()
            self.note("stopped", service=child.name, code=child.process.returncode)

    async def run(self, on_ready: object = None) -> int:
        self.began = time.time()
        os.umask(0o077)  # what the rack and its services write is its user's alone (inherited by the services)
        for directory in (self.data_dir, self.run_dir, self.log_path.parent):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(directory, 0o700)  # also when it was there before, made by hand or by an older rack
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        writer = asyncio.create_task(self.write_log())
        watchers: list[asyncio.Task[None]] = []
        code = 0
        try:
            for child in self.children[:-1]:
                await self.spawned(child)
            await asyncio.gather(*(self.started(c) for c in self.children[:-1]))
            gateway = self.children[-1]
            await self.spawned(gateway)
            await self.started(gateway)
            watchers = [asyncio.create_task(self.watch(c)) for c in self.children]
            self.note("ready", url=self.url)
            if callable(on_ready):
                on_ready()
            await self.stopping.wait()
        except RuntimeError as exc:
            self.note("failed", message=str(exc))
            code = 1
        finally:
            self.stopping.set()
            for task in watchers:
                task.cancel()
            await self.stop_children()
            await self.pool.close()
            with contextlib.suppress(FileNotFoundError):
                (self.run_dir / "processes.json").unlink()
            await self.lines.put(None)  # the writer's last batch
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(writer), 5)
            writer.cancel()
            await asyncio.gather(writer, *watchers, return_exceptions=True)
            await self.drain_console()
        return code


def exec_supervisor(
    data_dir: Path,
    host: str,
    port: int,
    rack: str,
    tls: tuple[Path, Path] | None,
    lock: DataDirLock,
    banner: str,
    remove: list[Path] | None = None,
) -> None:
    """Replace this process (`convox rack start`, which has imported the CLI, typer, rich and cryptography:
    about 63 MiB) with ``python -m services.supervisor`` (about 26 MiB): same pid, same environment, the
    data dir's lock handed over as an open file, the banner to print once ready through a pipe (it may hold
    a generated password, which must never be on a command line). ``remove``: files the rack removes when it
    stops (the AWS credentials file of a rack started from a .csv)."""
    assert lock.fd is not None
    read, write = os.pipe()
    os.write(write, banner.encode())  # a pipe holds 64 KiB; a banner is a few lines
    os.close(write)
    os.set_inheritable(read, True)
    os.set_inheritable(lock.fd, True)
    argv = [
        sys.executable,
        "-m",
        "services.supervisor",
        "--data-dir",
        str(data_dir),
        "--host",
        host,
        "--port",
        str(port),
        "--rack",
        rack,
        "--lock-fd",
        str(lock.fd),
        "--banner-fd",
        str(read),
    ]
    if tls is not None:
        argv += ["--certfile", str(tls[0]), "--keyfile", str(tls[1])]
    for path in remove or []:
        argv += ["--remove-at-exit", str(path)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def main(argv: list[str] | None = None) -> int:
    """``python -m services.supervisor``: what `convox rack start` becomes once it has checked the password
    and the certificate and locked the data dir (see :func:`exec_supervisor`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m services.supervisor")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rack", required=True)
    parser.add_argument("--certfile", type=Path)
    parser.add_argument("--keyfile", type=Path)
    parser.add_argument("--lock-fd", type=int, required=True, help="the data dir's lock, held open")
    parser.add_argument("--banner-fd", type=int, required=True, help="a pipe with what to print once ready")
    parser.add_argument("--remove-at-exit", type=Path, action="append", default=[], help="a file to remove at exit")
    args = parser.parse_args(argv)
    lock = DataDirLock.adopt(args.data_dir, args.lock_fd)
    with os.fdopen(args.banner_fd, "rb") as pipe:
        banner = pipe.read().decode()
    tls = (args.certfile, args.keyfile) if args.certfile and args.keyfile else None
    supervisor = Supervisor(args.data_dir, args.host, args.port, rack=args.rack, tls=tls)

    def ready() -> None:
        print(banner, file=sys.stderr, flush=True)

    try:
        code = asyncio.run(supervisor.run(on_ready=ready))
    finally:
        for path in args.remove_at_exit:
            path.unlink(missing_ok=True)
        lock.release()
    if code:
        print("ERROR: the rack failed to start (see the lines above)", file=sys.stderr, flush=True)
    return 1 if code else 0


if __name__ == "__main__":
    sys.exit(main())
