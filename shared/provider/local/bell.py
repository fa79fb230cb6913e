"""A wake-up between the rack's processes on one host: each process that waits binds a unix datagram socket in
one directory, and :meth:`Bell.ring` sends one byte to every socket there (its own waiters are woken at once).

It says only "something changed in the state": a waiter reads the state again. A ring is never lost for a
waiter that took its :attr:`Bell.rung` count before it read the state (it sees the count moved); one that
went unheard (a full socket buffer, a process starting) costs at most the waiter's own timeout, after which
it reads the state anyway. A socket whose process died (``kill -9`` leaves it behind) refuses the byte and
is removed by the next ring.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
from pathlib import Path

_instances = itertools.count()


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self, bell: Bell) -> None:
        self.bell = bell

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.bell._heard()


class Bell:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / f"{os.getpid()}-{next(_instances)}.sock"
        self.rung = 0
        """Rings heard so far (this process's own included)."""
        self._changed = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None
        self._sender: socket.socket | None = None

    def _heard(self) -> None:
        self.rung += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def open(self) -> None:
        """Listen for rings (the first :meth:`wait` does it too)."""
        if self._transport is not None:
            return
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Inbox(self), local_addr=str(self.path), family=socket.AF_UNIX
        )
        self._transport = transport

    def ring(self) -> None:
        """Wake every waiter of every process on the host (never raises, never blocks)."""
        self._heard()
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        try:
            names = os.listdir(self.directory)  # a handful of sockets
        except OSError:
            return
        for name in names:
            path = self.directory / name
            if path == self.path or not name.endswith(".sock"):
                continue
            try:
                self._sender.sendto(b"!", str(path))
            except ConnectionRefusedError:  # nobody listens: its process is gone
                with contextlib.suppress(OSError):
                    path.unlink()
            except OSError:  # a full buffer: a wake-up is pending there already
                pass

    async def wait(self, seen: int, within: float) -> None:
        """Return once a ring after ``seen`` (a value of :attr:`rung`) was heard, or ``within`` seconds on."""
        await self.open()
        if self.rung != seen:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), within)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.path.unlink)
        if self._sender is not None:
            self._sender.close()
            self._sender = None
