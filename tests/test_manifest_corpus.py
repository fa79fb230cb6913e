"""A corpus of real-shaped manifests (tests/manifests/), each parsed and checked field by field; and the invalid
shapes that stay errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.manifest import (
    BuildSpec,
    Deployment,
    Health,
    Manifest,
    ManifestError,
    PortMapping,
    ResourceSpec,
    Scale,
    Timer,
    Volume,
    parse_manifest,
    resolve_manifest,
)

CORPUS = Path(__file__).parent / "manifests"


def load(name: str, env: dict[str, str] | None = None) -> Manifest:
    filename = "docker-compose.yml" if name.startswith("gen1") else "convox.yml"
    return parse_manifest((CORPUS / name).read_text(), filename, env)


def test_gen1_two_ports_tls_label_and_an_internal_port() -> None:
    manifest = load("gen1-two-ports.yml")
    web = manifest.services["web"]
    assert web.build == BuildSpec()
    assert web.command == "bin/web"
    assert web.port == 3000 and not web.internal and web.public
    assert web.ports == [
        PortMapping(container=3000, balancer=80, public=True, protocol="tcp"),
        PortMapping(container=3001, balancer=443, public=True, protocol="tls"),
        PortMapping(container=5432, balancer=None, public=False, protocol="tcp"),
    ]
    assert [str(mapping) for mapping in web.ports] == ["80:3000", "443:3001", "5432"]
    assert web.ports[1].tls and not web.ports[0].tls
    assert web.environment == ["RACK_ENV=production", "SECRET"]
    assert web.health == Health(path="/check", timeout=3)
    assert web.drain == 10 and web.deployment == Deployment(minimum=25, maximum=150)
    assert web.scale == Scale(memory=512)
    assert manifest.warnings == [
        "docker-compose.yml: services.web.labels.convox.port.443.proxy is not supported by this rack"
    ]
    assert manifest.timers == {} and manifest.resources == {}


def test_gen1_links_environment_and_bare_build_args() -> None:
    manifest = load("gen1-links.yml")
    assert list(manifest.services) == ["web", "worker", "redis", "database"]
    web = manifest.services["web"]
    assert web.build == BuildSpec(manifest="Dockerfile.web", args={"NODE_ENV": "production"}, required_args=["GIT_SHA"])
    assert web.links == ["redis", "database"]
    assert web.environment == ["PORT=8080", "API_KEY"]
    assert web.ports == [PortMapping(container=8080, balancer=80)]
    worker = manifest.services["worker"]
    assert worker.command == ["bin/worker", "--queue", "default"] and worker.links == ["redis"]
    assert worker.ports == [] and worker.port is None and not worker.public
    redis = manifest.services["redis"]
    assert redis.image == "redis:7-alpine" and redis.build is None and redis.internal and redis.port == 6379
    assert manifest.warnings == []
    env = manifest.service_environment("web", {"API_KEY": "k"}, "myapp")
    assert env["REDIS_URL"] == "redis://redis.myapp:6379"
    assert (env["REDIS_HOST"], env["REDIS_PORT"], env["REDIS_SCHEME"]) == ("redis.myapp", "6379", "redis")
    assert env["DATABASE_URL"] == "postgres://postgres:secret@database.myapp:5432/app"
    assert (env["DATABASE_USERNAME"], env["DATABASE_PASSWORD"], env["DATABASE_PATH"]) == ("postgres", "secret", "/app")
    assert "REDIS_URL" not in manifest.service_environment("redis", {"API_KEY": "k"}, "myapp")
    assert env["API_KEY"] == "k"


def test_gen1_cron_labels_and_volumes() -> None:
    manifest = load("gen1-cron-volumes.yml")
    web = manifest.services["web"]
    assert web.image == "nginx:alpine"
    assert web.volumes == [
        Volume(name="var-cache-nginx", path="/var/cache/nginx"),
        Volume(name="uploads", path="/srv/uploads"),
    ]
    assert manifest.timers == {
        "cleanup": Timer(name="cleanup", schedule="0 3 * * *", command="bin/cleanup --days 7", service="web"),
        "report": Timer(name="report", schedule="*/15 * * * *", command="bin/report", service="web"),
    }
    assert manifest.warnings == [
        "docker-compose.yml: volumes is not supported by this rack",
        "docker-compose.yml: services.web.labels.convox.start.shift is not supported by this rack",
    ]


def test_gen2_full_manifest_field_by_field() -> None:
    manifest = load("gen2-full.yml", {"HOST": "example.org"})
    assert manifest.environment == ["COMPANY=Acme", "SECRET_KEY", "*"]
    assert manifest.resources == {
        "database": ResourceSpec(type="postgres", options={"storage": "20"}),
        "cache": ResourceSpec(type="memcached"),
    }
    web = manifest.services["web"]
    assert web.build == BuildSpec(
        path="app", manifest="Dockerfile.prod", args={"TEST1": "one"}, required_args=["TEST2"]
    )
    assert web.command == "bin/web --port 3000"
    assert web.port == 3000
    assert web.ports == [
        PortMapping(container=3000, public=True, protocol="https"),
        PortMapping(container=5000, public=False),
        PortMapping(container=5001, public=False),
    ]
    assert web.health == Health(path="/health", interval=10, timeout=3)
    assert web.scale == Scale(count=2, count_max=4, memory=512, cpu=512)
    assert web.resources == ["database", "cache"]
    assert web.deployment == Deployment(minimum=25, maximum=150)
    assert web.termination_grace == 45 and web.drain == 5 and not web.singleton
    assert web.volumes == [Volume(name="data", path="/data"), Volume(name="shared", path="/var/shared")]
    worker = manifest.services["worker"]
    assert worker.build == BuildSpec(path="app")
    assert worker.command == ["bin/worker", "--verbose"]
    assert worker.internal and worker.singleton and worker.scale == Scale(count=1)
    assert worker.environment == ["QUEUE=default", "WORKER_TOKEN"]
    assert worker.termination_grace == 30 and worker.deployment == Deployment()
    assert manifest.timers == {
        "nightly": Timer(name="nightly", schedule="0 2 * * *", command="bin/nightly", service="worker"),
        "often": Timer(name="often", schedule="*/5 * * * 1-5", command="bin/often", service="web"),
    }
    assert manifest.warnings == [
        "convox.yml: services.web.domain is not supported by this rack",
        "convox.yml: services.web.sticky is not supported by this rack",
    ]
    env = manifest.service_environment("web", {"SECRET_KEY": "s", "OTHER": "o"})
    assert env["COMPANY"] == "Acme" and env["SECRET_KEY"] == "s" and env["OTHER"] == "o"


def test_gen2_anchors_and_merge_keys_plain_and_quoted() -> None:
    manifest = load("gen2-anchors.yml")
    web, api = manifest.services["web"], manifest.services["api"]
    assert web.environment == ["SHARED=yes"] and web.health == Health(path="/up")
    assert web.scale == Scale(count=3)  # the service's own scale replaces the merged one (merge is not deep)
    assert api.environment == ["SHARED=yes"] and api.scale == Scale(memory=256) and api.health is None
    assert api.port == 4000 and api.command == "bin/api" and api.build == BuildSpec()
    assert manifest.warnings == []


def test_gen2_interpolation_from_the_app_environment() -> None:
    env = {"IMAGE": "nginx", "TAG": "1.27", "PORT_NUMBER": "8080", "COUNT": "2", "GREETING": "hi"}
    manifest = load("gen2-interpolated.yml", env)
    web = manifest.services["web"]
    assert web.image == "nginx:1.27" and web.port == 8080 and web.scale.count == 2
    assert web.command == "sh -c 'echo $HOME hi'"  # a bare $VAR the app does not set is the shell's
    assert web.environment == ["PRICE=$5"]
    resolved = resolve_manifest(manifest, {**env, "COUNT": "5"})
    assert resolved.services["web"].scale.count == 5
    with pytest.raises(ManifestError) as caught:
        resolve_manifest(manifest, {"IMAGE": "nginx"})
    assert caught.value.message == (
        "convox.yml: uses variables the app's environment does not set: PORT_NUMBER, GREETING, COUNT "
        "(set with: convox env set PORT_NUMBER=... GREETING=... COUNT=...)"
    )


def test_a_manifest_without_variables_is_not_parsed_again() -> None:
    manifest = load("gen2-minimal.yml", {})
    assert manifest.source == "" and resolve_manifest(manifest, {"X": "1"}) is manifest
    assert manifest.services["web"].ports == [PortMapping(container=3000, protocol="http")]
    assert Manifest.model_validate_json(manifest.model_dump_json()) == manifest


@pytest.mark.parametrize(
    ("filename", "text", "message"),
    [
        (
            "docker-compose.yml",
            'web:\n  ports: ["534b:5000"]\n',
            'docker-compose.yml: web.ports[0]: must be "BALANCER:CONTAINER" like "80:3000", or "PORT", got "534b:5000"',
        ),
        (
            "docker-compose.yml",
            'version: "3"\nservices:\n  web: {image: x}\n',
            'docker-compose.yml: version: unknown compose version "3": this rack reads version 1 and 2 '
            '(as Convox generation 1 does; write version: "2")',
        ),
        (
            "docker-compose.yml",
            "web_app:\n  image: x\n",
            'docker-compose.yml: web_app: invalid service name "web_app": lowercase letters, digits and dashes, '
            "starting with a letter, at most 63 characters, not ending with a dash",
        ),
        (
            "docker-compose.yml",
            "web:\n  image: x\n  links: [redis]\n",
            "docker-compose.yml: web.links[0]: service web links to redis, which is not a service here (web)",
        ),
        (
            "convox.yml",
            "services:\n  web:\n    links: [worker]\n",
            "convox.yml: services.web.links[0]: service web links to worker, which is not a service here (web)",
        ),
        (
            "convox.yml",
            "resources:\n  db: {options: {}}\nservices:\n  web: {}\n",
            "convox.yml: resources.db.type: is required (one of mariadb, memcached, mysql, postgres, redis)",
        ),
        (
            "docker-compose.yml",
            "web:\n  mem_limit: 2m\n",
            'docker-compose.yml: web.mem_limit: must be at least 4m, got "2m"',
        ),
        (
            "convox.yml",
            "services:\n  web:\n    scale: {memory: 3}\n",
            "convox.yml: services.web.scale.memory: must be at least 4, got 3",
        ),
        (
            "convox.yml",
            "services:\n  web:\n    volumes: [/srv:/data]\n",
            'convox.yml: services.web.volumes[0]: host paths are not mounted from a manifest, got "/srv:/data" '
            '(write "/data" or "NAME:/data" for a volume the rack keeps)',
        ),
        (
            "docker-compose.yml",
            "web:\n  volumes: [./src:/app]\n",
            'docker-compose.yml: web.volumes[0]: host paths are not mounted from a manifest, got "./src:/app" '
            '(write "/data" or "NAME:/data" for a volume the rack keeps)',
        ),
        (
            "convox.yml",
            "services:\n  web: {}\ntimers:\n  t: {schedule: '* * *', command: x, service: web}\n",
            'convox.yml: timers.t.schedule: must be a 5-field cron schedule like "*/5 * * * *", got 3 fields',
        ),
        (
            "convox.yml",
            "services:\n  web: {}\ntimers:\n  t: {schedule: '61 * * * *', command: x, service: web}\n",
            "convox.yml: timers.t.schedule: is not a valid cron schedule "
            '(minute hour day-of-month month day-of-week, like "*/5 * * * *")',
        ),
        (
            "convox.yml",
            "services:\n  web: {}\ntimers:\n  t: {schedule: '* * * * *', command: x, service: api}\n",
            'convox.yml: timers.t.service: no service named "api" (web)',
        ),
        (
            "docker-compose.yml",
            "web:\n  labels:\n    convox.cron.job: '* * * *'\n",
            "docker-compose.yml: web.labels.convox.cron.job: must be a 5-field cron schedule and a command, like "
            '"*/5 * * * * bin/job", got "* * * *"',
        ),
        (
            "docker-compose.yml",
            'web:\n  ports: ["80:3000"]\n  labels:\n    convox.port.443.protocol: tls\n',
            "docker-compose.yml: web.labels.convox.port.443.protocol: no balancer port 443 under ports (80)",
        ),
        (
            "docker-compose.yml",
            'web:\n  ports: ["80:3000", "80:3001"]\n',
            "docker-compose.yml: web.ports[1]: balancer port 80 is declared twice",
        ),
        (
            "convox.yml",
            "services:\n  web:\n    port: 3000\n    ports: [3000]\n",
            "convox.yml: services.web.ports[0]: port 3000 is declared twice",
        ),
        (
            "convox.yml",
            "services:\n  web:\n    deployment: {minimum: 150}\n",
            "convox.yml: services.web.deployment.minimum: must be at most 100, got 150",
        ),
        (
            "convox.yml",
            "services:\n  web:\n    termination: {grace: soon}\n",
            'convox.yml: services.web.termination.grace: must be a whole number, got "soon"',
        ),
        (
            "convox.yml",
            "services:\n  web:\n    image: ${IMAGE}\n",
            "convox.yml: uses variables the app's environment does not set: IMAGE (set with: convox env set IMAGE=...)",
        ),
    ],
)
def test_invalid_manifests_are_errors_naming_file_and_key(filename: str, text: str, message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text, filename, {})
    assert caught.value.message == message
