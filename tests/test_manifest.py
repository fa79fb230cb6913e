"""The manifest from convox.yml parsed into the typed Manifest, errors naming file and key; a service's environment;
finding the manifest (docker-compose.yml is tests/test_manifest_compose.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.errors import BadRequest
from shared.manifest import (
    BuildSpec,
    Health,
    Manifest,
    ManifestError,
    Scale,
    find_manifest,
    parse_manifest,
)
from tests.manifests import error, warnings

# -- convox.yml ---------------------------------------------------------------------------------------------


FULL = """
environment:
  - COMPANY=Acme
  - SECRET_KEY
resources:
  database:
    type: postgres
    options:
      version: 13
services:
  web:
    build: .
    command: bin/web
    environment:
      - DEBUG=false
      - API_TOKEN
    port: 3000
    health:
      path: /check
      interval: 10
      timeout: 3
      grace: 20
    scale:
      count: 2
      cpu: 512
      memory: 1024
    resources:
      - database
  worker:
    image: busybox:stable
    command: [sleep, 3600]
    internal: true
"""


def test_full_convox_yml_parses_into_the_typed_manifest() -> None:
    manifest = parse_manifest(FULL, "convox.yml")
    assert manifest.environment == ["COMPANY=Acme", "SECRET_KEY"]
    assert manifest.resources["database"].type == "postgres"
    assert manifest.resources["database"].options == {"version": "13"}
    web = manifest.services["web"]
    assert web.name == "web"
    assert web.build == BuildSpec(path=".", manifest="Dockerfile")
    assert web.image == ""
    assert web.command == "bin/web"
    assert web.environment == ["DEBUG=false", "API_TOKEN"]
    assert web.port == 3000
    assert web.public
    assert web.health == Health(path="/check", interval=10, timeout=3, grace=20)
    assert web.scale == Scale(count=2, cpu=512, memory=1024)
    assert web.resources == ["database"]
    worker = manifest.services["worker"]
    assert worker.build is None
    assert worker.image == "busybox:stable"
    assert worker.command == ["sleep", "3600"]
    assert worker.internal and not worker.public
    assert worker.health is None
    assert worker.scale == Scale()


def test_manifest_round_trips_through_json() -> None:
    manifest = parse_manifest(FULL, "convox.yml")
    assert Manifest.model_validate_json(manifest.model_dump_json()) == manifest


def test_service_without_build_or_image_builds_the_source_root() -> None:
    manifest = parse_manifest("services:\n  web:\n", "convox.yml")
    assert manifest.services["web"].build == BuildSpec(path=".", manifest="Dockerfile", args={})
    assert manifest.services["web"].port is None
    assert not manifest.services["web"].public


def test_build_map_takes_path_manifest_and_args() -> None:
    text = "services:\n  api:\n    build:\n      path: api\n      manifest: Dockerfile.prod\n      args: {VERSION: 2}\n"
    build = parse_manifest(text, "convox.yml").services["api"].build
    assert build == BuildSpec(path="api", manifest="Dockerfile.prod", args={"VERSION": "2"})
    listed = "services:\n  api:\n    build: {args: [A=1, B=two]}\n"
    assert parse_manifest(listed, "convox.yml").services["api"].build == BuildSpec(args={"A": "1", "B": "two"})


@pytest.mark.parametrize(
    ("value", "port"), [("3000", 3000), ('"3000"', 3000), ("https:3000", 3000), ("http:8080", 8080), ("80", 80)]
)
def test_port_is_an_int_or_a_scheme_and_port_string(value: str, port: int) -> None:
    assert parse_manifest(f"services:\n  web:\n    port: {value}\n", "convox.yml").services["web"].port == port


def test_port_map_with_scheme_is_accepted() -> None:
    text = "services:\n  web:\n    port: {port: 5000, scheme: https}\n"
    assert parse_manifest(text, "convox.yml").services["web"].port == 5000


def test_health_as_a_path_string() -> None:
    health = parse_manifest("services:\n  web:\n    health: /up\n", "convox.yml").services["web"].health
    assert health == Health(path="/up", interval=5, timeout=4, grace=5)


@pytest.mark.parametrize(
    ("value", "scale"),
    [
        ("3", Scale(count=3)),
        ("0", Scale(count=0)),
        ('"1-3"', Scale(count=1, count_max=3)),
        ("2-5", Scale(count=2, count_max=5)),
        ("{count: 2, memory: 512}", Scale(count=2, memory=512)),
        ("{count: 1-4, cpu: 1024}", Scale(count=1, count_max=4, cpu=1024)),
    ],
)
def test_scale_as_count_range_or_map(value: str, scale: Scale) -> None:
    assert parse_manifest(f"services:\n  web:\n    scale: {value}\n", "convox.yml").services["web"].scale == scale


def test_command_as_string_or_list() -> None:
    text = "services:\n  a:\n    command: bin/web --port 3000\n  b:\n    command: [python, -m, http.server, 8000]\n"
    services = parse_manifest(text, "convox.yml").services
    assert services["a"].command == "bin/web --port 3000"
    assert services["b"].command == ["python", "-m", "http.server", "8000"]


def test_environment_map_is_normalised_to_the_list_form() -> None:
    text = "services:\n  web:\n    environment:\n      PLAIN: text\n      NUMBER: 3\n      FLAG: true\n      NEEDED:\n"
    environment = parse_manifest(text, "convox.yml").services["web"].environment
    assert environment == ["PLAIN=text", "NUMBER=3", "FLAG=true", "NEEDED"]


def test_environment_list_keeps_empty_defaults_apart_from_required_keys() -> None:
    text = "environment:\n  - EMPTY=\n  - REQUIRED\n  - URL=http://x?a=b\nservices:\n  web:\n"
    assert parse_manifest(text, "convox.yml").environment == ["EMPTY=", "REQUIRED", "URL=http://x?a=b"]


def test_manifest_error_is_a_bad_request() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_manifest("services: {}", "convox.yml")
    assert caught.value.status == 400


def test_wrong_scale_count_names_file_key_and_value() -> None:
    text = "services:\n  web:\n    scale:\n      count: many\n"
    assert error(text) == 'convox.yml: services.web.scale.count: must be a whole number, got "many"'


def test_yaml_syntax_error_names_the_line() -> None:
    message = error("services:\n  web:\n    port: 3000\n   build: [\n")
    assert message.startswith("convox.yml: line ")
    assert "invalid YAML" in message
    assert error("services:\n\tweb: {}\n").startswith("convox.yml: line 2, column 1: invalid YAML")


def test_unknown_service_key_is_a_warning_with_a_suggestion() -> None:
    assert warnings("services:\n  web:\n    prot: 3000\n") == [
        'convox.yml: services.web.prot is not a key Convox knows (did you mean "port"?)'
    ]


def test_unknown_keys_at_every_level_are_warnings() -> None:
    assert warnings("servics:\n  web: {}\nservices: {web: {}}\n") == [
        'convox.yml: servics is not a key Convox knows (did you mean "services"?)'
    ]
    assert warnings("services:\n  web:\n    health: {paht: /}\n") == [
        'convox.yml: services.web.health.paht is not a key Convox knows (did you mean "path"?)'
    ]
    assert "services.web.scale.size is not a key" in warnings("services:\n  web:\n    scale: {size: 2}\n")[0]
    assert (
        "services.web.build.dockerfile is not a key" in warnings("services:\n  web:\n    build: {dockerfile: x}\n")[0]
    )
    assert (
        "resources.db.option is not a key"
        in warnings("resources:\n  db: {type: redis, option: {}}\nservices: {w: {}}")[0]
    )


def test_convox_keys_this_rack_does_not_act_on_are_warnings_and_the_file_deploys() -> None:
    manifest = parse_manifest(
        "balancers: {}\nservices:\n  web:\n    domain: example.org\n    sticky: true\n", "convox.yml"
    )
    assert manifest.warnings == [
        "convox.yml: balancers is not supported by this rack",
        "convox.yml: services.web.domain is not supported by this rack",
        "convox.yml: services.web.sticky is not supported by this rack",
    ]
    assert list(manifest.services) == ["web"]


def test_wrong_types_name_the_key_and_what_was_given() -> None:
    assert error("services:\n  web:\n    port: 0\n") == "convox.yml: services.web.port: must be at least 1, got 0"
    assert error("services:\n  web:\n    port: 70000\n") == (
        "convox.yml: services.web.port: must be at most 65535, got 70000"
    )
    assert error("services:\n  web:\n    port: www\n") == (
        'convox.yml: services.web.port: must be a port like 3000 or https:3000, got "www"'
    )
    assert error("services:\n  web:\n    image: 3\n") == "convox.yml: services.web.image: must be a string, got 3"
    assert error("services:\n  web:\n    internal: maybe\n") == (
        'convox.yml: services.web.internal: must be true or false, got "maybe"'
    )
    assert error("services:\n  web:\n    scale: {memory: 2}\n") == (
        "convox.yml: services.web.scale.memory: must be at least 4, got 2"
    )
    assert error("services:\n  web:\n    scale: -1\n") == "convox.yml: services.web.scale: must be at least 0, got -1"
    assert error("services:\n  web:\n    scale: {count: 1.5}\n") == (
        "convox.yml: services.web.scale.count: must be a whole number, got 1.5"
    )
    assert error("services:\n  web:\n    scale: {count: true}\n") == (
        "convox.yml: services.web.scale.count: must be a whole number, got true"
    )
    assert error("services:\n  web:\n    health: {interval: 0}\n") == (
        "convox.yml: services.web.health.interval: must be at least 1, got 0"
    )
    assert error("services:\n  web:\n    command: {run: x}\n") == (
        "convox.yml: services.web.command: must be a string or a list of strings, got a map"
    )
    assert error("services:\n  web: [1]\n") == "convox.yml: services.web: must be a map, got a list"
    assert error("services: [web]\n") == "convox.yml: services: must be a map of service names to services, got a list"
    assert error("- web\n") == "convox.yml: must be a map of environment, resources and services, got a list"


def test_scale_shapes_that_are_not_counts_are_errors() -> None:
    assert error("services:\n  web:\n    scale: lots\n") == (
        'convox.yml: services.web.scale: must be a whole number, got "lots"'
    )
    assert error("services:\n  web:\n    scale: 3-1\n") == (
        'convox.yml: services.web.scale: the range "3-1" is backwards: the minimum comes first'
    )
    assert error("services:\n  web:\n    scale: [1]\n").startswith(
        "convox.yml: services.web.scale: must be a count, a range"
    )


def test_health_path_must_start_with_a_slash() -> None:
    assert error("services:\n  web:\n    health: check\n") == (
        'convox.yml: services.web.health: must start with /, got "check"'
    )


def test_build_paths_must_stay_inside_the_source() -> None:
    assert error("services:\n  web:\n    build: ../other\n") == (
        'convox.yml: services.web.build: must be a path inside the source, got "../other"'
    )
    assert error("services:\n  web:\n    build: {manifest: /etc/Dockerfile}\n") == (
        'convox.yml: services.web.build.manifest: must be a path inside the source, got "/etc/Dockerfile"'
    )
    assert error("services:\n  web:\n    build: {path: sub, manifest: ../../Dockerfile}\n").startswith(
        "convox.yml: services.web.build.manifest: must be a path inside the source"
    )
    inside = "services:\n  web:\n    build: {path: sub, manifest: ../Dockerfile}\n"
    assert parse_manifest(inside, "convox.yml").services["web"].build == BuildSpec(path="sub", manifest="../Dockerfile")


def test_build_and_image_together_are_an_error() -> None:
    assert error("services:\n  web:\n    build: .\n    image: nginx\n") == (
        "convox.yml: services.web: has both build and image: a service is built from source or runs an image, not both"
    )


@pytest.mark.parametrize("name", ["Web", "web_1", "1web", "web-", "w" * 64, "web.app"])
def test_service_names_must_be_dns_labels(name: str) -> None:
    assert error(f"services:\n  {name}: {{}}\n").startswith(f'convox.yml: services.{name}: invalid service name "')


@pytest.mark.parametrize("name", ["web", "w", "api-v2", "a" * 63])
def test_dns_label_service_names_are_accepted(name: str) -> None:
    assert list(parse_manifest(f"services:\n  {name}: {{}}\n", "convox.yml").services) == [name]


def test_resource_referenced_but_not_declared_is_an_error() -> None:
    assert error("services:\n  web:\n    resources: [db]\n") == (
        'convox.yml: services.web.resources[0]: no resource named "db" under resources (none are declared)'
    )
    declared = "resources:\n  cache: {type: redis}\nservices:\n  web:\n    resources: [db]\n"
    assert error(declared) == 'convox.yml: services.web.resources[0]: no resource named "db" under resources (cache)'


def test_resource_types_are_checked() -> None:
    assert error("resources:\n  db: {type: mongo}\nservices:\n  web: {}\n") == (
        'convox.yml: resources.db.type: must be one of mariadb, memcached, mysql, postgres, redis, got "mongo"'
    )
    assert error("resources:\n  db: {}\nservices:\n  web: {}\n") == (
        "convox.yml: resources.db.type: is required (one of mariadb, memcached, mysql, postgres, redis)"
    )


def test_no_services_is_an_error() -> None:
    assert error("") == "convox.yml: the manifest is empty: declare at least one service under services"
    assert error("services: {}\n") == "convox.yml: services: at least one service is required"
    assert error("environment: [A]\n") == "convox.yml: services: at least one service is required"


def test_environment_entries_are_checked_in_order() -> None:
    text = "services:\n  web:\n    environment:\n      - A=1\n      - A\n      - 1X=2\n      - B: 2\n"
    assert error(text) == (
        "convox.yml: services.web.environment[1]: A is declared twice; "
        'services.web.environment[2]: invalid variable name "1X": letters, digits and underscores, '
        "not starting with a digit; "
        "services.web.environment[3]: must be KEY or KEY=default, got a map (write B=2)"
    )
    assert error("environment: A=1\nservices: {web: {}}\n") == (
        'convox.yml: environment: must be a list of KEY or KEY=default, got "A=1"'
    )


def test_every_problem_is_reported_at_once() -> None:
    message = error("services:\n  web:\n    port: 0\n    prot: 1\n  Bad: {}\n")
    assert message.startswith("convox.yml: ")
    assert message.count("convox.yml") == 1
    assert "services.web.port: must be at least 1, got 0" in message
    assert 'services.Bad: invalid service name "Bad"' in message


def test_error_names_the_file_it_was_given() -> None:
    assert error("services: {}\n", "deploy/convox.prod.yml") == (
        "deploy/convox.prod.yml: services: at least one service is required"
    )


# -- the service environment ----------------------------------------------------------------------------------

ENV = """
environment:
  - SHARED=top
  - OVERRIDDEN=top
  - NEEDED
services:
  web:
    environment:
      - OVERRIDDEN=service
      - OWN=default
      - TOKEN
  other:
    environment: [OTHER=1]
"""


def test_service_environment_merges_defaults_and_the_app_env_wins() -> None:
    manifest = parse_manifest(ENV, "convox.yml")
    env = manifest.service_environment("web", {"NEEDED": "n", "TOKEN": "t", "OWN": "app", "EXTRA": "x"})
    assert env == {"SHARED": "top", "OVERRIDDEN": "service", "OWN": "app", "NEEDED": "n", "TOKEN": "t", "EXTRA": "x"}
    assert manifest.service_environment("other", {"NEEDED": ""}) == {
        "SHARED": "top",
        "OVERRIDDEN": "top",
        "OTHER": "1",
        "NEEDED": "",
    }


def test_a_resource_url_goes_only_to_the_services_that_list_the_resource() -> None:
    manifest = parse_manifest(
        "resources:\n  database: {type: postgres}\n  cache: {type: memcached}\n"
        "services:\n  web: {image: a, resources: [database, cache]}\n  worker: {image: a, resources: [cache]}\n",
        "convox.yml",
    )
    env = {"DATABASE_URL": "postgres://db", "CACHE_URL": "memcached://c:11211", "OTHER": "1"}
    assert manifest.service_environment("web", env) == env
    assert manifest.service_environment("worker", env) == {"CACHE_URL": "memcached://c:11211", "OTHER": "1"}


def test_service_environment_lists_missing_required_keys() -> None:
    manifest = parse_manifest(ENV, "convox.yml")
    with pytest.raises(ManifestError) as caught:
        manifest.service_environment("web", {"TOKEN": "t"})
    assert caught.value.message == (
        "service web requires environment the app does not set: NEEDED (set with: convox env set NEEDED=...)"
    )
    with pytest.raises(ManifestError, match="NEEDED, TOKEN"):
        manifest.service_environment("web", {})


def test_required_key_with_a_default_elsewhere_is_satisfied() -> None:
    manifest = parse_manifest("environment: [KEY=fallback]\nservices:\n  web:\n    environment: [KEY]\n", "convox.yml")
    assert manifest.service_environment("web", {}) == {"KEY": "fallback"}


def test_service_environment_of_an_unknown_service_is_an_error() -> None:
    with pytest.raises(ManifestError, match=r"no service named db in the manifest \(services: web, worker\)"):
        parse_manifest(FULL, "convox.yml").service_environment("db", {})


# -- finding the manifest -------------------------------------------------------------------------------------


def test_find_manifest_prefers_convox_yml(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text("web: {}\n")
    assert find_manifest(tmp_path) == tmp_path / "docker-compose.yml"
    (tmp_path / "convox.yml").write_text("services: {web: {}}\n")
    assert find_manifest(tmp_path) == tmp_path / "convox.yml"


def test_find_manifest_takes_a_named_file(tmp_path: Path) -> None:
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "convox.prod.yml").write_text("services: {web: {}}\n")
    (tmp_path / "convox.yml").write_text("services: {web: {}}\n")
    assert find_manifest(tmp_path, "deploy/convox.prod.yml") == tmp_path / "deploy" / "convox.prod.yml"
    assert find_manifest(tmp_path, "") == tmp_path / "convox.yml"


def test_find_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"^no convox.yml or docker-compose.yml in the source$"):
        find_manifest(tmp_path)
    with pytest.raises(ManifestError, match=r"^no manifest named convox.prod.yml in the source$"):
        find_manifest(tmp_path, "convox.prod.yml")
    (tmp_path / "dir.yml").mkdir()
    with pytest.raises(ManifestError, match=r"^no manifest named dir.yml in the source$"):
        find_manifest(tmp_path, "dir.yml")


def test_find_manifest_never_leaves_the_source(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    outside = tmp_path / "convox.yml"
    outside.write_text("services: {web: {}}\n")
    with pytest.raises(ManifestError, match=r"^manifest \.\./convox.yml: must be a file inside the source$"):
        find_manifest(source, "../convox.yml")
    with pytest.raises(ManifestError, match="must be a file inside the source"):
        find_manifest(source, str(outside))
    os.symlink(outside, source / "convox.yml")
    with pytest.raises(ManifestError, match=r"^convox.yml: must be a file inside the source$"):
        find_manifest(source)


def test_found_manifest_keeps_its_name_for_the_format(tmp_path: Path) -> None:
    (tmp_path / "compose-real.yml").write_text('web:\n  image: nginx\n  ports: ["80:80"]\n')
    os.symlink("compose-real.yml", tmp_path / "docker-compose.yml")
    path = find_manifest(tmp_path)
    assert path.name == "docker-compose.yml"
    assert parse_manifest(path.read_text(), path.name).services["web"].public
