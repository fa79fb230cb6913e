"""The manifest from docker-compose.yml (versions 1 and 2): the same typed Manifest as convox.yml, errors naming
file and key, and the format chosen by the file's name."""

from __future__ import annotations

import pytest

from shared.manifest import BuildSpec, Health, Scale, is_compose_file, parse_manifest
from tests.manifests import error, warnings

COMPOSE = """
web:
  build: .
  dockerfile: Dockerfile.web
  command: bin/web
  environment:
    - RACK_ENV=production
    - SECRET
  ports:
    - "80:3000"
  links:
    - database
  mem_limit: 512m
  labels:
    - convox.health.path=/health
    - convox.health.timeout=3
    - convox.port.80.protocol=https
database:
  image: postgres
  environment:
    POSTGRES_PASSWORD: secret
    POSTGRES_USER:
  ports:
    - 5432
  mem_limit: 1g
"""


def test_compose_version_1_parses_into_the_same_manifest() -> None:
    manifest = parse_manifest(COMPOSE, "docker-compose.yml")
    assert manifest.environment == [] and manifest.resources == {}
    web = manifest.services["web"]
    assert web.build == BuildSpec(path=".", manifest="Dockerfile.web")
    assert web.command == "bin/web"
    assert web.environment == ["RACK_ENV=production", "SECRET"]
    assert (web.port, web.internal, web.public) == (3000, False, True)
    assert web.scale == Scale(count=1, memory=512)
    assert web.health == Health(path="/health", timeout=3)
    database = manifest.services["database"]
    assert database.build is None and database.image == "postgres"
    assert database.environment == ["POSTGRES_PASSWORD=secret", "POSTGRES_USER"]
    assert (database.port, database.internal, database.public) == (5432, True, False)
    assert database.scale.memory == 1024


def test_compose_version_2_reads_services_under_services() -> None:
    text = 'version: "2"\nservices:\n  web:\n    build:\n      context: app\n      dockerfile: Dockerfile.dev\n'
    text += "      args: [MODE=prod]\n    command: [npm, start]\n    ports: ['8080:8080/tcp']\n"
    web = parse_manifest(text, "docker-compose.yml").services["web"]
    assert web.build == BuildSpec(path="app", manifest="Dockerfile.dev", args={"MODE": "prod"})
    assert web.command == ["npm", "start"]
    assert (web.port, web.public) == (8080, True)


def test_compose_build_with_image_builds_and_image_alone_runs_it() -> None:
    text = "web:\n  build: .\n  image: me/web\nredis:\n  image: redis\nworker: {}\n"
    services = parse_manifest(text, "docker-compose.yml").services
    assert services["web"].build == BuildSpec() and services["web"].image == ""
    assert services["redis"].build is None and services["redis"].image == "redis"
    assert services["worker"].build == BuildSpec()


@pytest.mark.parametrize(
    ("limit", "megabytes"),
    [("512m", 512), ("1g", 1024), ("1G", 1024), ("256mb", 256), ("2048k", 2), (134217728, 128), ("1.5g", 1536)],
)
def test_compose_mem_limit_becomes_scale_memory_in_mb(limit: object, megabytes: int) -> None:
    if megabytes < 4:
        assert error(f"web:\n  mem_limit: {limit}\n", "docker-compose.yml") == (
            f'docker-compose.yml: web.mem_limit: must be at least 4m, got "{limit}"'
        )
        return
    assert parse_manifest(f"web:\n  mem_limit: {limit}\n", "docker-compose.yml").services["web"].scale.memory == (
        megabytes
    )


def test_compose_bad_ports_are_errors() -> None:
    assert error('web:\n  ports: "80:3000"\n', "docker-compose.yml") == (
        'docker-compose.yml: web.ports: must be a list like ["80:3000"], got "80:3000"'
    )
    assert error('web:\n  ports: ["80:99999"]\n', "docker-compose.yml") == (
        'docker-compose.yml: web.ports[0]: ports are 1 to 65535, got "80:99999"'
    )
    assert error('web:\n  ports: ["53/udp"]\n', "docker-compose.yml") == (
        "docker-compose.yml: web.ports[0]: udp ports are not supported by this rack's balancer"
    )
    assert error('web:\n  ports: ["0.0.0.0:80:3000"]\n', "docker-compose.yml").startswith(
        'docker-compose.yml: web.ports[0]: must be "BALANCER:CONTAINER" like "80:3000", or "PORT"'
    )


def test_compose_unknown_and_unsupported_keys_are_warnings() -> None:
    assert warnings("web:\n  image: x\n  port: 80\n  entrypoint: sh\n", "docker-compose.yml") == [
        'docker-compose.yml: web.port is not a key Convox knows (did you mean "ports"?)',
        "docker-compose.yml: web.entrypoint is not supported by this rack",
    ]
    assert warnings('version: "2"\nservices:\n  web: {image: x}\nvolumes: {}\n', "docker-compose.yml") == [
        "docker-compose.yml: volumes is not supported by this rack"
    ]
    assert warnings('version: "2"\nservices:\n  web: {image: x, prots: []}\n', "docker-compose.yml")[0].startswith(
        "docker-compose.yml: services.web.prots is not a key Convox knows"
    )


def test_compose_labels_are_checked() -> None:
    text = "web:\n  labels:\n    convox.health.timeout: soon\n    convox.port.80.protocol: ftp\n    other: kept\n"
    message = error(text, "docker-compose.yml")
    assert message.startswith("docker-compose.yml: web.labels.")
    assert 'web.labels.convox.health.timeout: must be a whole number, got "soon"' in message
    assert 'web.labels.convox.port.80.protocol: must be one of http, https, tcp, tls, got "ftp"' in message
    assert error("web:\n  labels: {convox.health.path: health}\n", "docker-compose.yml") == (
        'docker-compose.yml: web.labels.convox.health.path: must start with /, got "health"'
    )


def test_compose_balancer_false_label_makes_the_port_internal() -> None:
    text = 'web:\n  ports: ["80:3000"]\n  labels: {convox.balancer: "false"}\n'
    assert not parse_manifest(text, "docker-compose.yml").services["web"].public


def test_compose_other_errors_name_file_and_key() -> None:
    assert error("my_web:\n  image: x\n", "docker-compose.yml").startswith(
        'docker-compose.yml: my_web: invalid service name "my_web"'
    )
    assert error("", "docker-compose.yml") == "docker-compose.yml: the file is empty: declare at least one service"
    assert error('version: "2"\nservices: {}\n', "docker-compose.yml") == (
        "docker-compose.yml: services: at least one service is required"
    )
    assert error("web:\n  links: database\n", "docker-compose.yml") == (
        'docker-compose.yml: web.links: must be a list of process types, got "database"'
    )
    assert error("web:\n  build: {context: ., dockerfile: A}\n  dockerfile: B\n", "docker-compose.yml") == (
        "docker-compose.yml: web.dockerfile: the Dockerfile is already named by build.dockerfile"
    )
    assert error("web:\n  build: {context: ../up}\n", "docker-compose.yml") == (
        'docker-compose.yml: web.build.context: must be a path inside the source, got "../up"'
    )
    assert error("web:\n  image: [x]\n", "docker-compose.yml") == (
        "docker-compose.yml: web.image: must be a string, got a list"
    )
    assert error("web: {ports: [80]\n", "docker-compose.yml").startswith("docker-compose.yml: line 2, column 1:")


@pytest.mark.parametrize(
    ("filename", "compose"),
    [
        ("docker-compose.yml", True),
        ("docker-compose.yaml", True),
        ("docker-compose.prod.yml", True),
        ("sub/docker-compose.yml", True),
        ("convox.yml", False),
        ("convox.prod.yml", False),
        ("compose.yml", False),
    ],
)
def test_format_is_chosen_by_the_file_name(filename: str, compose: bool) -> None:
    assert is_compose_file(filename) is compose


def test_compose_file_is_not_read_as_convox_yml() -> None:
    text = 'web:\n  image: nginx\n  ports: ["80:80"]\n'
    assert parse_manifest(text, "docker-compose.yml").services["web"].port == 80
    assert error(text, "convox.yml") == "convox.yml: services: at least one service is required"
