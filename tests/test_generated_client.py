"""A client generated from the rack's merged OpenAPI document by a public generator, used as a user would.

The generator is openapi-python-client (a dev dependency). It reads the document that the running rack serves
at ``/openapi.json``, writes a package into a temporary folder, and the tests import that package and drive
the rack with it: create, list, show and delete an app, read the system, and see errors come back as the
document's ``Error`` model with the right status. The generator works offline from a file.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.conftest import RunningRack

PACKAGE = "generated_rack_client"

# No post hooks: the generated code is used as written, not reformatted.
CONFIG = {"package_name_override": PACKAGE, "post_hooks": []}

PROBLEM = re.compile(r"warning|could not|unable to|invalid|unsupported|will not be generated|error", re.IGNORECASE)


@dataclass
class Generated:
    package: ModuleType
    output: str
    spec: dict[str, Any]
    folder: Path

    def op(self, tag: str, operation_id: str) -> Any:
        return importlib.import_module(f"{PACKAGE}.api.{tag}.{operation_id}")

    def model(self, name: str) -> Any:
        return getattr(importlib.import_module(f"{PACKAGE}.models"), name)

    def module(self, name: str) -> Any:
        return importlib.import_module(f"{PACKAGE}.{name}")


@pytest.fixture(scope="module")
def generated(rack: RunningRack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generated]:
    """The rack's document, the generator's output for it, and the generated package imported."""
    work = tmp_path_factory.mktemp("generated-client")
    response = httpx.get(f"{rack.url}/openapi.json", verify=rack.verify, auth=("convox", rack.password), timeout=30)
    assert response.status_code == 200, response.text
    spec = response.json()
    (work / "spec.json").write_text(json.dumps(spec))
    (work / "config.json").write_text(json.dumps(CONFIG))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--path",
            str(work / "spec.json"),
            "--output-path",
            str(work / PACKAGE),
            "--meta",
            "none",
            "--config",
            str(work / "config.json"),
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
        cwd=work,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"openapi-python-client exited {result.returncode}:\n{output}"
    sys.path.insert(0, str(work))
    importlib.invalidate_caches()
    try:
        yield Generated(importlib.import_module(PACKAGE), output, spec, work / PACKAGE)
    finally:
        sys.path.remove(str(work))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def basic_token(password: str, user: str = "convox") -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def client(generated: Generated, rack: RunningRack) -> Any:
    """The generated AuthenticatedClient with the rack password as HTTP Basic auth."""
    return generated.package.AuthenticatedClient(
        base_url=rack.url,
        verify_ssl=rack.verify,
        token=basic_token(rack.password),
        prefix="Basic",
        raise_on_unexpected_status=True,
        timeout=httpx.Timeout(30),
    )


def test_the_generator_finds_nothing_wrong_with_the_document(generated: Generated) -> None:
    problems = [line for line in generated.output.splitlines() if PROBLEM.search(line)]
    assert not problems, f"openapi-python-client complained about the document:\n{generated.output}"
    # Every operation in the document became a module: nothing was skipped silently.
    missing = []
    for path, item in generated.spec["paths"].items():
        for method, operation in item.items():
            module = generated.folder / "api" / operation["tags"][0] / f"{operation['operationId']}.py"
            if not module.is_file():
                missing.append(f"{method.upper()} {path} ({operation['operationId']})")
    assert not missing, f"operations the generator did not generate: {missing}"


def test_an_app_lives_and_dies_through_the_generated_client(generated: Generated, client: Any, app_name: str) -> None:
    App, AppCreate, Error = generated.model("App"), generated.model("AppCreate"), generated.model("Error")
    app_create = generated.op("apps", "app_create")
    app_list = generated.op("apps", "app_list")
    app_get = generated.op("apps", "app_get")
    app_delete = generated.op("apps", "app_delete")

    with client as rack:
        created = app_create.sync(client=rack, body=AppCreate(name=app_name))
        assert isinstance(created, App), created
        assert created.name == app_name

        again = app_create.sync_detailed(client=rack, body=AppCreate(name=app_name))
        assert again.status_code == 409
        assert isinstance(again.parsed, Error) and again.parsed.error

        apps = app_list.sync(client=rack)
        assert isinstance(apps, list) and all(isinstance(app, App) for app in apps)
        assert app_name in [app.name for app in apps]

        shown = app_get.sync(app_name, client=rack)
        assert isinstance(shown, App)
        assert shown.name == app_name
        assert shown.status.value == "created"  # no release has served yet

        deleted = app_delete.sync_detailed(app_name, client=rack)
        assert deleted.status_code == 204, deleted.content

        gone = app_get.sync_detailed(app_name, client=rack)
        assert gone.status_code == 404
        assert isinstance(gone.parsed, Error)
        assert app_name in gone.parsed.error


def test_a_missing_app_is_a_404_error_model(generated: Generated, client: Any) -> None:
    Error = generated.model("Error")
    with client as rack:
        response = generated.op("apps", "app_get").sync_detailed("no-such-app-here", client=rack)
    assert response.status_code == 404
    assert isinstance(response.parsed, Error)
    assert json.loads(response.content) == {"error": response.parsed.error}
    assert "no-such-app-here" in response.parsed.error


def test_the_system_is_the_local_provider(generated: Generated, client: Any, rack: RunningRack) -> None:
    with client as api:
        system = generated.op("system", "system_get").sync(client=api)
    assert isinstance(system, generated.model("System"))
    assert system.provider == "local"
    assert system.name == rack.name
    assert system.version


def test_a_source_upload_is_a_binary_body(generated: Generated, client: Any, app_name: str) -> None:
    """build_create sends the archive as raw bytes; a source without a manifest is a 400 Error."""
    File, Error, AppCreate = (
        generated.module("types").File,
        generated.model("Error"),
        generated.model("AppCreate"),
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = b"no manifest here\n"
        info = tarfile.TarInfo("README")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    with client as rack:
        generated.op("apps", "app_create").sync(client=rack, body=AppCreate(name=app_name))
        try:
            response = generated.op("builds", "build_create").sync_detailed(
                app_name, client=rack, body=File(payload=io.BytesIO(buffer.getvalue()), file_name="source.tgz")
            )
            assert response.status_code == 400, response.content
            assert isinstance(response.parsed, Error)
            assert "convox.yml" in response.parsed.error or "manifest" in response.parsed.error
        finally:
            generated.op("apps", "app_delete").sync_detailed(app_name, client=rack)


def test_without_the_password_only_the_check_answers(generated: Generated, rack: RunningRack) -> None:
    anonymous = generated.package.Client(base_url=rack.url, verify_ssl=rack.verify, raise_on_unexpected_status=True)
    with anonymous as api:
        check = generated.op("system", "check").sync(client=api)
        assert check is not None and check.status
        refused = generated.op("apps", "app_list").sync_detailed(client=api)
    assert refused.status_code == 401  # documented: parsed as the document's Error, not an unexpected status
    assert isinstance(refused.parsed, generated.model("Error")) and refused.parsed.error


async def test_the_async_variant_with_httpx_basic_auth(generated: Generated, rack: RunningRack) -> None:
    """The plain Client with httpx's own BasicAuth, through the generated ``asyncio_detailed`` call."""
    client = generated.package.Client(
        base_url=rack.url, verify_ssl=rack.verify, httpx_args={"auth": httpx.BasicAuth("convox", rack.password)}
    )
    async with client as api:
        response = await generated.op("apps", "app_list").asyncio_detailed(client=api)
    assert response.status_code == 200
    assert isinstance(response.parsed, list)
