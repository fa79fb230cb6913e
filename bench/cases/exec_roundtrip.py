"""Interactive round trip: one byte echoed through a TTY by `convox exec` against `docker exec -it` (issue #4)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import termios
import time
import tty
from collections.abc import Sequence

from bench import timing
from bench.cases.processes_app import deployed
from bench.context import Context
from bench.result import Result, Target

ECHO = ["sh", "-c", "stty raw -echo; exec cat"]
"""The remote end: a TTY in raw mode with `cat` writing back each byte as it comes."""
LIMIT = 0.0003
"""The convox median may be at most this much above docker's."""


class Session:
    """A command on a pseudo-terminal of ours, as a user's terminal runs it."""

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # pragma: no cover - the child
            os.execvpe(argv[0], list(argv), env)
        tty.setraw(self.fd)  # no local echo, whenever the client sets its own raw mode
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.sent = 0
        deadline = time.monotonic() + 30
        while True:  # until the remote `cat` answers
            try:
                self.round_trip(timeout=0.5)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"`{' '.join(argv)}` did not echo within 30 s") from None

    def round_trip(self, timeout: float = 5.0) -> float:
        """Send one byte (a new letter each time) and wait for it to come back."""
        while select.select([self.fd], [], [], 0)[0]:  # what an earlier probe left
            os.read(self.fd, 4096)
        self.sent += 1
        byte = bytes((ord("a") + self.sent % 26,))
        start = time.perf_counter()
        os.write(self.fd, byte)
        got = b""
        while byte not in got:
            ready, _, _ = select.select([self.fd], [], [], timeout)
            if not ready:
                raise TimeoutError("no echo")
            got += os.read(self.fd, 4096)
        return time.perf_counter() - start

    def close(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.fd)


def run(ctx: Context) -> Result:
    app = deployed(ctx)
    convox = [str(ctx.convox), "exec", "--app", app.app, app.pid, *ECHO]
    docker = [ctx.docker, "exec", "-it", app.pid, *ECHO]
    ours_session, theirs_session = Session(convox, app.env), Session(docker, app.env)
    try:
        ours, theirs = timing.interleave(
            ours_session.round_trip, theirs_session.round_trip, repeat=ctx.repetitions(300), warmup=ctx.warmups(20)
        )
    finally:
        ours_session.close()
        theirs_session.close()
    return Result(
        title="convox exec / docker exec -it: one byte echoed by `cat` in a raw TTY (p50 at most 0.3 ms above)",
        unit="s",
        convox=ours,
        docker=theirs,
        target=Target.below(theirs.median + LIMIT),
        details={"convox": convox, "docker": docker, "limit_above_docker": LIMIT},
    )
