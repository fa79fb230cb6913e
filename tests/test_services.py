"""Backing services end to end, on real containers: `convox services create` postgres, mysql and redis from
the offline images of `make images` (set as the rack params), linked into an app deployed from a base image
with the clients, reached from the app as the seed shows (`convox run web 'psql $POSTGRES_URL ...'`), data
that outlives a restart of the service's container and of the rack, and bad input refused cleanly."""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RACK_NAME, Cli, RunningRack, start_rack, stop_rack

SAMPLE = Path(__file__).parent / "apps" / "clients"
SUITE = "bookworm"
LOCAL_IMAGES = {
    **{f"{kind}_image": f"rack-local/{kind}:{SUITE}" for kind in ("postgres", "mysql", "redis", "memcached")},
    "mariadb_image": f"rack-local/mysql:{SUITE}",  # MariaDB already
}
CLIENTS_IMAGE = f"rack-local/clients:{SUITE}"
HEX_PASSWORD = re.compile(r":([0-9a-f]{48})@")


def docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.stderr}")
    return result.stdout


def require_images() -> None:
    missing = [
        image
        for image in [*LOCAL_IMAGES.values(), CLIENTS_IMAGE]
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode
    ]
    if missing:
        pytest.fail(f"missing images {', '.join(missing)}: run `make images` (`make test` does)")


def remove_services(rack: str) -> None:
    """Every backing-service container and volume of ``rack`` (the volumes outlive their containers)."""
    ids = docker("ps", "-aq", "--filter", f"label=convox.rack={rack}", "--filter", "label=convox.resource").split()
    if ids:
        docker("rm", "-f", "-v", *ids, check=False)
    volumes = docker("volume", "ls", "-q", "--filter", f"label=convox.rack={rack}").split()
    if volumes:
        docker("volume", "rm", "-f", *volumes, check=False)


def api(rack: RunningRack) -> httpx.Client:
    return rack.client(timeout=300)


def service_container(rack: str, name: str) -> str:
    ids = docker("ps", "-q", "--filter", f"label=convox.rack={rack}", "--filter", f"label=convox.resource={name}")
    (found,) = ids.split()
    return found


def app_container(rack: str, app: str) -> str:
    ids = docker("ps", "-q", "--filter", f"label=convox.rack={rack}", "--filter", f"label=convox.app={app}")
    (found,) = ids.split()
    return found


def container_env(container: str) -> dict[str, str]:
    lines = docker("inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", container).splitlines()
    return dict(line.partition("=")[::2] for line in lines if line)


def table(text: str) -> dict[str, list[str]]:
    rows = [line.split() for line in text.splitlines()]
    return {row[0]: row[1:] for row in rows[1:] if row}


def info(user: Cli, name: str, *flags: str) -> dict[str, str]:
    lines = user("services", "info", name, *flags, check=True).stdout.splitlines()
    return {key: value.strip() for key, _, value in (line.partition(" ") for line in lines)}


def eventually(check: Callable[[], bool], within: float = 60, message: str = "") -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(message or "the condition did not hold in time")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def services_rack(rack: RunningRack) -> Iterator[RunningRack]:
    """The session's rack with the offline images as its backing-service images."""
    require_images()
    with api(rack) as client:
        response = client.post("/system/params", json=LOCAL_IMAGES)
        assert response.status_code == 200, response.text
    try:
        yield rack
    finally:
        remove_services(rack.name)


@pytest.fixture(scope="module")
def user(services_rack: RunningRack, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    work = tmp_path_factory.mktemp("services-user")
    env = services_rack.env(work / "config")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return Cli(env, work)


@pytest.fixture(scope="module")
def clients_app(user: Cli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An app built `FROM rack-local/clients`, deployed once for the module: a `web` process with a port."""
    name = f"clients-{secrets.token_hex(3)}"
    source = tmp_path_factory.mktemp("clients") / "clients"
    shutil.copytree(SAMPLE, source)
    user("apps", "create", name, check=True)
    try:
        deployed = user("deploy", str(source), "--app", name, timeout=300)
        assert deployed.returncode == 0, deployed.stderr
        yield name
    finally:
        user("apps", "delete", name)


def run_web(user: Cli, app: str, command: str) -> subprocess.CompletedProcess[str]:
    """The seed's example: `convox run web COMMAND`, a one-off process with the app's environment (run's
    options come before the process type: what follows it is the command)."""
    return user("run", "--app", app, "web", command, timeout=180)


def exec_web(rack: RunningRack, app: str, command: str) -> subprocess.CompletedProcess[str]:
    """``command`` under ``sh -c`` in the app's running web process (its environment is the release's)."""
    return subprocess.run(
        ["docker", "exec", app_container(rack.name, app), "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def lifecycle(
    user: Cli,
    rack: RunningRack,
    app: str,
    kind: str,
    check: tuple[str, str],
    write: str,
    read: tuple[str, str],
) -> None:
    """Create, link, reach from the app, keep data over a container restart, unlink and delete."""
    key = f"{kind.upper()}_URL"
    try:
        created = user("services", "create", kind, timeout=300)
        assert created.returncode == 0, created.stderr
        assert f"Creating {kind} ({kind})... OK" in created.stderr
        assert table(user("services", check=True).stdout)[kind] == [kind, "running"]
        hidden = info(user, kind)
        assert (hidden["Type"], hidden["Status"]) == (kind, "running")
        assert "***@" in hidden["URL"] and HEX_PASSWORD.search(hidden["URL"]) is None
        url = info(user, kind, "--reveal")["URL"]
        revealed = HEX_PASSWORD.search(url)
        assert revealed, url
        assert url.startswith(f"{kind}://") and f"@{kind}:" in url

        linked = user("services", "link", kind, "--app", app, timeout=300)
        assert linked.returncode == 0, linked.stderr
        assert table(user("services", check=True).stdout)[kind] == [kind, "running", app]
        assert user("env", "get", key, "--app", app, check=True).stdout.strip() == url
        assert container_env(app_container(rack.name, app)).get(key) == url  # the running process has it

        command, expected = check
        result = run_web(user, app, command)
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout.split(), result.stdout

        written = exec_web(rack, app, write)
        assert written.returncode == 0, written.stderr
        before = service_container(rack.name, kind)
        docker("restart", before)
        assert service_container(rack.name, kind) == before
        command, expected = read

        def read_back() -> bool:
            result = exec_web(rack, app, command)
            return result.returncode == 0 and expected in result.stdout.split()

        eventually(read_back, message=f"{kind}: the data written before the restart is not read back")

        unlinked = user("services", "unlink", kind, "--app", app, timeout=300)
        assert unlinked.returncode == 0, unlinked.stderr
        assert key not in user("env", "--app", app, check=True).stdout
        assert key not in container_env(app_container(rack.name, app))
    finally:
        user("services", "unlink", kind, "--app", app, timeout=300)
        deleted = user("services", "delete", kind, timeout=300)
    assert deleted.returncode == 0, deleted.stderr
    assert_nothing_left(user, rack, kind)
    assert kind not in table(user("services", check=True).stdout)
    time.sleep(0.5)
    assert revealed.group(1) not in (rack.data_dir / "logs" / "rack.log").read_text()  # never logged


def test_postgres_linked_into_an_app(user: Cli, services_rack: RunningRack, clients_app: str) -> None:
    lifecycle(
        user,
        services_rack,
        clients_app,
        "postgres",
        check=('psql $POSTGRES_URL -c "select 1"', "1"),
        write='psql -v ON_ERROR_STOP=1 $POSTGRES_URL -c "create table kept as select 5432 as v"',
        read=('psql -tA $POSTGRES_URL -c "select v from kept"', "5432"),
    )


def test_mysql_linked_into_an_app(user: Cli, services_rack: RunningRack, clients_app: str) -> None:
    lifecycle(
        user,
        services_rack,
        clients_app,
        "mysql",
        check=('mysql-url "$MYSQL_URL" -N -B -e "select 1"', "1"),
        write='mysql-url "$MYSQL_URL" -e "create table kept as select 3306 as v"',
        read=('mysql-url "$MYSQL_URL" -N -B -e "select v from kept"', "3306"),
    )


def test_redis_linked_into_an_app(user: Cli, services_rack: RunningRack, clients_app: str) -> None:
    lifecycle(
        user,
        services_rack,
        clients_app,
        "redis",
        check=("redis-cli -u $REDIS_URL ping", "PONG"),
        write='redis-cli -u "$REDIS_URL" set kept redis-kept',
        read=('redis-cli -u "$REDIS_URL" get kept', "redis-kept"),
    )


def used_once(user: Cli, app: str, kind: str, command: str, expected: str) -> None:
    """Create ``kind``, link it, use it from `convox run web`, unlink and delete it."""
    key = f"{kind.upper()}_URL"
    try:
        created = user("services", "create", kind, timeout=300)
        assert created.returncode == 0, created.stderr
        assert table(user("services", check=True).stdout)[kind] == [kind, "running"]
        user("services", "link", kind, "--app", app, check=True, timeout=300)
        assert user("env", "get", key, "--app", app, check=True).stdout.strip() == info(user, kind, "--reveal")["URL"]
        result = run_web(user, app, command)
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout, result.stdout
        user("services", "unlink", kind, "--app", app, check=True, timeout=300)
    finally:
        user("services", "unlink", kind, "--app", app, timeout=300)
        deleted = user("services", "delete", kind, timeout=300)
    assert deleted.returncode == 0, deleted.stderr


def test_mariadb_used_from_an_app(user: Cli, services_rack: RunningRack, clients_app: str) -> None:
    used_once(user, clients_app, "mariadb", 'mysql-url "$MARIADB_URL" -N -B -e "select version()"', "MariaDB")


def test_memcached_used_from_an_app(user: Cli, services_rack: RunningRack, clients_app: str) -> None:
    stats = (
        'where=${MEMCACHED_URL#memcached://}; printf "set k 0 0 2\\r\\nhi\\r\\nstats\\r\\nquit\\r\\n" '
        '| busybox nc "${where%:*}" "${where##*:}"'
    )
    used_once(user, clients_app, "memcached", stats, "STAT curr_items 1")


def test_bad_input_is_refused_with_clear_errors(user: Cli, services_rack: RunningRack, app_name: str) -> None:
    unknown = user("services", "create", "mongodb")
    assert unknown.returncode != 0
    known = "mariadb, memcached, mysql, postgres, redis"
    assert f"ERROR: unknown service type: 'mongodb' (known: {known})" in unknown.stderr
    user("apps", "create", app_name, check=True)
    try:
        with api(services_rack) as client:
            assert client.post("/services", json={"type": "mongodb"}).status_code == 400
            assert client.post("/services", json={"type": "redis", "name": "No_Good"}).status_code == 400
            assert client.post("/services", json={"type": "redis", "name": "dup"}).status_code == 201
            twice = client.post("/services", json={"type": "postgres", "name": "dup"})
            assert (twice.status_code, twice.json()) == (409, {"error": "service already exists: dup"})
            no_app = client.post("/services/dup/links", json={"app": "no-such-app"})
            assert (no_app.status_code, no_app.json()) == (404, {"error": "no such app: no-such-app"})
            no_service = client.post("/services/no-such/links", json={"app": app_name})
            assert (no_service.status_code, no_service.json()) == (404, {"error": "no such service: no-such"})
            assert client.get("/services/no-such").status_code == 404
            assert client.post("/services/dup/links", json={"app": app_name}).status_code == 200
            refused = client.delete("/services/dup")
            assert refused.status_code == 409
            assert refused.json() == {"error": f"service dup is linked to {app_name}: unlink it first"}
        cli_refused = user("services", "delete", "dup")
        assert cli_refused.returncode != 0
        assert f"ERROR: service dup is linked to {app_name}: unlink it first" in cli_refused.stderr
        user("apps", "delete", app_name, check=True)  # an app's links go with it
        assert info(user, "dup")["Apps"] == ""
        user("services", "delete", "dup", check=True)
    finally:
        user("services", "unlink", "dup", "--app", app_name)
        user("services", "delete", "dup")
        user("apps", "delete", app_name)


def assert_nothing_left(user: Cli, rack: RunningRack, name: str, failed: str = "") -> None:
    """No container or volume of the service; no record either, or (``failed``) a failed one saying why."""
    labelled = ["--filter", f"label=convox.rack={rack.name}", "--filter", f"label=convox.resource={name}"]
    assert docker("ps", "-aq", *labelled) == ""
    assert docker("volume", "ls", "-q", "--filter", f"name={rack.name}-resource-{name}") == ""
    shown = user("services", "info", name)
    if failed:
        assert shown.returncode == 0 and "Status   failed" in shown.stdout and failed in shown.stdout, shown.stdout
    else:
        assert shown.returncode != 0 and f"ERROR: no such service: {name}" in shown.stderr


def test_a_failing_create_leaves_nothing_behind(user: Cli, services_rack: RunningRack, busybox_image: str) -> None:
    try:
        # an image the engine does not have and cannot pull (no registry is reachable)
        user("rack", "params", "set", "redis_image=rack-test/missing:1", check=True)
        assert "redis_image      rack-test/missing:1" in user("rack", "params", check=True).stdout
        failed = user("services", "create", "redis", "--name", "ghost")
        assert failed.returncode != 0
        pull = "image rack-test/missing:1 is not on the engine and could not be pulled"
        assert f"ERROR: ghost could not be made: {pull}" in failed.stderr, failed.stderr
        hint = "pick another image with `convox rack params set redis_image=IMAGE`, or build the offline one with "
        assert hint + "`make images` (then redis_image=rack-local/redis:bookworm)" in failed.stderr
        assert "(create it again, or `convox services delete ghost`)" in failed.stderr
        assert_nothing_left(user, services_rack, "ghost", failed=pull)  # its record says why, nothing else is left
        # created again (over the failed one): a server that exits before it accepts connections
        user("rack", "params", "set", f"mysql_image={busybox_image}", check=True)
        exited = user("services", "create", "mysql", "--name", "ghost")
        assert exited.returncode != 0
        assert "ERROR: ghost could not be made: mysql ghost exited with code 0 before it accepted" in exited.stderr
        assert_nothing_left(user, services_rack, "ghost", failed="exited with code 0")
        user("services", "delete", "ghost", check=True)
        assert_nothing_left(user, services_rack, "ghost")
    finally:
        with api(services_rack) as client:
            client.post("/system/params", json=LOCAL_IMAGES)
    assert user("rack", "params", check=True).stdout.splitlines() == [
        f"{key:<15}  {value}" for key, value in sorted(LOCAL_IMAGES.items())
    ]


def test_data_survives_a_restart_of_the_rack(tmp_path: Path) -> None:
    require_images()
    name = RACK_NAME + "-svc"
    data = tmp_path / "data"
    first = start_rack(data, name)
    try:
        user = Cli(first.env(tmp_path / "cfg"), tmp_path)
        user("rack", "params", "set", *(f"{k}={v}" for k, v in LOCAL_IMAGES.items()), check=True)
        user("services", "create", "postgres", "--name", "kept-db", check=True, timeout=300)
        url = info(user, "kept-db", "--reveal")["URL"]
        container = service_container(name, "kept-db")

        def psql(sql: str) -> str:
            return docker(
                "run", "--rm", "--label", f"convox.rack={name}", "--network", f"convox-{name}", CLIENTS_IMAGE,
                "psql", "-v", "ON_ERROR_STOP=1", "-tA", url, "-c", sql,
            )  # fmt: skip

        psql("create table kept (v text); insert into kept values ('across-restarts')")
        stop_rack(first)
        assert service_container(name, "kept-db") == container  # the server does not stop with the rack
        second = start_rack(data, name, port=int(first.url.rsplit(":", 1)[1]))
        try:
            assert table(user("services", check=True).stdout)["kept-db"] == ["postgres", "running"]
            assert psql("select v from kept").split() == ["across-restarts"]
            user("services", "delete", "kept-db", check=True)
            assert_nothing_left(user, second, "kept-db")
        finally:
            stop_rack(second)
    finally:
        stop_rack(first)
        remove_services(name)
        from tests.conftest import remove_labelled_containers

        remove_labelled_containers(name)
        docker("network", "rm", f"convox-{name}", check=False)


MANIFEST_WITH_DATABASE = """\
resources:
  database:
    type: postgres
services:
  web:
    build: .
    command: busybox httpd -f -p 3000 -h /www
    port: 3000
    resources: [database]
    health: {path: /, grace: 1, timeout: 2}
    scale: {count: 1, memory: 128}
"""


def test_a_deploy_makes_its_manifest_resources_links_them_and_keeps_their_data(
    user: Cli, services_rack: RunningRack, tmp_path: Path
) -> None:
    app = f"res-{secrets.token_hex(3)}"
    service = f"{app}-database"
    source = tmp_path / "app"
    shutil.copytree(SAMPLE, source)
    (source / "convox.yml").write_text(MANIFEST_WITH_DATABASE)
    user("apps", "create", app, check=True)
    try:
        first = user("deploy", str(source), "--app", app, timeout=400)
        assert first.returncode == 0, first.stderr
        assert "Resources database (postgres)... OK" in first.stdout + first.stderr
        assert table(user("services", check=True).stdout)[service] == ["postgres", "running", app]
        url = info(user, service, "--reveal")["URL"]
        assert url.startswith("postgres://app:") and url.endswith(f"@{service}:5432/app")
        assert user("env", "get", "DATABASE_URL", "--app", app, check=True).stdout.strip() == url
        assert container_env(app_container(services_rack.name, app)).get("DATABASE_URL") == url
        made = run_web(user, app, 'psql -v ON_ERROR_STOP=1 $DATABASE_URL -c "create table kept as select 5432 as v"')
        assert made.returncode == 0, made.stderr
        refused = user("services", "unlink", service, "--app", app)
        assert refused.returncode != 0
        assert f"ERROR: service {service} is resources.database of {app}'s manifest" in refused.stderr

        again = user("deploy", str(source), "--app", app, timeout=400)  # kept, not made again
        assert again.returncode == 0, again.stderr
        assert info(user, service, "--reveal")["URL"] == url
        kept = run_web(user, app, 'psql -tA $DATABASE_URL -c "select v from kept"')
        assert kept.returncode == 0, kept.stderr
        assert kept.stdout.split() == ["5432"]

        without = MANIFEST_WITH_DATABASE.replace("    resources: [database]\n", "")
        (source / "convox.yml").write_text(without.replace("resources:\n  database:\n    type: postgres\n", ""))
        dropped = user("deploy", str(source), "--app", app, timeout=400)
        assert dropped.returncode == 0, dropped.stderr
        assert "DATABASE_URL" not in user("env", "--app", app, check=True).stdout
        gone = run_web(user, app, 'echo "url=${DATABASE_URL:-none}"')
        assert gone.stdout.split() == ["url=none"], gone.stdout
        assert table(user("services", check=True).stdout)[service] == ["postgres", "running"]  # unlinked, kept
    finally:
        user("apps", "delete", app)
    assert table(user("services", check=True).stdout)[service] == ["postgres", "running"]  # not with the app
    user("services", "delete", service, check=True, timeout=300)
    assert_nothing_left(user, services_rack, service)


def test_a_deploy_whose_resource_cannot_start_fails_with_no_release_and_nothing_made(
    user: Cli, services_rack: RunningRack, busybox_image: str, app_name: str, tmp_path: Path
) -> None:
    source = tmp_path / "app"
    shutil.copytree(SAMPLE, source)
    (source / "convox.yml").write_text(MANIFEST_WITH_DATABASE.replace("type: postgres", "type: mysql"))
    user("apps", "create", app_name, check=True)
    try:
        user("rack", "params", "set", f"mysql_image={busybox_image}", check=True)  # exits at once
        failed = user("deploy", str(source), "--app", app_name, timeout=400)
        assert failed.returncode != 0
        assert f"mysql {app_name}-database exited with code 0 before it accepted connections" in failed.stderr
        assert user("releases", "--app", app_name, check=True).stdout.splitlines()[1:] == []
        assert_nothing_left(user, services_rack, f"{app_name}-database")
    finally:
        with api(services_rack) as client:
            client.post("/system/params", json=LOCAL_IMAGES)
        user("apps", "delete", app_name)
