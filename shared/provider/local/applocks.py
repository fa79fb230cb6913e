"""One app's formation lock, held across the rack's processes on this host.

Formation changes an app's processes from more than one process: the owner of the background work rolls
releases out, adopts and reconciles (:meth:`shared.provider.local.LocalProvider.workers`), while the apps
service scales, restarts and deletes. Each of those holds the app's :class:`AppLock`: an ``asyncio.Lock``
for this process's tasks, then an exclusive ``flock`` on ``DATA/run/formation/APP.lock``, which the kernel
drops the moment its process dies (``kill -9`` included), so a dead holder never keeps an app locked.
The flock is taken without blocking and tried again every :data:`POLL_SECONDS`, so a wait is cancellable.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from shared.names import under

POLL_SECONDS = 0.05
"""How often a wait for a lock held by another process tries again."""


def _take(path: Path) -> int | None:
    """The file's descriptor holding its flock, or ``None`` when another holder has it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


class AppLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = asyncio.Lock()
        self._fd: int | None = None

    def locked(self) -> bool:
        """Whether a task of this process or another process holds it."""
        if self._local.locked():
            return True
        fd = _take(self.path)
        if fd is None:
            return True
        os.close(fd)
        return False

    async def __aenter__(self) -> None:
        await self._local.acquire()
        try:
            while True:
                fd = _take(self.path)
                if fd is not None:
                    break
                await asyncio.sleep(POLL_SECONDS)  # another process holds it: nothing here to wait on
        except BaseException:
            self._local.release()
            raise
        self._fd = fd

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._local.release()


class AppLocks:
    """The apps' locks under ``root`` (``DATA/run/formation``), one :class:`AppLock` per app in this process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.held: dict[str, AppLock] = {}

    def __call__(self, app: str) -> AppLock:
        lock = self.held.get(app)
        if lock is None:
            lock = self.held[app] = AppLock(under(self.root, f"{app}.lock"))
        return lock
