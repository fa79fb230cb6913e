"""The balancer process: every app's listeners, in a process of its own that outlives the rack's services.

``python -m shared.provider.local.balancerd --socket RUN/balancer.sock`` detaches (a new session, not a
child of the service that started it), so a restart of the rack (an upgrade, a crash of the supervisor,
`convox rack start` stopped and started again) never closes an app's port: connections keep being
forwarded to the running containers meanwhile, and the workers' owner (the logs service) re-adopts the
listeners when it is back (:mod:`shared.provider.local.balancers`). One balancer process serves one data dir.

The control socket (0600) speaks JSON lines, one request and one answer per connection:
``{"op": "put", "listener": ListenerSpec}`` -> ``{"port": N}`` (create, or update the backends),
``{"op": "delete", "name": ...}``, ``{"op": "drained", "name": ..., "ip": ..., "within": s}`` ->
``{"drained": bool}``, ``{"op": "list"}`` -> ``{"listeners": [...]}``, and ``{"op": "hold"}``, which the
owning service keeps open for as long as it runs. Errors are ``{"error": "..."}``.

It exits when its socket is removed or taken over (another balancer, or the data dir went), or when no
owner has held it for ``--orphan-seconds`` (a rack that stays stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared.logfmt import Logger, configure
from shared.provider.local.balancer import Listener, ListenerSpec

log = Logger("balancer")
ORPHAN_SECONDS = 900.0
CHECK_SECONDS = 1.0


class BalancerDaemon:
    def __init__(self, socket_path: Path, orphan_seconds: float) -> None:
        self.socket_path = socket_path
        self.orphan_seconds = orphan_seconds
        self.listeners: dict[str, Listener] = {}
        self.holders = 0
        self.orphaned_at = 0.0
        self.stopping = asyncio.Event()
        self._lock = asyncio.Lock()

    async def put(self, spec: ListenerSpec) -> int:
        async with self._lock:
            listener = self.listeners.get(spec.name)
            if listener is not None and listener.host == spec.host and spec.port in (0, listener.port):
                if listener.tls == spec.tls:
                    listener.set_backends(spec.backends)
                    return listener.port
                if listener.tls is not None and spec.tls is not None and listener.tls.alpn == spec.tls.alpn:
                    await listener.set_certificate(spec.tls)
                    listener.set_backends(spec.backends)
                    return listener.port
                spec = spec.model_copy(update={"port": listener.port})  # plain <-> TLS: again, on its port
            if listener is not None:
                await listener.close()
                del self.listeners[spec.name]
            listener = Listener(spec.name, spec.host, spec.port, spec.tls)
            try:
                await listener.start()
            except OSError:
                if spec.port == 0 or (spec.tls is not None and not listener.tls_loaded):
                    raise  # no free port, or the certificate's files cannot be read
                log.log("listener.port_taken", listener=spec.name, port=spec.port)
                listener = Listener(spec.name, spec.host, 0, spec.tls)  # the kept port is taken by someone else
                await listener.start()
            listener.set_backends(spec.backends)
            self.listeners[spec.name] = listener
            return listener.port

    async def delete(self, name: str) -> None:
        async with self._lock:
            listener = self.listeners.pop(name, None)
        if listener is not None:
            await listener.close()

    async def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "put":
            return {"port": await self.put(ListenerSpec.model_validate(request.get("listener")))}
        if op == "delete":
            await self.delete(str(request.get("name", "")))
            return {}
        if op == "drained":
            listener = self.listeners.get(str(request.get("name", "")))
            within = min(max(float(request.get("within", 0)), 0.0), 3600.0)
            drained = listener is None or await listener.drained(str(request.get("ip", "")), within)
            return {"drained": drained}
        if op == "list":
            return {"listeners": [listener.spec().model_dump(mode="json") for listener in self.listeners.values()]}
        return {"error": f"unknown op {op!r}"}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
                if request.get("op") == "hold":
                    await self.hold(reader, writer)
                    return
                response = await self.answer(request)
            except (ValueError, ValidationError, OSError) as exc:
                response = {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
            writer.write(json.dumps(response).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.holders += 1
        log.log("owner.connect", holders=self.holders)
        try:
            writer.write(b"{}\n")
            await writer.drain()
            while await reader.read(4096):
                pass
        finally:
            self.holders -= 1
            self.orphaned_at = asyncio.get_running_loop().time()
            log.log("owner.disconnect", holders=self.holders)

    async def watch(self, inode: int) -> None:
        """Stop when the socket is no longer ours, or when no owner held us for ``orphan_seconds``."""
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), CHECK_SECONDS)
            try:
                if os.stat(self.socket_path).st_ino != inode:
                    log.log("exit", reason="socket_taken_over")
                    break
            except OSError:
                log.log("exit", reason="socket_removed")
                break
            if self.holders == 0 and loop.time() - self.orphaned_at > self.orphan_seconds:
                log.log("exit", reason="orphaned", seconds=self.orphan_seconds)
                break
        self.stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        old = os.umask(0o077)
        try:
            server = await asyncio.start_unix_server(self.serve, self.socket_path)
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        self.orphaned_at = loop.time()
        log.log("start", socket=str(self.socket_path), pid=os.getpid())
        try:
            await self.watch(os.stat(self.socket_path).st_ino)
        finally:
            server.close()
            await asyncio.gather(*(listener.close() for listener in self.listeners.values()), return_exceptions=True)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="balancerd", description=__doc__.splitlines()[0])
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--orphan-seconds", type=float, default=ORPHAN_SECONDS)
    parser.add_argument("--detach", action="store_true", help="fork into a new session; the parent exits at once")
    args = parser.parse_args(argv)
    lock_path = args.socket.with_suffix(".lock")
    lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # one balancer per data dir: it runs already
    if args.detach:
        if os.fork() > 0:
            os._exit(0)  # the child keeps the lock (flock locks belong to the open file, shared across fork)
        os.setsid()
    configure(logging.INFO)
    return asyncio.run(BalancerDaemon(args.socket, args.orphan_seconds).run())


if __name__ == "__main__":
    sys.exit(main())
