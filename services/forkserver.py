"""The rack's fork server: one process that imports what every service imports, once, and forks the services.

Six Python processes that each import FastAPI, pydantic, uvicorn and the provider hold six copies of the same
module objects (about 40 MiB each). Forked from one process that imported them first, they share those pages
with it (copy-on-write; :func:`gc.freeze` keeps the collector from writing to them), so the idle rack costs
about one copy plus what each service does on its own, and a restarted service starts without importing.

The supervisor starts ``python -m services.forkserver --control FD --data-dir DIR --preload PATHS`` and
speaks to it over that ``SOCK_SEQPACKET`` socket (:class:`services.forkpool.ForkPool`; ``PATHS``: the modules to
import, as ``shared/service``, so that no service's name is in its command line):

- ``{"spawn": [ARGV...], "env": {...}}`` with the service's output pipe as an ``SCM_RIGHTS`` file descriptor:
  it forks, and the child makes that pipe its stdout and stderr, takes ``env`` as its environment, names
  itself by ``ARGV`` (``python -m services.apps --socket ...``, for ``ps`` and ``/proc/PID/cmdline``) and runs
  the module ``ARGV[2]`` as ``__main__``, as ``python -m`` would. The answer is ``{"pid": PID}`` (or
  ``{"error": ...}``).
- ``{"exited": PID, "code": CODE}`` is sent when a child ends (``CODE`` negative for a signal, as asyncio's
  ``returncode``).

It has no threads and no event loop when it forks (both would be broken in the child). Its children die with
it (``PR_SET_PDEATHSIG``), and it dies with the supervisor: nothing outlives the rack.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import gc
import importlib
import json
import os
import runpy
import select
import signal
import socket
import sys
import threading
from typing import Any

import setproctitle

MAX_MESSAGE = 1 << 20
"""A request (argv and environment) is far smaller; one larger is refused."""


def die_with_parent() -> None:
    """``PR_SET_PDEATHSIG``: SIGTERM when the parent dies (set in the child, after the fork)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def receive(control: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """One request and the file descriptors sent with it; None when the supervisor has gone."""
    fds = array.array("i")
    data, ancillary, _flags, _address = control.recvmsg(MAX_MESSAGE, socket.CMSG_LEN(4 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("a request is a JSON object")
    return message, list(fds)


def send(control: socket.socket, message: dict[str, Any]) -> None:
    control.send(json.dumps(message).encode())


def become(argv: list[str], env: dict[str, str], output: int, control: socket.socket, inherited: list[int]) -> None:
    """In the forked child: take the service's output, environment and name, then run its module."""
    control.close()
    for fd in inherited:  # the server's watches of the other children
        os.close(fd)
    die_with_parent()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a service started by hand would have it
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(output, 1)
    os.dup2(output, 2)
    for fd in (devnull, output):
        if fd > 2:
            os.close(fd)
    setproctitle.setproctitle(" ".join(argv))  # in the fork server's argv (SPT_NOENV: its environ stays)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [argv[2], *argv[3:]]
    code = 0
    try:
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if isinstance(exc.code, int):
            code = exc.code
        elif exc.code is not None:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def spawn(message: dict[str, Any], fds: list[int], control: socket.socket, inherited: list[int]) -> dict[str, Any]:
    argv, env = message.get("spawn"), message.get("env")
    if (
        not isinstance(argv, list)
        or len(argv) < 3
        or argv[1] != "-m"
        or not all(isinstance(a, str) for a in argv)
        or not isinstance(env, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        or len(fds) != 1
    ):
        for fd in fds:
            os.close(fd)
        return {"error": "a spawn is an argv [PYTHON, -m, MODULE, ...], an env and one output pipe"}
    assert threading.active_count() == 1, "no threads in the fork server"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        become(argv, env, fds[0], control, inherited)
    os.close(fds[0])
    return {"pid": pid}


def serve(control: socket.socket) -> int:
    """Answer spawns and report exits until the supervisor closes its end."""
    children: dict[int, int] = {}  # pidfd -> pid
    while True:
        watched: list[int] = [control.fileno(), *children]
        for fd in select.select(watched, [], [])[0]:
            if fd == control.fileno():
                received = receive(control)
                if received is None:
                    return 0
                message, fds = received
                answer = spawn(message, fds, control, list(children))
                if "pid" in answer:
                    children[os.pidfd_open(answer["pid"])] = answer["pid"]
                send(control, answer)
            else:
                pid = children.pop(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                send(control, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m services.forkserver")
    parser.add_argument("--control", type=int, required=True, help="the supervisor's SOCK_SEQPACKET socket")
    parser.add_argument("--preload", default="", help="modules to import before forking: a/b,c/d for a.b, c.d")
    parser.add_argument("--data-dir", help="the rack's (it names the process; the services' titles fit in)")
    args = parser.parse_args(argv)
    # A child's title overwrites this process's argv only, never its environment block: /proc/PID/environ
    # of a service shows the environment it was forked with; a title longer than this argv is cut.
    os.environ["SPT_NOENV"] = "1"
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C in the terminal is the supervisor's to act on
    control = socket.socket(fileno=args.control)
    for module in filter(None, args.preload.split(",")):
        importlib.import_module(module.replace("/", "."))
    gc.collect()
    gc.freeze()  # the preloaded objects stay out of the children's collections: their pages stay shared
    send(control, {"ready": os.getpid()})
    try:
        return serve(control)
    except (ConnectionError, OSError):
        return 0


if __name__ == "__main__":
    sys.exit(main())
