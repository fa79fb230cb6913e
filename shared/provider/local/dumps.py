"""Logical dumps of backing services on the local provider: `convox services export` and `import`.

Every tool runs in the service's own container (``docker exec``, so its version is the server's), as the
image's service user, reaching the server on the container's loopback with the credentials in its
environment (never on its command line):

- postgres: ``pg_dump --clean --if-exists --no-owner --no-privileges``, plain SQL that drops each object it
  makes; loaded by ``psql -v ON_ERROR_STOP=1`` in one transaction committed once the whole dump has come:
  all of it or, at the first error (or a dump cut short), none.
- mysql: ``mysqldump --single-transaction --routines --triggers --events`` (as root, over the unix socket;
  mariadb: the same with its own names, ``mariadb-dump`` and ``mariadb``);
  loaded by ``mysql``, which stops at the first error (what ran before it stays: MySQL's DDL is not
  transactional).
- redis: ``redis-cli --rdb -``, an RDB file (Redis's own snapshot, every database, with expiries). Loading
  one replaces the data set: the file is checked (``redis-check-rdb``), served by a helper ``redis-server``
  on the container's loopback, and the service replicates it (``REPLICAOF``, Redis's own full resync: it
  flushes and loads the helper's snapshot), then is made a primary again and its append-only file rewritten.

Bytes are streamed both ways: the engine's connection is read only as fast as the consumer takes what was
read, and written only as fast as the tool reads, so a dump of any size holds a bounded buffer. A tool that
fails is an error with its exit code and the line of its stderr that says why, never a silent success.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from shared.errors import BadRequest, RackError
from shared.logfmt import Logger
from shared.provider.engine.exec import ExecStream
from shared.provider.local.docker import Docker
from shared.stream import Channel, Terminal

if TYPE_CHECKING:
    from shared.provider.local.resource_kinds import Credentials

log = Logger("resources")
TAIL = 16 << 10
"""How much of a tool's stderr (and of a loading tool's stdout) is kept to say why it failed."""
WHY = re.compile(r"error|fatal|failed|denied|refused|invalid|unknown|not found", re.IGNORECASE)
IMPORT_DIR = "/tmp/convox-import"
"""Where a redis import's RDB file is received in the service's container (removed when the import ends)."""

Scrub = Callable[[str], str]


@dataclass(frozen=True)
class Tool:
    """A command run in the service's container: its name in messages, argv, environment and user. One that
    reads a dump gets ``before`` ahead of it and ``after`` behind it, only once the whole dump has come, and
    must then write ``reached`` on its stdout (that it has read what came after the dump, not taken it as
    part of a statement or of COPY data left open)."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    before: bytes = b""
    after: bytes = b""
    reached: bytes = b""


class Framer:
    """What reaches the consumer of an export's output: as it is."""

    def feed(self, chunk: bytes) -> bytes:
        return chunk

    def end(self, said: str) -> bytes:
        """The rest, once the tool has ended well; ``said`` is its stderr."""
        return b""


class EofMarkFramer(Framer):
    """``redis-cli --rdb -`` of a diskless transfer writes the replication stream's 40-byte end mark after the
    RDB (it cannot truncate a pipe as it truncates a file); its stderr says so and how long the RDB is. The
    last 40 bytes are held back until then, and dropped when they are the mark."""

    MARK = 40
    SAID = re.compile(r"after (\d+) bytes")

    def __init__(self) -> None:
        self.held = b""
        self.sent = 0

    def feed(self, chunk: bytes) -> bytes:
        if len(chunk) >= self.MARK:
            out, self.held = self.held + chunk[: -self.MARK], chunk[-self.MARK :]
        else:
            data = self.held + chunk
            out, self.held = data[: -self.MARK], data[-self.MARK :]
        self.sent += len(out)
        return out

    def end(self, said: str) -> bytes:
        if "EOF marker" not in said:
            return self.held
        length = self.SAID.search(said)
        if length is not None and int(length.group(1)) != self.sent:
            raise RackError(f"redis-cli sent {self.sent} bytes of an RDB of {length.group(1)}", status=502)
        return b""


class Format:
    """How one type of service is dumped and loaded."""

    kind: ClassVar[str]

    def export(self, creds: Credentials, port: int) -> Tool:
        raise NotImplementedError

    def load(self, creds: Credentials, port: int) -> Tool:
        """The tool that reads the dump on its stdin."""
        raise NotImplementedError

    def finish(self, creds: Credentials, port: int) -> Tool | None:
        """What runs once the dump is loaded by :meth:`load` (without stdin), if anything."""
        return None

    def abandon(self) -> Tool | None:
        """What clears up after a load that did not finish, if anything."""
        return None

    def framer(self) -> Framer:
        return Framer()


class PostgresFormat(Format):
    kind = "postgres"

    def _env(self, creds: Credentials) -> dict[str, str]:
        return {"PGPASSWORD": creds.password, "PGOPTIONS": "-c client_min_messages=warning"}

    def _target(self, creds: Credentials, port: int) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(port), "-U", creds.username, "-d", creds.database, "-w"]

    def export(self, creds: Credentials, port: int) -> Tool:
        argv = ["pg_dump", *self._target(creds, port), "--clean", "--if-exists", "--no-owner", "--no-privileges"]
        return Tool("pg_dump", argv, self._env(creds), "postgres")

    def load(self, creds: Credentials, port: int) -> Tool:
        # One transaction, committed only when the whole dump has come: a dump cut short (the client went away)
        # reaches psql's EOF without the COMMIT, and the server rolls everything back (psql's own
        # --single-transaction would commit at EOF what it had read).
        argv = ["psql", *self._target(creds, port), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", "/dev/null"]
        marker = b"convox-import-committed"
        after = b"\n;\nCOMMIT;\n\\echo " + marker + b"\n"
        return Tool("psql", argv, self._env(creds), "postgres", before=b"BEGIN;\n", after=after, reached=marker)


class MySQLFormat(Format):
    kind = "mysql"
    dump_tool, client = "mysqldump", "mysql"

    def export(self, creds: Credentials, port: int) -> Tool:
        argv = [
            self.dump_tool, "-uroot", "--single-transaction", "--routines", "--triggers", "--events",
            "--no-tablespaces", "--hex-blob", creds.database,
        ]  # fmt: skip
        return Tool(self.dump_tool, argv, {"MYSQL_PWD": creds.root_password}, "mysql")

    def load(self, creds: Credentials, port: int) -> Tool:
        argv = [self.client, "-uroot", creds.database]
        return Tool(self.client, argv, {"MYSQL_PWD": creds.root_password}, "mysql")


class MariaDBFormat(MySQLFormat):
    """MariaDB's own names for the same tools: its images from 11.0 on have no ``mysql*`` names."""

    kind = "mariadb"
    dump_tool, client = "mariadb-dump", "mariadb"


REDIS_FINISH = r"""
set -u
dir=$1
pid=
replicating=
fail() { printf 'error: %s\n' "$*" >&2; exit "${code:-1}"; }
target() { redis-cli -p "$TARGET_PORT" "$@"; }
helper() { REDISCLI_AUTH="$HELPER_AUTH" redis-cli -p "$HELPER_PORT" "$@"; }
cleanup() {
  if [ -n "$replicating" ]; then
    target replicaof no one >/dev/null 2>&1
    target config set masterauth "" >/dev/null 2>&1
  fi
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
if ! redis-check-rdb "$dir/dump.rdb" >"$dir/check.log" 2>&1; then
  why=$(grep -v -e '^\[info\]' -e 'Checking RDB file' -e 'RDB ERROR DETECTED' "$dir/check.log" | head -n 1 |
    sed 's/^\[offset [0-9]*\] //')
  code=2 fail "the dump is not an RDB file this redis can load (${why:-redis-check-rdb refused it})"
fi
printf 'requirepass %s\n' "$HELPER_AUTH" | redis-server - --port "$HELPER_PORT" --bind 127.0.0.1 --dir "$dir" \
  --dbfilename dump.rdb --appendonly no --save '' --repl-diskless-sync-delay 0 --logfile "$dir/helper.log" &
pid=$!
i=0
until [ "$(helper ping 2>/dev/null)" = PONG ]; do
  if ! kill -0 "$pid" 2>/dev/null; then
    why=$(tail -n 1 "$dir/helper.log" 2>/dev/null | sed 's/^[^#*]*[#*] //')
    code=2 fail "the dump did not load (${why:-the server that reads it ended})"
  fi
  i=$((i + 1)); [ "$i" -lt 36000 ] || fail "the dump was not read within an hour"
  sleep 0.1
done
replicating=1
target config set masterauth "$HELPER_AUTH" >/dev/null || fail "cannot set masterauth on the service"
target replicaof 127.0.0.1 "$HELPER_PORT" >/dev/null || fail "the service refused REPLICAOF"
i=0
until target info replication | grep -q '^master_link_status:up'; do
  kill -0 "$pid" 2>/dev/null || fail "the server that reads the dump ended before the service copied it"
  i=$((i + 1)); [ "$i" -lt 36000 ] || fail "the service did not copy the dump within an hour"
  sleep 0.1
done
target replicaof no one >/dev/null || fail "the service could not be made a primary again"
target config set masterauth "" >/dev/null
replicating=
while target info persistence | grep -Eq '^aof_rewrite_(in_progress|scheduled):1'; do sleep 0.1; done
"""


class RedisFormat(Format):
    kind = "redis"

    def export(self, creds: Credentials, port: int) -> Tool:
        argv = ["redis-cli", "-p", str(port), "--rdb", "-"]
        return Tool("redis-cli", argv, {"REDISCLI_AUTH": creds.password}, "redis")

    def load(self, creds: Credentials, port: int) -> Tool:
        receive = 'rm -rf "$1" && mkdir -m 700 "$1" && exec cat > "$1/dump.rdb"'
        return Tool("redis import", ["sh", "-c", receive, "sh", IMPORT_DIR], user="redis")

    def finish(self, creds: Credentials, port: int) -> Tool | None:
        env = {
            "REDISCLI_AUTH": creds.password,
            "TARGET_PORT": str(port),
            "HELPER_PORT": str(20000 + secrets.randbelow(40000)),
            "HELPER_AUTH": secrets.token_hex(24),
        }
        return Tool("redis import", ["sh", "-c", REDIS_FINISH, "sh", IMPORT_DIR], env, "redis")

    def abandon(self) -> Tool | None:
        return Tool("redis import", ["rm", "-rf", IMPORT_DIR], user="redis")

    def framer(self) -> Framer:
        return EofMarkFramer()


FORMATS: dict[str, Format] = {f.kind: f for f in (PostgresFormat(), MySQLFormat(), MariaDBFormat(), RedisFormat())}


def dumpable(kind: str) -> None:
    """BadRequest for a type of service that keeps no data to dump (memcached: a cache)."""
    if kind not in FORMATS:
        raise BadRequest(f"{kind} services keep no data to export or import (types with dumps: {', '.join(FORMATS)})")


class Tail:
    """The last ``TAIL`` bytes of one of a tool's outputs."""

    def __init__(self) -> None:
        self.data = bytearray()

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > 2 * TAIL:
            del self.data[:-TAIL]

    def text(self, scrub: Scrub) -> str:
        return scrub(bytes(self.data[-TAIL:]).decode("utf-8", "replace"))


def why(said: str) -> str:
    """The line of a tool's stderr that says why it failed: the last that names an error, else the last."""
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    named = [line for line in lines if WHY.search(line)]
    chosen = (named or lines or [""])[-1]
    return chosen[:500]


class ToolFailed(RackError):
    """A tool that exited with a code other than 0: the message has the line of its stderr that says why (for
    the client; it may quote the data, so :attr:`brief` is what a log line shows)."""

    def __init__(self, tool: Tool, code: int, said: str, status: int) -> None:
        self.brief = f"{tool.name} exited with code {code}"
        reason = why(said)
        super().__init__(self.brief + (f": {reason}" if reason else ""), status=status)


class DumpRefused(ToolFailed, BadRequest):
    """A tool that refused its input (a dump it cannot load): a :class:`~shared.errors.BadRequest`."""


async def export(
    docker: Docker, container_id: str, kind: str, creds: Credentials, port: int, scrub: Scrub
) -> AsyncGenerator[bytes]:
    """Run the kind's dump tool in the container and yield what it writes, as it writes it."""
    spec = FORMATS[kind]
    tool = spec.export(creds, port)
    framer = spec.framer()
    errors = Tail()
    process = ExecStream(docker, container_id, tool.argv, tool.env, tool.user)
    try:
        await process.start(Terminal())
        async for channel, chunk in process.output():
            if channel == Channel.STDOUT:
                data = framer.feed(bytes(chunk))
                if data:
                    yield data
            else:
                errors.add(bytes(chunk))
        code = await process.wait()
        said = errors.text(scrub)
        if code:
            raise ToolFailed(tool, code, said, 502)
        rest = framer.end(said)
        if rest:
            yield rest
    finally:
        await process.close()


async def run(
    docker: Docker, container_id: str, tool: Tool, scrub: Scrub, stdin: AsyncIterable[bytes] | None = None
) -> None:
    """Run ``tool`` in the container with ``stdin`` (then EOF) as its input; :class:`DumpRefused` (400: the
    dump was refused) when it fails. An exception from ``stdin`` ends the tool and is raised."""
    process = ExecStream(docker, container_id, tool.argv, tool.env, tool.user)
    errors, said = Tail(), Tail()

    async def drain() -> None:
        async for channel, chunk in process.output():
            (errors if channel == Channel.STDERR else said).add(bytes(chunk))

    async def send() -> None:
        if stdin is not None:
            if tool.before:
                await process.write(tool.before)
            async for chunk in stdin:
                await process.write(chunk)
            if tool.after:
                await process.write(tool.after)
        await process.close_stdin()

    try:
        await process.start(Terminal())
        reading, writing = asyncio.create_task(drain()), asyncio.create_task(send())
        try:
            done, _ = await asyncio.wait({reading, writing}, return_when=asyncio.FIRST_COMPLETED)
            if writing in done:
                writing.result()
                await reading
            else:  # the tool ended (its output closed) before it had read everything: its exit code tells
                reading.result()
        finally:
            for task in (reading, writing):
                task.cancel()
            await asyncio.gather(reading, writing, return_exceptions=True)
        code = await process.wait()
    finally:
        await process.close()
    if code:
        raise DumpRefused(tool, code, errors.text(scrub), 400)
    if tool.reached and tool.reached not in said.data:
        raise BadRequest(
            f"{tool.name} did not reach the end of the dump (it ends inside a statement or in COPY data): "
            "nothing of it was committed"
        )


_finishing: set[asyncio.Task[None]] = set()
"""Finishes under way (kept referenced: a task only weakly held could be collected while it runs)."""


def _log_failure(task: asyncio.Task[None]) -> None:
    """The end of a finish whose caller went away: nobody else hears of its failure."""
    if not task.cancelled() and task.exception() is not None:
        failed = task.exception()
        log.error("resource.import.finish", message=failed.brief if isinstance(failed, ToolFailed) else str(failed))


async def load(
    docker: Docker,
    container_id: str,
    kind: str,
    creds: Credentials,
    port: int,
    scrub: Scrub,
    dump: AsyncIterable[bytes],
) -> None:
    """Load ``dump`` into the service with the kind's tools."""
    spec = FORMATS[kind]
    try:
        await run(docker, container_id, spec.load(creds, port), scrub, dump)
    except BaseException:
        leftover = spec.abandon()
        if leftover is not None:
            with contextlib.suppress(RackError):
                await asyncio.shield(run(docker, container_id, leftover, scrub))
        raise
    finish = spec.finish(creds, port)
    if finish is not None:
        # once the data set is being replaced, it is seen to the end even if the caller goes away
        task = asyncio.ensure_future(run(docker, container_id, finish, scrub))
        _finishing.add(task)
        task.add_done_callback(_finishing.discard)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_log_failure)
            raise
