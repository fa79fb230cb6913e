"""Interactive one-off containers on this host's engine (``convox run`` without ``--detach``), attached to a
stream over the engine's hijacked connections (:mod:`shared.provider.engine.exec`), in a network sandbox of
their app when one is ready (:mod:`shared.provider.local.sandboxes`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp

from shared.errors import Conflict, NotFound, RackError
from shared.logfmt import Logger
from shared.provider.engine.docker import translated
from shared.provider.engine.exec import HANGUP_GRACE, Hijacked, _Attached, has_shell, sized
from shared.provider.local.docker import Docker
from shared.provider.local.sandboxes import Sandboxes
from shared.stream import Terminal

log = Logger("processes")


class AttachedRun(_Attached):
    """A new container attached to a stream (``convox run`` without ``--detach``), removed when it ends.

    As ``docker run --rm`` does it: created, attached, its exit awaited (``wait`` with ``condition=next-exit``,
    asked before the start so that the code cannot be missed), then started; once it has ended, ``remove``
    removes it when its log is collected (without ``remove``, at once).
    """

    def __init__(
        self,
        docker: Docker,
        config: dict[str, Any],
        argv: list[str],
        name: str | None = None,
        shells: dict[str, bool] | None = None,
        sandboxes: Sandboxes | None = None,
        app: str = "",
        remove: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.docker = docker
        self.remove = remove
        self.config = config
        self.argv = argv
        self.name = name
        self.shells = shells if shells is not None else {}
        self.sandboxes = sandboxes
        self.app = app
        self.sandbox: str | None = None
        self.started = False
        self.terminal = Terminal()
        self.container_id = ""
        self.conn: Hijacked | None = None
        self.exit_watch: aiohttp.ClientResponse | None = None
        self.exit_code: int | None = None
        self.closed = False

    @property
    def _what(self) -> str:
        return f"process {self.container_id[:12]}" if self.container_id else f"image {self.config.get('Image', '')}"

    async def _create(self, config: dict[str, Any]) -> str:
        return await self.docker.create(config, self.name)

    async def start(self, terminal: Terminal) -> None:
        self.terminal = terminal
        config = {
            **self.config,
            "Tty": terminal.tty,
            "OpenStdin": True,
            "StdinOnce": True,
            "AttachStdin": True,
            "AttachStdout": True,
            "AttachStderr": True,
        }
        config["HostConfig"] = {**config.get("HostConfig", {}), "AutoRemove": self.remove is None}
        self.sandbox = self.sandboxes.take(self.app) if self.sandboxes is not None else None
        if self.sandbox is None:
            await self._launch(config)
            return
        host = {**config["HostConfig"], "NetworkMode": f"container:{self.sandbox}"}
        try:
            await self._launch({**config, "HostConfig": host})
        except RackError:
            await self._abandon()
            if self.sandboxes is None or await self._sandbox_alive(self.sandbox):
                raise  # not the sandbox's fault: it goes back when this is closed
            # the sandbox is gone (removed with its app, or lost with the engine): the network itself, then
            self.sandboxes.discard(self.sandbox)
            self.sandbox = None
            await self._launch(config)

    async def _sandbox_alive(self, sandbox: str) -> bool:
        """False only when the engine says the sandbox is gone or stopped."""
        try:
            info = await self.docker.inspect(sandbox)
        except NotFound:
            return False
        except RackError:
            return True
        return bool((info.get("State") or {}).get("Running"))

    async def _launch(self, config: dict[str, Any]) -> None:
        """Create the container, attach to it, ask for its exit, start it."""
        terminal = self.terminal
        image = str(config.get("Image", ""))
        sizing = terminal.tty and self.shells.get(image, True)
        config["Entrypoint"], config["Cmd"] = (
            (sized([], terminal), self.argv) if sizing else (self.argv[:1], self.argv[1:])
        )
        self.container_id = await self._create(config)
        if sizing and image not in self.shells:
            self.shells[image] = await has_shell(self.docker, self.container_id)
            if not self.shells[image]:  # no /bin/sh for the sizing prelude: the command alone, resized after start
                await self.docker.remove(self.container_id)
                config["Entrypoint"], config["Cmd"] = self.argv[:1], self.argv[1:]
                self.container_id = await self._create(config)
        attach = f"/containers/{self.container_id}/attach?stream=1&stdin=1&stdout=1&stderr=1"
        conn, exit_watch = await asyncio.gather(
            Hijacked.open(self.docker, attach, None, terminal.tty, self._what),
            self._watch_exit(),
            return_exceptions=True,
        )
        if isinstance(exit_watch, aiohttp.ClientResponse):
            self.exit_watch = exit_watch
        if isinstance(conn, Hijacked):
            self.conn = conn
        for outcome in (conn, exit_watch):
            if isinstance(outcome, BaseException):
                raise outcome
        async with translated(self._what):
            await self.docker.start(self.container_id)
        self.started = True
        if terminal.tty and terminal.size:
            await self.resize(*terminal.size)

    async def _abandon(self) -> None:
        """Undo a launch that failed: its connections closed, its container removed."""
        if self.conn is not None:
            await self.conn.close()
            self.conn = None
        if self.exit_watch is not None:
            self.exit_watch.close()
            self.exit_watch = None
        if self.container_id:
            with contextlib.suppress(RackError):
                await self.docker.remove(self.container_id)
            self.container_id = ""

    async def _watch_exit(self) -> aiohttp.ClientResponse:
        """The engine's answer to ``wait``, asked before the start: its body comes when the process exits."""
        return await self.docker.watch_exit(self.container_id, self._what)

    def _resize_path(self) -> str | None:
        return f"containers/{self.container_id}/resize" if self.container_id else None

    async def wait(self) -> int:
        if self.exit_code is not None:
            return self.exit_code
        if self.exit_watch is None:
            raise RuntimeError("the process has not started")
        async with translated(self._what):
            result = await self.exit_watch.json(content_type=None)
        error = (result.get("Error") or {}).get("Message")
        if error:
            raise RackError(f"{self._what}: {error}", status=502)
        self.exit_code = int(result.get("StatusCode", 1))
        return self.exit_code

    async def _end(self) -> None:
        if self.exit_code is not None or not self.container_id:
            return
        if self.terminal.tty:
            with contextlib.suppress(RackError):
                await self.docker.kill(self.container_id, "SIGHUP", self._what)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wait(), HANGUP_GRACE)
        log.log("run.kill", id=self.container_id[:12], tty=self.terminal.tty)

    async def _gone(self) -> bool:
        """Whether nothing of the process runs any more, after ending it if it has not ended by itself; its
        container goes once its log is collected (with ``remove``; else AutoRemove does it)."""
        if not self.container_id:
            return True  # never made
        if self.remove is not None:
            if self.exit_code is None:
                try:
                    await self.docker.kill(self.container_id, "SIGKILL", self._what)
                except Conflict:  # not running: it has ended
                    pass
                except NotFound:
                    return True
                except RackError:
                    return False
            self.remove(self.container_id, True)
            return True
        if self.exit_code is not None:
            return True  # its init has exited
        try:
            await self.docker.remove(self.container_id)
        except (NotFound, Conflict):  # gone, or being removed: it has exited
            return True
        except RackError:
            return False
        return True

    async def _release(self) -> None:
        if self.exit_watch is not None:
            self.exit_watch.close()
        gone = await self._gone()
        if self.sandboxes is None:
            return
        if self.sandbox is not None:
            if gone:
                self.sandboxes.give_back(self.app, self.sandbox)
            else:
                self.sandboxes.discard(self.sandbox)
        elif self.started:
            self.sandboxes.want(self.app)
