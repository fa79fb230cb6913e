"""The rack's side of the balancer process (:mod:`shared.provider.local.balancerd`): start it when it is not
running, hold it while this service runs, and put, delete and drain its listeners.

Every request is idempotent (a put says all a listener is), so a balancer process that died and was
started again gets its listeners back from the next put; a service that restarts finds them still serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import shared
from shared.errors import Unavailable
from shared.logfmt import Logger
from shared.provider.local.balancer import ListenerSpec

log = Logger("balancers")
REQUEST_SECONDS = 10.0
START_SECONDS = 15.0
PACKAGE_ROOT = str(Path(shared.__file__).resolve().parent.parent)


class Balancers:
    def __init__(self, run_dir: Path, log_path: Path, orphan_seconds: float | None = None) -> None:
        self.run_dir = run_dir
        self.socket_path = run_dir / "balancer.sock"
        self.log_path = log_path
        self.orphan_seconds = orphan_seconds
        self._start_lock = asyncio.Lock()
        self._holder: asyncio.Task[None] | None = None

    async def put(self, spec: ListenerSpec) -> int:
        """Make the listener ``spec`` describes (keeping its port when it already runs); returns its port."""
        answer = await self._request({"op": "put", "listener": spec.model_dump(mode="json")})
        return int(answer["port"])

    async def delete(self, name: str) -> None:
        await self._request({"op": "delete", "name": name})

    async def drained(self, name: str, ip: str, within: float) -> bool:
        """Wait until no connection through listener ``name`` is open to ``ip`` (at most ``within`` s)."""
        answer = await self._request({"op": "drained", "name": name, "ip": ip, "within": within}, within + 5)
        return bool(answer.get("drained"))

    async def listeners(self) -> list[ListenerSpec]:
        answer = await self._request({"op": "list"})
        return [ListenerSpec.model_validate(item) for item in answer.get("listeners", [])]

    async def close(self) -> None:
        """This service stops: let go of the balancer process (it keeps serving)."""
        if self._holder is not None:
            self._holder.cancel()
            await asyncio.gather(self._holder, return_exceptions=True)
            self._holder = None

    # ---- the connection ----------------------------------------------------------------------------

    async def _request(self, request: dict[str, Any], within: float = REQUEST_SECONDS) -> dict[str, Any]:
        reader, writer = await self._connect()
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), within)
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"the balancer did not answer ({type(exc).__name__})") from None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        try:
            answer = json.loads(line)
        except ValueError:
            raise Unavailable("the balancer closed the connection") from None
        if not isinstance(answer, dict):
            raise Unavailable("the balancer answered nonsense")
        if "error" in answer:
            raise Unavailable(f"the balancer: {answer['error']}")
        if self._holder is None or self._holder.done():
            self._holder = asyncio.create_task(self._hold())
        return answer

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_unix_connection(self.socket_path), REQUEST_SECONDS)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        with contextlib.suppress(OSError, TimeoutError):
            return await self._open()
        async with self._start_lock:
            with contextlib.suppress(OSError, TimeoutError):
                return await self._open()
            await self._start()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + START_SECONDS
            pause = 0.02
            while True:
                try:
                    return await self._open()
                except (OSError, TimeoutError):
                    if loop.time() > deadline:
                        raise Unavailable(f"the balancer did not start within {START_SECONDS:.0f}s") from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)

    async def _start(self) -> None:
        """Start the balancer process, detached: it is no child of this service and outlives it."""
        await asyncio.to_thread(self.log_path.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(self.socket_path.parent.mkdir, mode=0o700, parents=True, exist_ok=True)
        output = await asyncio.to_thread(os.open, self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        env = {k: v for k, v in os.environ.items() if k not in ("RACK_INTERNAL_SECRET", "CONVOX_PASSWORD")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
        argv = [sys.executable, "-m", "shared.provider.local.balancerd", "--socket", str(self.socket_path), "--detach"]
        if self.orphan_seconds is not None:
            argv += ["--orphan-seconds", str(self.orphan_seconds)]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output, env=env, cwd=PACKAGE_ROOT
            )
            await process.wait()  # the detaching parent exits at once; the balancer runs on in its own session
        finally:
            os.close(output)
        log.log("balancer.start", socket=str(self.socket_path))

    async def _hold(self) -> None:
        """Keep one connection open while this service runs (a balancer nobody holds exits after a while)."""
        while True:
            try:
                reader, writer = await self._connect()
            except Unavailable:
                await asyncio.sleep(1)
                continue
            try:
                writer.write(b'{"op": "hold"}\n')
                await writer.drain()
                while await reader.read(4096):
                    pass
            except OSError:
                pass
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            await asyncio.sleep(0.5)  # the balancer went: the next put starts it again
