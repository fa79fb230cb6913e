"""Choosing the provider: rack settings name it; the aws one imports aioboto3 only when it talks to AWS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.errors import BadRequest
from shared.provider import PROVIDERS, load_provider
from tests.conftest import ROOT
from tests.contract.conftest import settings_for


def test_both_providers_are_known_by_name(tmp_path: Path) -> None:
    assert {"local", "aws"} <= set(PROVIDERS)
    assert load_provider(settings_for("aws", tmp_path)).name == "aws"
    with pytest.raises(BadRequest, match="unknown provider: gcp"):
        load_provider(settings_for("gcp", tmp_path))


def test_rack_provider_selects_aws_without_importing_aioboto3() -> None:
    program = (
        "import sys\n"
        "from shared.config import RackSettings\n"
        "from shared.provider import load_provider\n"
        "provider = load_provider(RackSettings())\n"
        "print(provider.name, 'aioboto3' in sys.modules, 'botocore' in sys.modules)\n"
    )
    env = {"RACK_PROVIDER": "aws", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["aws", "False", "False"]


def test_rack_start_refuses_an_unknown_provider() -> None:
    command = [sys.executable, "-m", "cli.main", "rack", "start", "--provider", "gcp"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert "ERROR: unknown provider: gcp (known: local, aws)" in result.stderr
