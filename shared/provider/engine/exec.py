"""Processes attached to streams on the Docker Engine: ``exec`` in a running container, and interactive one-off
containers (``attach``), over raw hijacked connections.

aiodocker's exec stream cannot half-close, so these speak the engine's upgrade themselves: ``POST
/exec/{id}/start`` (or ``/containers/{id}/attach``) with ``Connection: Upgrade``, then the socket is the
process's stdio. stdin EOF is a shutdown of the socket's write side while its read side goes on; output is
demultiplexed from Docker's 8-byte frames (no TTY) and handed out as views into the receive buffer.

A TTY's size is right when the process starts: Docker applies ``ConsoleSize`` only from API 1.42 and a resize
after start races with the process, so the command is started through ``sh -c 'stty rows H cols W; exec
"$@"'`` when the container has ``/bin/sh`` (and resized after start as well, for those that have not).

A stream that is closed while its process runs ends the process: a hangup for a TTY (SIGHUP to the
terminal's foreground process group and the session leader, as a closed terminal does), a kill of the whole
process tree otherwise, so nothing is left behind (:mod:`shared.provider.engine.ending`).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import secrets
import shlex
import socket
from collections.abc import AsyncIterator
from typing import Any, Protocol

from shared.errors import RackError, Unavailable
from shared.logfmt import Logger
from shared.provider.engine.docker import Engine, ExecInfo
from shared.provider.engine.ending import MARK, SHELL, end_process
from shared.provider.engine.receiver import Receiver, request
from shared.stream import Channel, Stdio, Terminal

log = Logger("processes")

BULK = 16 << 10
"""Output messages larger than this mean a bulk transfer: the next one waits a moment to grow."""
BATCH = 512 << 10
BATCH_WAIT = 0.002
"""In a bulk transfer, a message waits up to this long to reach BATCH bytes."""
HANGUP_GRACE = 2.0
"""Seconds a hung-up TTY process gets to exit before its process tree is killed."""
SIZED = 'stty rows "$1" cols "$2" 2>/dev/null; shift 2; exec "$@"'
"""The shell prelude that sets a TTY's size before the command starts (the command replaces the shell)."""


def sized(argv: list[str], terminal: Terminal) -> list[str]:
    """``argv`` started through the prelude that applies the terminal's size first."""
    width, height = terminal.size or (80, 24)
    return [SHELL, "-c", SIZED, "sh", str(height), str(width), *argv]


RUNTIME_INIT = "runc init"
"""What an exec'd process shows before it becomes its command: the runtime's (runc's) init."""


def _before_exec(shown: str | bytes) -> bool:
    """Whether a command line (``/proc``'s, NUL-separated, or ``top``'s) is of a process that has not become
    its command yet: the runtime's init, or nothing (a process in the middle of its exec shows none; ``ps``
    shows its name in brackets then)."""
    text = (shown.decode(errors="replace").replace("\0", " ") if isinstance(shown, bytes) else shown).strip()
    return text in ("", RUNTIME_INIT) or (text.startswith("[") and text.endswith("]"))


def _cmdline(pid: int) -> bytes | None:
    """A host process's command line (the engine's pids are the host's), None once it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return None


class Hijacked:
    """A connection the engine upgraded to the raw stdio of a process."""

    def __init__(self, transport: asyncio.Transport, receiver: Receiver, tty: bool) -> None:
        self.transport = transport
        self.receiver = receiver
        self.tty = tty
        self.write_closed = False

    @classmethod
    async def open(cls, engine: Engine, path: str, body: dict[str, Any] | None, tty: bool, what: str) -> Hijacked:
        data = json.dumps(body).encode() if body is not None else b""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
        )
        transport, receiver = await request(engine, head.encode() + data, what, Receiver)
        return cls(transport, receiver, tty)

    async def _filled(self, bulk: bool) -> bool:
        """Wait for output; in a bulk transfer let more arrive first, up to BATCH bytes or BATCH_WAIT seconds
        (fewer, larger messages cost less at every hop; interactive output is never held back)."""
        r = self.receiver
        while r.end == r.start:
            if not await r.more():
                return False
        if bulk and r.end - r.start < BATCH:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + BATCH_WAIT
            timer = loop.call_at(deadline, r._wake)
            try:
                while r.end - r.start < BATCH and not r.eof and not r.paused and loop.time() < deadline:
                    await r.more()
            finally:
                timer.cancel()
        return True

    async def chunks(self) -> AsyncIterator[tuple[Channel, bytes | memoryview]]:
        """What the process writes, as ``(channel, data)`` until it ends (see :meth:`ProcessStream.output`):
        a TTY's output is a view into the receive buffer; without a TTY, a frame's payload is one too, and a
        run of frames of one channel is joined into one chunk (the engine's frames are 32 KiB at most)."""
        r = self.receiver
        bulk = False
        while await self._filled(bulk):
            buf = r.buf
            if self.tty:
                size = r.end - r.start
                yield Channel.STDOUT, memoryview(buf)[r.start : r.end]
                r.consumed(r.start + size)
                bulk = size > BULK
                continue
            pos, end = r.start, r.end
            view = memoryview(buf)
            out: list[tuple[Channel, bytes | memoryview]] = []
            group: list[memoryview] = []
            current = Channel.STDOUT
            while end - pos >= 8:
                stop = pos + 8 + int.from_bytes(buf[pos + 4 : pos + 8], "big")
                if stop > end:
                    break
                channel = Channel.STDERR if buf[pos] in (2, 3) else Channel.STDOUT
                if channel != current and group:
                    out.append((current, group[0] if len(group) == 1 else b"".join(group)))
                    group = []
                current = channel
                group.append(view[pos + 8 : stop])
                pos = stop
            if group:
                out.append((current, group[0] if len(group) == 1 else b"".join(group)))
            del group
            bulk = sum(len(data) for _, data in out) > BULK
            whole = bool(out)
            for chunk in out:
                yield chunk
            del out
            view.release()
            r.consumed(pos)
            if not whole and not await r.more():  # only part of a frame so far: wait for the rest
                return

    async def write(self, data: bytes | memoryview) -> None:
        if self.write_closed or self.transport.is_closing():
            return
        self.transport.write(data)
        writable = self.receiver.writable
        if writable is not None:
            await writable

    def close_write(self) -> None:
        """stdin EOF: shut the socket's write side down; its read side goes on."""
        if self.write_closed:
            return
        self.write_closed = True
        if not self.transport.is_closing() and self.transport.can_write_eof():
            with contextlib.suppress(OSError):
                self.transport.write_eof()

    def detach(self) -> Stdio | None:
        """The connection's socket itself, the caller's from now on, with what was read of it and not handed
        out yet; this side closes its own descriptor and reads nothing more. None over TLS (the socket
        carries the session's records, not the stream)."""
        sock = self.transport.get_extra_info("socket")
        if sock is None or self.transport.get_extra_info("ssl_object") is not None or self.transport.is_closing():
            return None
        self.transport.pause_reading()
        taken = socket.socket(fileno=os.dup(sock.fileno()))
        taken.setblocking(True)
        r = self.receiver
        pending = bytes(r.buf[r.start : r.end])
        r.start = r.end = 1
        self.transport.abort()  # closes this process's descriptor of it, nothing more (no shutdown)
        return Stdio(taken, pending)

    async def close(self) -> None:
        self.transport.close()


async def has_shell(docker: Engine, container_id: str) -> bool:
    """Whether the container has ``/bin/sh``."""
    return await docker.has_path(container_id, SHELL)


# ---- exec ----------------------------------------------------------------------------------------------------


class _Attached(abc.ABC):
    """What an exec and an attached run share: a hijacked connection carrying the process's streams."""

    docker: Engine
    terminal: Terminal
    conn: Hijacked | None
    closed: bool
    ended = False
    """Whether the process is known to have ended as its stream closed (not while the engine did not answer)."""

    @property
    @abc.abstractmethod
    def _what(self) -> str:
        """How errors name this process."""

    @abc.abstractmethod
    def _resize_path(self) -> str | None:
        """The engine's resize endpoint for this process, once it exists."""

    @abc.abstractmethod
    async def _end(self) -> None:
        """End the process if it still runs (the client went away)."""

    async def _release(self) -> None:  # noqa: B027 - nothing more by default
        """What else this kind of process holds once its stream is closed."""

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.ended = await self._end_once_more_if_unanswered()
        finally:
            if self.conn is not None:
                await self.conn.close()
            await self._release()

    async def _end_once_more_if_unanswered(self) -> bool:
        """:meth:`_end`, asked again once when the engine did not answer (a pooled connection it had just
        closed fails at once): a process left running would be an orphan. Other errors mean it is gone.
        Whether it is known to have ended."""
        for attempt in (1, 2):
            try:
                await self._end()
                return True
            except Unavailable as error:
                log.error("process.end", process=self._what, attempt=attempt, error=str(error))
            except RackError:
                return True
        return False

    def output(self) -> AsyncIterator[tuple[Channel, bytes | memoryview]]:
        if self.conn is None:
            raise RuntimeError("the process has not started")
        return self.conn.chunks()

    async def write(self, data: bytes | memoryview) -> None:
        if self.conn is not None:
            await self.conn.write(data)

    async def close_stdin(self) -> None:
        if self.conn is not None:
            self.conn.close_write()

    def take_stdio(self) -> Stdio | None:
        if self.conn is None:
            return None
        return self.conn.detach()

    async def resize(self, width: int, height: int) -> None:
        path = self._resize_path()
        if not self.terminal.tty or path is None:
            return
        with contextlib.suppress(RackError):
            await self.docker.resize(path, width, height, self._what)


class ExecWatch(Protocol):
    """Who keeps a record of the execs a process holds, so that one whose holder died (``kill -9`` included:
    its stream and its ending go with it) is ended by someone else (the local provider's
    :class:`~shared.provider.local.exec_records.ExecRecords`)."""

    async def started(self, exec_id: str, container_id: str, mark: str, user: str) -> None:
        """The exec is made and about to start (a failure here leaves it made, never started); ``mark`` and
        ``user``: how its processes are found and ended on a remote engine (:func:`end_process`)."""

    async def ended(self, exec_id: str) -> None:
        """The exec's stream is closed, and the exec ended with it."""


class ExecStream(_Attached):
    """``docker exec`` of ``command`` in a running container, attached to a stream; ``env`` is added to the
    container's environment for this process only, ``user`` (a name or uid) runs it as someone else than the
    container's own user; ``watch``: who is told of its start and end (:class:`ExecWatch`)."""

    def __init__(
        self,
        docker: Engine,
        container_id: str,
        command: list[str],
        env: dict[str, str] | None = None,
        user: str = "",
        watch: ExecWatch | None = None,
    ) -> None:
        self.docker = docker
        self.watch = watch
        self.container_id = container_id
        self.command = command
        self.env = env or {}
        self.user = user
        self.mark = "" if docker.local else secrets.token_hex(8)
        """How this exec's processes are found on a remote engine (:data:`MARK`); none on this host's."""
        self.terminal = Terminal()
        self.exec_id = ""
        self.conn: Hijacked | None = None
        self.exit_code: int | None = None
        self.closed = False

    @property
    def _what(self) -> str:
        return f"process {self.container_id[:12]}"

    async def start(self, terminal: Terminal) -> None:
        self.terminal = terminal
        argv = self.command
        wrapped = terminal.tty and await has_shell(self.docker, self.container_id)
        if wrapped:
            argv = sized(argv, terminal)
        body = {
            "AttachStdin": True,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": terminal.tty,
            "Cmd": argv,
        }
        env = {**self.env, MARK: self.mark} if self.mark else self.env
        if env:
            body["Env"] = [f"{key}={value}" for key, value in sorted(env.items())]
        if self.user:
            body["User"] = self.user
        self.exec_id = await self.docker.exec_create(self.container_id, body, self._what)
        if self.watch is not None:
            await self.watch.started(self.exec_id, self.container_id, self.mark, self.user)
        self.conn = await Hijacked.open(
            self.docker,
            f"/exec/{self.exec_id}/start",
            {"Detach": False, "Tty": terminal.tty},
            terminal.tty,
            self._what,
        )
        if wrapped:
            await self._prelude_done()
        elif terminal.tty and terminal.size:
            await self.resize(*terminal.size)

    async def _prelude_done(self, within: float = 2.0) -> None:
        """Wait until the size prelude has run (its shell has become the command), so that no resize sent
        after the start can be undone by the prelude's own `stty`. The process's command line is read from this
        host's /proc, or for a remote engine from the engine's ``top``. Before the prelude's shell, the process
        shows the runtime's init or, in the middle of its exec, nothing: no answer yet (:func:`_before_exec`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        pid = 0
        while loop.time() < deadline:
            if not pid:
                info = await self.inspect()
                pid = int(info.get("Pid") or 0)
                if not pid and not info.get("Running", True) and info.get("ExitCode") is not None:
                    return  # it has ended already (a process not started yet has no exit code either)
            if pid and self.mark:
                line = await self.docker.command_line(self.container_id, pid)
                if line is None or ("stty rows" not in line and not _before_exec(line)):
                    return
            elif pid:
                cmdline = await asyncio.to_thread(_cmdline, pid)
                if cmdline is None or (SIZED.encode() not in cmdline and not _before_exec(cmdline)):
                    return
            await asyncio.sleep(0.002)

    def _resize_path(self) -> str | None:
        return f"exec/{self.exec_id}/resize" if self.exec_id else None

    async def _release(self) -> None:
        if self.watch is not None and self.exec_id and self.ended:  # else its record stays, for the reaper
            await self.watch.ended(self.exec_id)

    async def inspect(self) -> ExecInfo:
        return await self.docker.exec_inspect(self.exec_id, self._what)

    async def wait(self) -> int:
        """The exit code, once the engine has it (it may lag the end of the output by a moment)."""
        delay = 0.002
        while True:
            info = await self.inspect()
            code = info.get("ExitCode")
            if not info.get("Running") and code is not None:
                self.exit_code = code
                return code
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def _end(self) -> None:
        if not self.exec_id or self.exit_code is not None:
            return
        info = await self.inspect()
        if not info.get("Running") or not info.get("Pid"):
            return
        pid = int(info["Pid"])
        if self.terminal.tty:
            await end_process(self.docker, self.container_id, pid, True, self.mark, self.user)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait(), HANGUP_GRACE)
                return
        await end_process(self.docker, self.container_id, pid, False, self.mark, self.user)
        log.log("exec.kill", id=self.container_id[:12], exec=self.exec_id[:12], tty=self.terminal.tty)


def display(argv: list[str]) -> str:
    """A command as ``convox ps`` shows it."""
    return shlex.join(argv)
