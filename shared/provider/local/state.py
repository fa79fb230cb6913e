"""The local provider's state: one SQLite file under the data dir, through aiosqlite (off the loop)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
    name TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    release TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS builds (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    status TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    manifest TEXT NOT NULL DEFAULT '',
    release TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    started TEXT,
    ended TEXT,
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS builds_app ON builds (app, created);
CREATE TABLE IF NOT EXISTS releases (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    app TEXT NOT NULL,
    build TEXT NOT NULL DEFAULT '',
    env TEXT NOT NULL DEFAULT '{}',
    manifest TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS releases_app ON releases (app, seq);
CREATE TABLE IF NOT EXISTS formation (
    app TEXT NOT NULL,
    service TEXT NOT NULL,
    count INTEGER,
    memory INTEGER,
    balancer_port INTEGER,
    balancer_scheme TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (app, service)
);
CREATE TABLE IF NOT EXISTS listeners (
    app TEXT NOT NULL,
    service TEXT NOT NULL,
    container_port INTEGER NOT NULL,
    port INTEGER NOT NULL,
    scheme TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (app, service, container_port)
);
CREATE TABLE IF NOT EXISTS resources (
    name TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    image TEXT NOT NULL,
    username TEXT NOT NULL DEFAULT '',
    password TEXT NOT NULL DEFAULT '',
    database TEXT NOT NULL DEFAULT '',
    root_password TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS links (
    resource TEXT NOT NULL,
    app TEXT NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (resource, app)
);
CREATE TABLE IF NOT EXISTS manifest_resources (
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    resource TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    PRIMARY KEY (app, name)
);
CREATE TABLE IF NOT EXISTS params (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    app TEXT NOT NULL,
    time TEXT NOT NULL,
    service TEXT NOT NULL,
    release TEXT NOT NULL DEFAULT '',
    pid TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS timers (
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    schedule TEXT NOT NULL,
    next_run TEXT NOT NULL,
    last_run TEXT,
    last_exit INTEGER,
    running TEXT NOT NULL DEFAULT '',
    started REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (app, name)
);
CREATE TABLE IF NOT EXISTS log_receipts (
    container TEXT PRIMARY KEY,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS execs (
    id TEXT PRIMARY KEY,
    container TEXT NOT NULL,
    runner TEXT NOT NULL,
    created REAL NOT NULL,
    mark TEXT NOT NULL DEFAULT '',
    user TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS log_sources (
    src TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    cursor TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    updated TEXT NOT NULL
);
"""
INDEXES = """
CREATE INDEX IF NOT EXISTS builds_unfinished ON builds (runner)
    WHERE status IN ('created', 'running') OR (status = 'complete' AND release = '');
"""
"""Indexes over added columns: made once the columns are there."""
ADDED_COLUMNS = (
    ("formation", "balancer_scheme", "TEXT NOT NULL DEFAULT ''"),
    ("resources", "message", "TEXT NOT NULL DEFAULT ''"),
    ("builds", "runner", "TEXT NOT NULL DEFAULT ''"),
    ("resources", "runner", "TEXT NOT NULL DEFAULT ''"),
    ("execs", "mark", "TEXT NOT NULL DEFAULT ''"),
    ("execs", "user", "TEXT NOT NULL DEFAULT ''"),
)
"""Columns added since a table was first made: a data dir from before gets them at open."""


def _private(path: Path) -> None:
    """The database and its WAL files readable by the rack's user only (0600), whatever made them before."""
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(file, 0o600)


class Transaction:
    """Statements of one SQLite transaction, begun IMMEDIATE: it holds the file's write lock from its first
    read, so a read-modify-write in it cannot interleave with another process's (every service opens the
    same file) and a kill in the middle leaves none of it."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Row | None:
        async with self.db.execute(sql, tuple(params)) as cursor:
            return await cursor.fetchone()

    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        async with self.db.execute(sql, tuple(params)) as cursor:
            return list(await cursor.fetchall())

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        cursor = await self.db.execute(sql, tuple(params))
        return cursor.rowcount


class State:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        """One transaction at a time on this process's connection, and no lone statement inside one (its
        commit would commit the other's half)."""

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the busy timeout first: the rack's services open the same new file at once, and switching it to
        # WAL takes a lock the others must wait for rather than fail on
        db = await aiosqlite.connect(self.path, timeout=15)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA busy_timeout=15000")
        for attempt in range(150):  # SQLite skips the busy handler where waiting could deadlock: asked again
            try:
                await db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 149:
                    await db.close()
                    raise
                await asyncio.sleep(0.1)
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.executescript(SCHEMA)
        for table, column, kind in ADDED_COLUMNS:
            async with db.execute(f"PRAGMA table_info({table})") as cursor:
                have = {row["name"] for row in await cursor.fetchall()}
            if column not in have:
                try:
                    await db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                except sqlite3.OperationalError as exc:  # another service of the rack added it meanwhile
                    if "duplicate column" not in str(exc):
                        raise
        await db.executescript(INDEXES)
        await db.commit()
        self._db = db
        await asyncio.to_thread(_private, self.path)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("state is not open")
        return self._db

    async def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Row | None:
        async with self._lock, self.db.execute(sql, tuple(params)) as cursor:
            return await cursor.fetchone()

    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        async with self._lock, self.db.execute(sql, tuple(params)) as cursor:
            return list(await cursor.fetchall())

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """Several statements that land together or not at all: committed when the block ends, rolled back
        when it raises (or is cancelled)."""
        async with self._lock:
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(db)
            except BaseException:
                await db.rollback()
                raise
            await db.commit()

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one statement in its own transaction; returns the rows it changed. A statement that fails
        (a constraint) rolls back: an open transaction would lock every other process's writes."""
        async with self._lock:
            try:
                cursor = await self.db.execute(sql, tuple(params))
            except BaseException:
                await self.db.rollback()
                raise
            await self.db.commit()
            return cursor.rowcount
