"""`convox services export` / `import` on the session's rack, with the offline images of `make images`: for
postgres, mysql, mariadb and redis, data put into a service comes back after an export, a change (or loss) of
the data and an import; a dump that is garbage fails with `ERROR: ...` and a non-zero exit while the service
keeps its data and keeps working; memcached has nothing to dump. One service per type, shared by the module's
tests."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, RunningRack
from tests.test_services import LOCAL_IMAGES, api, docker, require_images, service_container

GARBAGE = b"this is not a dump \x00\xff at all\n" * 100


@pytest.fixture(scope="module")
def user(rack: RunningRack, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    require_images()
    with api(rack) as client:
        response = client.post("/system/params", json=LOCAL_IMAGES)
        assert response.status_code == 200, response.text
    work = tmp_path_factory.mktemp("dumps-user")
    env = rack.env(work / "config")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return Cli(env, work)


def service(user: Cli, kind: str) -> Iterator[str]:
    name = f"{kind[:5]}-dump-{secrets.token_hex(2)}"
    created = user("services", "create", kind, "--name", name, timeout=300)
    assert created.returncode == 0, created.stderr
    try:
        yield name
    finally:
        user("services", "delete", name, timeout=120)


@pytest.fixture(scope="module")
def postgres(user: Cli) -> Iterator[str]:
    yield from service(user, "postgres")


@pytest.fixture(scope="module")
def mysql(user: Cli) -> Iterator[str]:
    yield from service(user, "mysql")


@pytest.fixture(scope="module")
def mariadb(user: Cli) -> Iterator[str]:
    yield from service(user, "mariadb")


@pytest.fixture(scope="module")
def redis(user: Cli) -> Iterator[str]:
    yield from service(user, "redis")


def convox(user: Cli, *args: str, stdin: Path | None = None, stdout: Path | None = None) -> tuple[int, str]:
    """`convox ARGS` with binary stdin/stdout redirected to files (as `< dump` and `> dump` do); (exit, stderr)."""
    with (
        stdin.open("rb") if stdin else open("/dev/null", "rb") as given,
        stdout.open("wb") if stdout else open("/dev/null", "wb") as taken,
    ):
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", *args], stdin=given, stdout=taken, stderr=subprocess.PIPE,
            env=user.env, cwd=user.cwd, timeout=300, check=False,
        )  # fmt: skip
    return done.returncode, done.stderr.decode()


def in_service(rack: RunningRack, name: str, *command: str, stdin: bytes | None = None) -> str:
    """``command`` in the service's own container (its server's clients are there)."""
    done = subprocess.run(
        ["docker", "exec", "-i", service_container(rack.name, name), *command],
        input=stdin, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def refused_garbage(user: Cli, name: str, tmp_path: Path, tool: str) -> str:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(GARBAGE)
    code, stderr = convox(user, "services", "import", name, stdin=garbage)
    assert code != 0, stderr
    assert f"ERROR: {tool} exited with code " in stderr, stderr
    return stderr


def test_postgres_round_trips_through_export_and_import(
    user: Cli, rack: RunningRack, postgres: str, tmp_path: Path
) -> None:
    def sql(statement: str) -> str:
        return in_service(rack, postgres, "psql", "-U", "app", "-d", "app", "-v", "ON_ERROR_STOP=1", "-tA",
                          "-c", statement).strip()  # fmt: skip

    sql("create table kept (id int primary key, v text); create index kept_v on kept (v); "
        "insert into kept select i, 'row ' || i || ' é' from generate_series(1, 50000) i")  # fmt: skip
    digest = "select count(*), md5(string_agg(v, ',' order by id)) from kept"
    before = sql(digest)
    dump = tmp_path / "pg.sql"
    code, stderr = convox(user, "services", "export", postgres, stdout=dump)
    assert code == 0, stderr
    assert f"Exporting {postgres}" in stderr
    assert b"CREATE TABLE public.kept" in dump.read_bytes() and dump.stat().st_size > 800_000

    sql("delete from kept where id > 10; insert into kept values (0, 'new'); drop index kept_v")
    code, stderr = convox(user, "services", "import", postgres, stdin=dump)
    assert code == 0, stderr
    assert f"Importing {postgres}" in stderr
    assert sql(digest) == before
    assert sql("select indexname from pg_indexes where tablename = 'kept' order by 1") == "kept_pkey\nkept_v"

    stderr = refused_garbage(user, postgres, tmp_path, "psql")
    assert "syntax error" in stderr
    assert sql(digest) == before  # one transaction: nothing of the garbage, nothing lost

    sql("delete from kept where id > 10")
    cut = tmp_path / "cut.sql"
    cut.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])  # ends in the middle of COPY's rows
    code, stderr = convox(user, "services", "import", postgres, stdin=cut)
    assert code != 0 and "ERROR: psql exited with code 3" in stderr, stderr
    assert sql("select count(*) from kept") == "10"  # nothing of it committed


@pytest.mark.parametrize("kind", ["mysql", "mariadb"])
def test_mysql_and_mariadb_round_trip_through_export_and_import(
    user: Cli, rack: RunningRack, kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    mysql: str = request.getfixturevalue(kind)
    tool = "mysql" if kind == "mysql" else "mariadb"
    password = docker("inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", service_container(rack.name, mysql))
    root = next(line.split("=", 1)[1] for line in password.splitlines() if line.startswith("MYSQL_ROOT_PASSWORD="))

    def sql(statement: str) -> str:
        return in_service(rack, mysql, "env", f"MYSQL_PWD={root}", "mysql", "-uroot", "-N", "-B", "app",
                          "-e", statement).strip()  # fmt: skip

    sql("create table kept (id int primary key, v varchar(40), b blob); "
        "insert into kept values (1, 'héllo', x'00ff10'), (2, 'world', null); "
        "create view kept_v as select id from kept")  # fmt: skip
    digest = "select count(*), md5(group_concat(v, hex(b) order by id)) from kept"
    before = sql(digest)
    dump = tmp_path / "my.sql"
    code, stderr = convox(user, "services", "export", mysql, "--file", str(dump))
    assert code == 0, stderr
    assert b"CREATE TABLE `kept`" in dump.read_bytes()
    assert not list(tmp_path.glob(".my.sql.*"))  # written beside, then renamed

    sql("drop view kept_v; drop table kept")
    code, stderr = convox(user, "services", "import", mysql, "--file", str(dump))
    assert code == 0, stderr
    assert sql(digest) == before
    assert sql("select count(*) from kept_v") == "2"

    stderr = refused_garbage(user, mysql, tmp_path, tool)
    assert f"ERROR: {tool} exited with code 1: ERROR: ASCII '\\0' appeared in the statement" in stderr, stderr
    assert sql(digest) == before


def test_redis_round_trips_through_export_and_import(user: Cli, rack: RunningRack, redis: str, tmp_path: Path) -> None:
    password = docker("inspect", "-f", "{{json .Config.Cmd}}", service_container(rack.name, redis))
    secret = password.split('"--requirepass","', 1)[1].split('"', 1)[0]

    def cli(*command: str, stdin: bytes | None = None) -> str:
        return in_service(rack, redis, "env", f"REDISCLI_AUTH={secret}", "redis-cli", *command, stdin=stdin).strip()

    cli("set", "greeting", "hello")
    cli("rpush", "queue", "a", "b", "c")
    cli("hset", "user:1", "name", "ada", "lang", "en")
    cli("set", "expiring", "soon", "ex", "3600")
    cli("-n", "2", "set", "other-db", "kept")
    bulk = b"".join(b"SET bulk:%d %s\r\n" % (i, secrets.token_hex(50).encode()) for i in range(20000))
    cli("--pipe", stdin=bulk)  # 2 MB that do not compress: many messages each way
    dump = tmp_path / "cache.rdb"
    code, stderr = convox(user, "services", "export", redis, "--file", str(dump))
    assert code == 0, stderr
    data = dump.read_bytes()
    assert data.startswith(b"REDIS") and len(data) > 20000 * 100
    checked = subprocess.run(
        ["docker", "exec", "-i", service_container(rack.name, redis), "sh", "-c",
         "cat > /tmp/check.rdb && redis-check-rdb /tmp/check.rdb; rm -f /tmp/check.rdb"],
        input=data, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0 and b"RDB looks OK" in checked.stdout, checked.stdout  # nothing after it

    cli("flushall")
    cli("set", "stray", "gone after the import")
    code, stderr = convox(user, "services", "import", redis, stdin=dump)
    assert code == 0, stderr
    assert cli("get", "greeting") == "hello"
    assert cli("lrange", "queue", "0", "-1").split() == ["a", "b", "c"]
    assert cli("hget", "user:1", "name") == "ada"
    assert 0 < int(cli("ttl", "expiring")) <= 3600
    assert cli("-n", "2", "get", "other-db") == "kept"
    assert cli("dbsize") == str(20000 + 4)
    assert cli("exists", "stray") == "0"  # the data set is replaced, not merged
    assert "role:master" in cli("info", "replication")
    assert cli("config", "get", "masterauth").split()[1:] in ([], [""])

    stderr = refused_garbage(user, redis, tmp_path, "redis import")
    assert "not an RDB file" in stderr
    assert cli("get", "greeting") == "hello"
    cli("set", "after", "garbage")  # still a writable primary
    assert cli("get", "after") == "garbage"


def test_export_and_import_refuse_clearly(user: Cli, rack: RunningRack, redis: str, tmp_path: Path) -> None:
    for verb in ("export", "import"):
        code, stderr = convox(user, "services", verb, "no-such-service")
        assert code != 0 and "ERROR: no such service: no-such-service" in stderr, stderr
        with api(rack) as client:  # a plain GET of the websocket's path
            plain = client.get(f"/services/{redis}/{verb}")
        assert plain.status_code == 426 and "websocket" in plain.json()["error"]
    missing = user("services", "import", redis, "--file", str(tmp_path / "missing.rdb"))
    assert missing.returncode != 0 and "ERROR: cannot read" in missing.stderr


def test_a_memcached_service_has_nothing_to_export_or_import(user: Cli, tmp_path: Path) -> None:
    for name in service(user, "memcached"):
        dump = tmp_path / "cache"
        dump.write_bytes(b"x")
        for verb in ("export", "import"):
            code, stderr = convox(user, "services", verb, name, "--file", str(dump))
            assert code != 0 and "ERROR: memcached services keep no data to export or import" in stderr, stderr
        assert dump.read_bytes() == b"x"
