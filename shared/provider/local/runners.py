"""Which of the rack's processes on this host are alive: how the owner of the background work takes over the
work of a service that died.

Some work runs in the service that was asked for it (a build in the builds service, an attached one-off in
the processes service, a backing service being made in the provisioner). Such a service holds a
:class:`Runner`: an exclusive ``flock`` on ``DATA/runners/TOKEN``, which the kernel drops the moment the
process dies, ``kill -9`` included. The work records the runner's token (a column, a container label); the
owner of the background work (:meth:`shared.provider.contract.Provider.workers`) asks :func:`dead` which
tokens no live process holds and finishes or fails their work. Nothing is written while a runner lives, so
there is no lease to renew and no clock to trust: a runner is dead exactly when its lock is free.

A runner takes its lock on a temporary name and only then renames it to the token, so a file with the token's
name is always locked from the start; a lock found free is removed by whoever found it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import secrets
from collections.abc import Collection
from pathlib import Path

from shared.names import under

TOKEN = re.compile(r"[0-9a-f]{16}")
"""A runner's token: 16 hex characters (what a row or a label carries)."""


class Runner:
    """This process's lock under ``root`` (``DATA/runners``), held from :meth:`hold` until :meth:`release` or
    the process's death."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.token = secrets.token_hex(8)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def hold(self) -> str:
        """Take the lock (once; again is a no-op) and return the token."""
        if self._fd is not None:
            return self.token
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = under(self.root, f".{self.token}.new")
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(temporary, under(self.root, self.token))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._fd = fd
        return self.token

    async def holding(self) -> str:
        """The token, the lock taken first (in a thread: a file's creation and lock) when it is not held yet."""
        return self.token if self._fd is not None else await asyncio.to_thread(self.hold)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(under(self.root, self.token))
        os.close(self._fd)
        self._fd = None


def is_alive(root: Path, token: str) -> bool:
    """Whether a live process holds ``token``'s lock (False for a token that is not one)."""
    if not TOKEN.fullmatch(token):
        return False
    try:
        fd = os.open(under(root, token), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:  # free: its process is gone (it is removed while locked, so no runner can be taking it)
        with contextlib.suppress(OSError):
            os.unlink(under(root, token))
        return False
    finally:
        os.close(fd)


async def dead(root: Path, tokens: Collection[str]) -> set[str]:
    """Which of ``tokens`` no live process holds (``""`` and tokens that are not ones count as dead)."""
    wanted = set(tokens)
    if not wanted:
        return set()
    return await asyncio.to_thread(lambda: {token for token in wanted if not is_alive(root, token)})
