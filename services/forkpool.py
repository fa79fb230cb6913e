"""The supervisor's side of the fork server (:mod:`services.forkserver`): services started as forks of it.

:meth:`ForkPool.spawn` returns a :class:`ForkedProcess`, which the supervisor treats as it would an
``asyncio.subprocess.Process`` (``pid``, ``returncode``, ``stdout``, ``wait``, ``send_signal``, ``kill``). The
fork server is started on the first spawn and again on the next spawn after it died; when it dies, the
services it forked are ended (they would be anyway: they die with it) and reported as killed, so the
supervisor restarts them as it does any service that died.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from services.forkserver import MAX_MESSAGE, die_with_parent


class ForkedProcess:
    """A service forked by the fork server. Its exit code comes from the fork server (its parent)."""

    def __init__(self, pid: int, stdout: asyncio.StreamReader) -> None:
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        self._exited = asyncio.get_running_loop().create_future()

    def exited(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._exited.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            raise ProcessLookupError(self.pid)
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServerError(RuntimeError):
    """The fork server could not start a service (it is not there, or it refused the request)."""


class ForkPool:
    def __init__(
        self,
        preload: list[str],
        environment: Callable[[], dict[str, str]],
        output: Callable[[bytes], None],
        data_dir: str = "",
    ) -> None:
        self.preload = preload
        self.data_dir = data_dir
        self.environment = environment
        self.output = output
        """Where the fork server's own output goes (a line at a time; a failed import, say)."""
        self.server: asyncio.subprocess.Process | None = None
        self._control: socket.socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._answer: asyncio.Future[dict[str, Any]] | None = None
        self._lock = asyncio.Lock()
        self.children: dict[int, ForkedProcess] = {}

    async def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ours.setblocking(False)
            self.server = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.forkserver",
                "--control",
                str(theirs.fileno()),
                "--data-dir",
                self.data_dir,
                "--preload",  # as paths: no service's module name in this command line (`pkill -f services.apps`)
                ",".join(module.replace(".", "/") for module in self.preload),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self.environment(),
                pass_fds=[theirs.fileno()],
                preexec_fn=die_with_parent,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._control = ours
        self._pump = asyncio.create_task(self._print(self.server))
        loop = asyncio.get_running_loop()
        ready = json.loads(await loop.sock_recv(ours, MAX_MESSAGE) or b"{}")
        if "ready" not in ready:
            await self._stop_server()
            raise ForkServerError("the fork server did not start (see its output above)")
        self._reader = asyncio.create_task(self._read(ours))

    async def _print(self, server: asyncio.subprocess.Process) -> None:
        assert server.stdout is not None
        while line := await server.stdout.readline():
            self.output(line.rstrip(b"\n"))

    async def _read(self, control: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await loop.sock_recv(control, MAX_MESSAGE):
                message = json.loads(data)
                if "exited" in message:
                    child = self.children.pop(message["exited"], None)
                    if child is not None:
                        child.exited(int(message["code"]))
                elif self._answer is not None and not self._answer.done():
                    self._answer.set_result(message)
        except (OSError, ValueError):
            pass
        finally:
            await self._lost()

    async def _lost(self) -> None:
        """The fork server is gone: its services go too (killed, so that none is left half there). Its
        control socket is let go first, so that a spawn asked meanwhile starts a new fork server."""
        control, self._control = self._control, None
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ForkServerError("the fork server went away"))
        orphans, self.children = self.children, {}
        for child in orphans.values():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGKILL)
        await asyncio.gather(*(_gone(child.pid) for child in orphans.values()))
        for child in orphans.values():
            child.exited(-signal.SIGKILL)
        if control is not None:
            control.close()

    async def spawn(self, argv: list[str], env: dict[str, str]) -> ForkedProcess:
        """Fork ``python -m MODULE ARGS`` (``argv``) with ``env``; its output is the returned ``stdout``."""
        async with self._lock:
            if self._control is None:
                await self._start()
            assert self._control is not None
            read, write = os.pipe()
            try:
                loop = asyncio.get_running_loop()
                self._answer = loop.create_future()
                request = json.dumps({"spawn": argv, "env": env}).encode()
                try:
                    self._control.sendmsg(
                        [request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [write]).tobytes())]
                    )
                except OSError:  # it died, and its reader has not seen it yet: let it clean up first
                    await self._reader_done()
                    raise ForkServerError("the fork server went away") from None
                os.close(write)
                write = -1
                answer = await self._answer
            except BaseException:
                os.close(read)
                if write >= 0:
                    os.close(write)
                raise
            if "pid" not in answer:
                os.close(read)
                raise ForkServerError(f"the fork server refused: {answer.get('error', answer)}")
            reader = asyncio.StreamReader(limit=1 << 20)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read, "rb", 0))
            child = ForkedProcess(int(answer["pid"]), reader)
            self.children[child.pid] = child
            return child

    async def _reader_done(self) -> None:
        """Until the reader of a fork server that died has ended its services (so the next spawn starts a
        new fork server)."""
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 15)

    async def _stop_server(self) -> None:
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.shutdown(socket.SHUT_WR)  # it ends when its end reads nothing more
        server = self.server
        if server is not None and server.returncode is None:
            try:
                await asyncio.wait_for(server.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    server.kill()
                await server.wait()
        for task in (self._reader, self._pump):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, 5)
        if self._control is not None:  # it never started its reader
            self._control.close()
            self._control = None

    async def close(self) -> None:
        """Stop the fork server (its services stopped first, by the supervisor)."""
        async with self._lock:
            await self._stop_server()


async def _gone(pid: int) -> None:
    """Until ``pid`` (not a child of this process) has ended."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    ended = loop.create_future()

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(ended, 10)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(fd)
        os.close(fd)
