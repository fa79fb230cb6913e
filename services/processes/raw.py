"""Raw streams (``v1.raw.rack``, :mod:`shared.rawstream`): a process's pipes moved between the client's
connection and the engine's in the kernel.

Once the process has started, the client's socket (taken from the HTTP server, :mod:`shared.rawhttp`) and the
engine's (taken from the provider, :meth:`shared.stream.ProcessStream.take_stdio`) are joined by two threads,
one per direction, each a ``splice`` loop (:mod:`shared.splice`): the engine's multiplexed frames go to the
client as they are, the client's bytes to the process's stdin; the client's EOF shuts the engine's write side.
None of it passes through Python's buffers. When the engine's stream ends, the exit code follows as the last
frame. A client that closes its connection (seen as the socket's hang-up) ends the process.

A client that asks for it (``Rack-Stdio: pass``, the CLI on this host) is given the engine's connection itself
instead (:class:`_Passed`): then no byte of the stream crosses this service, which waits for the client to say
it has read the stream to its end and answers the exit code.

A provider with no engine connection to give (an engine over TLS) has its stream relayed here instead,
frames made from :meth:`~shared.stream.ProcessStream.output`, stdin through
:meth:`~shared.stream.ProcessStream.write`: the same protocol, at Python's pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from shared import rawstream
from shared.errors import RackError
from shared.logfmt import Logger
from shared.rawserve import in_thread, send_all, shut
from shared.splice import Broken, Pump, batch_reads, recv_into, write_all
from shared.stream import Channel, ProcessStream, Stdio

log = Logger("processes")
RELAY_CHUNK = 1 << 20


class ClientGone(Exception):
    """The client closed its connection (or it broke): its process must end."""


def _output(engine: socket.socket, client: socket.socket, pending: bytes) -> None:
    """Engine to client until the engine's stream ends; :class:`ClientGone` when the client cannot take it."""
    try:
        write_all(client.fileno(), pending)
    except OSError:
        raise ClientGone() from None
    pump = Pump(engine.fileno(), client.fileno())
    try:
        while pump.move():
            pass
    except Broken as exc:
        if not exc.reading:
            raise ClientGone() from None
        # the engine's connection broke: the stream ends here, the exit code tells the rest
    finally:
        pump.close()


def _input(client: socket.socket, engine: socket.socket, pending: bytes) -> None:
    """Client to engine until the client's EOF (then the engine's write side is shut: the process's stdin
    EOF); returns once the client has hung up altogether (or its connection broke, or this side shut it)."""
    pump = Pump(client.fileno(), engine.fileno())
    try:
        write_all(engine.fileno(), pending)
        while pump.move():
            pass
    except Broken as exc:
        if exc.reading:
            return  # the client's connection broke
        # the process's stdin is closed (it ended, or closed it): the rest of the client's input is not read
    except OSError:
        pass
    finally:
        pump.close()
    shut(engine, socket.SHUT_WR)
    rawstream.wait_hangup(client.fileno())


def _relay_input(
    client: socket.socket, pending: bytes, process: ProcessStream, loop: asyncio.AbstractEventLoop
) -> None:
    """Client to the provider's stdin (its writes run on the loop, each awaited: backpressure), then as
    :func:`_input`."""

    def call(coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    buffer = memoryview(bytearray(RELAY_CHUNK))
    try:
        if pending:
            call(process.write(pending))
        while got := recv_into(client, buffer):  # its reads are batched (taken, shared/rawserve.py)
            call(process.write(buffer[:got]))
        call(process.close_stdin())
    except OSError:
        return
    except RackError:
        pass  # the process's stdin is gone: its output and exit code tell the rest
    rawstream.wait_hangup(client.fileno())


Resize = Callable[[bytes], None]
"""What is done with a client's frames on the rack's connection, with a TTY: its resizes applied."""


def _output_ended(
    client: socket.socket, frames: rawstream.Unframer | None = None, resize: Resize | None = None
) -> bool:
    """Wait until the client shuts its write side (True: it read the engine's stream to its end) or goes
    altogether (False). With a TTY, what it sends meanwhile is its terminal's resizes (``resize``)."""
    poller = select.poll()
    poller.register(client.fileno(), select.POLLIN)
    while True:
        for _, events in poller.poll():
            if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                return False
            try:
                data = client.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                return False
            if not data:
                return True
            if frames is not None and resize is not None:
                for kind, payload in frames.feed(data):
                    if kind == rawstream.RESIZE:
                        resize(payload)


def _relay_terminal_input(
    client: socket.socket, pending: bytes, process: ProcessStream, loop: asyncio.AbstractEventLoop
) -> None:
    """With a TTY, not passed: the client's frames, its keys (to the provider's stdin) and its resizes, then
    as :func:`_input`."""
    frames = rawstream.Unframer(pending)
    buffer = memoryview(bytearray(RELAY_CHUNK))
    try:
        chunk = b""
        while True:
            for kind, payload in frames.feed(chunk):
                if kind == rawstream.STDIN:
                    asyncio.run_coroutine_threadsafe(process.write(payload), loop).result()
                elif kind == rawstream.RESIZE:
                    _resizer(process, loop)(payload)
            got = recv_into(client, buffer)
            if not got:
                break
            chunk = bytes(buffer[:got])
        asyncio.run_coroutine_threadsafe(process.close_stdin(), loop).result()
    except OSError:
        return
    except RackError:
        pass  # the process's stdin is gone: its output and exit code tell the rest
    rawstream.wait_hangup(client.fileno())


def _resizer(process: ProcessStream, loop: asyncio.AbstractEventLoop) -> Resize:
    """A client's :data:`~shared.rawstream.RESIZE` frame applied to its process (from a stream's thread)."""

    def resize(payload: bytes) -> None:
        size = rawstream.parse_resize(payload)
        if size is not None:
            with contextlib.suppress(RackError, OSError):
                asyncio.run_coroutine_threadsafe(process.resize(*size), loop).result()

    return resize


class _Passed:
    """The engine's connection given to the client itself (it asked for it, ``Rack-Stdio: pass``): one message
    carries its descriptor (``SCM_RIGHTS``) and what was read of it already (a 4-byte length, then the bytes);
    from then on the client reads the process's output from the engine and writes its stdin there, and no byte
    of it passes through the rack. The client's ``shutdown(SHUT_WR)`` of its own connection says it has read
    the output to its end; the status frame follows on that connection. Its close ends the process."""

    def __init__(self, client: socket.socket, pending: bytes, stdio: Stdio, resize: Resize | None = None) -> None:
        self.client = client
        self.stdio = stdio
        self.resize = resize
        self.waiting = in_thread(lambda: self._hand(pending), "raw-passed")

    def _hand(self, pending: bytes) -> bool:
        engine = self.stdio.sock
        frames = None
        if self.resize is not None:  # a TTY: what the client sent with its request is frames (a resize)
            frames, pending = rawstream.Unframer(pending), b""
        try:
            write_all(engine.fileno(), pending)  # stdin the client sent with its request
            message = len(self.stdio.pending).to_bytes(4, "big") + self.stdio.pending
            sent = socket.send_fds(self.client, [message], [engine.fileno()])
            write_all(self.client.fileno(), memoryview(message)[sent:])
        except OSError:
            return False
        finally:
            engine.close()  # the client's now
        if frames is not None and self.resize is not None:
            for kind, payload in frames.feed():
                if kind == rawstream.RESIZE:
                    self.resize(payload)
        return _output_ended(self.client, frames, self.resize)

    async def ended(self) -> bool:
        return await self.waiting

    async def close(self) -> None:
        await asyncio.gather(asyncio.shield(self.waiting), return_exceptions=True)


class _Joined:
    """The client's connection joined to the process's stdio: output and input, each on its own."""

    def __init__(
        self, client: socket.socket, pending: bytes, process: ProcessStream, stdio: Stdio | None, tty: bool = False
    ) -> None:
        self.client = client
        self.stdio = stdio
        loop = asyncio.get_running_loop()
        self.output: asyncio.Future[None]
        if tty:  # relayed, the client's side framed (its keys and its resizes)
            self.output = asyncio.ensure_future(self._relay_output(process))
            self.input = in_thread(lambda: _relay_terminal_input(client, pending, process, loop), "raw-in")
        elif self.stdio is not None:
            engine, stdio = self.stdio.sock, self.stdio
            batch_reads(engine)
            self.output = in_thread(lambda: _output(engine, client, stdio.pending), "raw-out")
            self.input = in_thread(lambda: _input(client, engine, pending), "raw-in")
        else:
            self.output = asyncio.ensure_future(self._relay_output(process))
            self.input = in_thread(lambda: _relay_input(client, pending, process, loop), "raw-in")

    async def _relay_output(self, process: ProcessStream) -> None:
        async for channel, data in process.output():
            kind = rawstream.STDERR if channel == Channel.STDERR else rawstream.STDOUT
            try:
                await send_all(self.client, rawstream.frame_header(kind, len(data)), data)
            except OSError:
                raise ClientGone() from None

    async def ended(self) -> bool:
        """Wait until the process's output has ended (True) or the client has gone (False: the input's side
        ends only then, whatever the output did meanwhile: a TTY's may end with its stdin while the process
        runs on)."""
        await asyncio.wait({self.output, self.input}, return_when=asyncio.FIRST_COMPLETED)
        if self.input.done():
            return False
        return not self.output.cancelled() and self.output.exception() is None

    async def close(self) -> None:
        """Stop both sides (the client's socket shut down already) and close the engine's connection."""
        if self.stdio is not None:
            shut(self.stdio.sock)  # an output thread still reading ends
        elif not self.output.done():
            self.output.cancel()
        await asyncio.gather(asyncio.shield(self.output), asyncio.shield(self.input), return_exceptions=True)
        if self.stdio is not None:
            self.stdio.sock.close()


async def serve(
    client: socket.socket, client_pending: bytes, process: ProcessStream, pass_stdio: bool = False, tty: bool = False
) -> str:
    """Serve an accepted raw stream of a started ``process`` to its end (``pass_stdio``: the client asked for
    the engine's connection itself; ``tty``: the process runs on a terminal, see :mod:`shared.rawstream`); the
    outcome, for the log. The client's socket is closed, the process closed (ended if it still runs: a TTY's
    with a hang-up), whatever happens."""
    outcome = "exit"
    joined: _Joined | _Passed | None = None
    stdio = process.take_stdio() if pass_stdio or not tty else None  # a TTY not passed is relayed
    passed = pass_stdio and stdio is not None
    if tty:  # a key is read as it comes, never held for a batch
        batch_reads(client, 1, 0.0)
    try:
        await asyncio.to_thread(write_all, client.fileno(), rawstream.accepted(passed=passed))
        if passed and stdio is not None:
            resize = _resizer(process, asyncio.get_running_loop()) if tty else None
            joined = _Passed(client, client_pending, stdio, resize)
        else:
            joined = _Joined(client, client_pending, process, stdio, tty)
        if not await joined.ended():
            outcome = "disconnect"
            return outcome
        try:
            status = rawstream.status_frame(exit_code=await process.wait())
        except RackError as exc:
            outcome = "error"
            status = rawstream.status_frame(error=exc.message)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(write_all, client.fileno(), status)
        return outcome
    except OSError:
        outcome = "disconnect"
        return outcome
    finally:
        shut(client)  # the input side ends (its read, or its wait for the hang-up)
        if joined is not None:
            await joined.close()
        elif stdio is not None:  # the answer could not be written: nothing took the engine's connection
            stdio.sock.close()
        client.close()
        await asyncio.shield(process.close())
        log.log("stream.end", outcome=outcome, raw="true", passed=str(passed).lower(), tty=str(tty).lower())
