"""The types of backing service on the local provider (postgres, mysql, mariadb, redis, memcached): each one's
port, data directory, default image, credentials, URL, the official image's environment contract, and the
check that its server answers its protocol's greeting over TCP; and a service's :class:`Record` (its row)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar

import aiosqlite

from shared.names import service_kind

PROBE_TIMEOUT = 3.0
HIDDEN = "***"

Talk = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    database: str
    root_password: str = ""


def _secret() -> str:
    return secrets.token_hex(24)


class Kind:
    """One type of backing service: its port, data directory, default image, URL and readiness check."""

    name: ClassVar[str]
    scheme: ClassVar[str]
    port: ClassVar[int]
    data: ClassVar[str]
    default_image: ClassVar[str]

    def credentials(self) -> Credentials:
        return Credentials(username="app", password=_secret(), database="app")

    image_target: ClassVar[str] = ""
    """The ``make images`` image that serves this type offline (``bash images/build.sh NAME``)."""

    def url(self, host: str, creds: Credentials, reveal: bool = False) -> str:
        password = creds.password if reveal else HIDDEN
        return f"{self.scheme}://{creds.username}:{password}@{host}:{self.port}/{creds.database}"

    def environment(self, creds: Credentials) -> dict[str, str]:
        return {}

    def command(self, creds: Credentials) -> list[str] | None:
        return None

    def talk(self, creds: Credentials) -> Talk:
        raise NotImplementedError

    async def ready(self, ip: str, creds: Credentials) -> bool:
        """Whether the server at ``ip`` accepts connections: a TCP connect and its protocol's greeting."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, self.port), PROBE_TIMEOUT)
        except (OSError, TimeoutError):
            return False
        try:
            return await asyncio.wait_for(self.talk(creds)(reader, writer), PROBE_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class Postgres(Kind):
    name = "postgres"
    scheme = "postgres"
    port = 5432
    data = "/var/lib/postgresql/data"
    default_image = "postgres:16"
    image_target = "postgres"

    def environment(self, creds: Credentials) -> dict[str, str]:
        return {"POSTGRES_USER": creds.username, "POSTGRES_PASSWORD": creds.password, "POSTGRES_DB": creds.database}

    def talk(self, creds: Credentials) -> Talk:
        async def startup(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            # A protocol 3.0 startup message: the server answers with an authentication request ('R') once it
            # takes connections for this user and database, with an error ('E') while it is starting up.
            pairs = (("user", creds.username), ("database", creds.database))
            body = struct.pack("!I", 196608) + b"".join(f"{k}\0{v}\0".encode() for k, v in pairs) + b"\0"
            writer.write(struct.pack("!I", len(body) + 4) + body)
            await writer.drain()
            return await reader.readexactly(1) == b"R"

        return startup


class MySQL(Kind):
    name = "mysql"
    scheme = "mysql"
    port = 3306
    data = "/var/lib/mysql"
    default_image = "mysql:8"
    image_target = "mysql"

    def credentials(self) -> Credentials:
        return Credentials(username="app", password=_secret(), database="app", root_password=_secret())

    def environment(self, creds: Credentials) -> dict[str, str]:
        return {
            "MYSQL_ROOT_PASSWORD": creds.root_password,
            "MYSQL_DATABASE": creds.database,
            "MYSQL_USER": creds.username,
            "MYSQL_PASSWORD": creds.password,
        }

    def talk(self, creds: Credentials) -> Talk:
        async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            # The server speaks first: a handshake packet (protocol version 10), or an error packet (0xff).
            header = await reader.readexactly(4)
            payload = await reader.readexactly(int.from_bytes(header[:3], "little"))
            return payload[:1] == b"\x0a"

        return handshake


class Redis(Kind):
    name = "redis"
    scheme = "redis"
    port = 6379
    data = "/data"
    default_image = "redis:7"
    image_target = "redis"

    def credentials(self) -> Credentials:
        return Credentials(username="", password=_secret(), database="0")

    def command(self, creds: Credentials) -> list[str] | None:
        # no wait for more replicas before a snapshot is sent: an export (`redis-cli --rdb`) is the only one
        flags = ["--appendonly", "yes", "--repl-diskless-sync-delay", "0"]
        return ["redis-server", "--requirepass", creds.password, *flags]

    def talk(self, creds: Credentials) -> Talk:
        def command(*args: str) -> bytes:
            parts = [f"*{len(args)}\r\n".encode()]
            for arg in args:
                data = arg.encode()
                parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
            return b"".join(parts)

        async def ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            writer.write(command("AUTH", creds.password) + command("PING"))
            await writer.drain()
            return (await reader.readline()).startswith(b"+OK") and (await reader.readline()).startswith(b"+PONG")

        return ping


class MariaDB(MySQL):
    """The official mariadb image takes the mysql image's MYSQL_* variables too; offline, the mysql image of
    ``make images`` is MariaDB already."""

    name = "mariadb"
    default_image = "mariadb:11"
    image_target = "mysql"


class Memcached(Kind):
    """No credentials and no data on disk (memcached keeps everything in memory): the URL is
    ``memcached://NAME:11211``."""

    name = "memcached"
    scheme = "memcached"
    port = 11211
    data = ""
    default_image = "memcached:1.6"
    image_target = "memcached"

    def credentials(self) -> Credentials:
        return Credentials(username="", password="", database="")

    def url(self, host: str, creds: Credentials, reveal: bool = False) -> str:
        return f"{self.scheme}://{host}:{self.port}"

    def talk(self, creds: Credentials) -> Talk:
        async def version(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            writer.write(b"version\r\n")  # the text protocol
            await writer.drain()
            return (await reader.readline()).startswith(b"VERSION ")

        return version


KINDS: dict[str, Kind] = {kind.name: kind for kind in (Postgres(), MySQL(), MariaDB(), Redis(), Memcached())}
PARAM_DEFAULTS: dict[str, str] = {f"{name}_image": kind.default_image for name, kind in KINDS.items()}


@dataclass(frozen=True)
class Record:
    name: str
    kind: Kind
    status: str
    image: str
    creds: Credentials
    message: str = ""

    @classmethod
    def from_row(cls, row: aiosqlite.Row) -> Record:
        creds = Credentials(row["username"], row["password"], row["database"], row["root_password"])
        return cls(row["name"], KINDS[row["type"]], row["status"], row["image"], creds, row["message"])

    def scrub(self, text: str) -> str:
        """``text`` without this service's passwords (docker's output can echo its environment)."""
        for secret in (self.creds.password, self.creds.root_password):
            if secret:
                text = text.replace(secret, HIDDEN)
        return text


def kind_of(kind: str) -> Kind:
    return service_kind(KINDS, kind)
