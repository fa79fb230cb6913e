"""How a process exec'd on the Docker Engine is ended when its stream closes while it runs: a hangup for a
TTY (SIGHUP to the terminal's foreground process group and the session leader, as a closed terminal does),
a kill of the whole process tree otherwise. On this host's engine the processes are found in this host's
/proc and signalled from here; on a remote engine (the aws provider's instances) they carry a mark in their
environment and are signalled from inside the container, through the engine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from shared.errors import RackError
from shared.logfmt import Logger
from shared.provider.engine.docker import Engine

log = Logger("processes")

SHELL = "/bin/sh"
"""The shell a container is asked to have for what is run through it (the size prelude, signals)."""


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, session, tty_nr, tpgid, ...)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _in_container(pid: int, container_id: str) -> bool:
    """Whether host process ``pid`` is one of the container's (its cgroup names the container): a pid the
    engine gave is only signalled from here when this host is the engine's."""
    try:
        with open(f"/proc/{pid}/cgroup") as handle:
            return container_id in handle.read()
    except OSError:
        return False


def _tree(root: int) -> list[int]:
    """``root`` and its descendants, parents first (from /proc; empty when ``root`` is not visible)."""
    if _stat(root) is None:
        return []
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found = [root]
    for pid in found:
        found.extend(children.get(pid, []))
    return found


def _container_pid(pid: int) -> int | None:
    """The pid of host process ``pid`` inside its own pid namespace (the last of ``NSpid``)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None


def _signal_host(pids: list[int], sig: int) -> list[int]:
    """Signal each pid (negative: a process group); returns those this process may not signal."""
    denied = []
    for pid in pids:
        try:
            os.kill(pid, sig) if pid > 0 else os.killpg(-pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            denied.append(pid)
    return denied


async def signal_tree(docker: Engine, container_id: str, pid: int, hangup: bool) -> None:
    """End the process ``pid`` (a host pid) of a container on this host's engine: ``hangup`` sends SIGHUP to
    its terminal's foreground process group and to it; otherwise SIGKILL to it and all its descendants.
    Signals go from here when this process may send them, else through ``kill`` run in the container."""
    if not await asyncio.to_thread(_in_container, pid, container_id):
        log.error("process.signal", id=container_id[:12], message="the process is not visible from this host")
        return
    if hangup:
        fields = await asyncio.to_thread(_stat, pid)
        if fields is None:
            return
        tpgid = int(fields[5])
        targets = [pid] + ([-tpgid] if tpgid > 0 else [])
        sig = signal.SIGHUP
    else:
        targets = await asyncio.to_thread(_tree, pid)
        sig = signal.SIGKILL
    denied = _signal_host(targets, sig)
    if denied:
        inside = [await asyncio.to_thread(_container_pid, abs(p)) for p in denied]
        words = [("-" if p < 0 else "") + str(c) for p, c in zip(denied, inside, strict=True) if c]
        if words:
            with contextlib.suppress(RackError):
                cmd = [SHELL, "-c", f"kill -s {sig.name.removeprefix('SIG')} -- {' '.join(words)}"]
                await docker.exec_detached(container_id, cmd)


MARK = "CONVOX_EXEC"
"""On a remote engine, an exec's processes carry ``CONVOX_EXEC=<token>`` in their environment: the host's
/proc is not the engine's, so they are found (and signalled) from inside the container by that mark."""
SIGNAL_MARKED = (
    'for d in /proc/[0-9]*; do p=${d#/proc/}; [ "$p" = "$$" ] && continue; '
    'grep -q "$1" "$d/environ" 2>/dev/null && kill -s "$2" "$p" 2>/dev/null; done; exit 0'
)
"""Signal every process of the container whose environment holds the mark ``$1`` with signal ``$2`` (it
needs ``sh`` and ``grep`` in the container, as ``kill`` through the engine always needed ``sh``). A plain
``grep`` (not ``-F``: busybox's fixed-string match stops at the first NUL of /proc/PID/environ); the mark is
letters, digits, ``_`` and ``=``, so the pattern matches itself only."""


async def signal_marked(docker: Engine, container_id: str, mark: str, hangup: bool, user: str = "") -> None:
    """End an exec on a remote engine, through the engine: a second exec, as the exec's own user (who may
    read its processes' environments and signal them), sends SIGHUP (``hangup``) or SIGKILL to every process
    carrying the exec's mark, and is waited for (briefly)."""
    cmd = [SHELL, "-c", SIGNAL_MARKED, "sh", f"{MARK}={mark}", "HUP" if hangup else "KILL"]
    exec_id = await docker.exec_detached(container_id, cmd, user)
    delay = 0.005
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(docker.timeout):
            while (await docker.exec_inspect(exec_id, f"process {container_id[:12]}")).get("Running", True):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)


async def end_process(
    docker: Engine, container_id: str, pid: int, hangup: bool, mark: str = "", user: str = ""
) -> None:
    """The one place that says how an exec'd process is ended: through the engine when it is a remote one
    (the process was started with ``mark``), from this host's /proc (:func:`signal_tree`) otherwise."""
    if mark:
        await signal_marked(docker, container_id, mark, hangup, user)
    else:
        await signal_tree(docker, container_id, pid, hangup)
