"""The CLI starts without the AWS libraries: aioboto3, botocore, Jinja2 and cryptography are imported only
by the commands that talk to AWS (`convox --version` and `convox ps` start no slower). Nothing is simulated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("aioboto3", "aiobotocore", "boto3", "botocore", "jinja2", "cryptography", "cfnlint", "moto")


def test_the_cli_and_the_aws_package_import_no_aws_library() -> None:
    code = (
        "import json, sys, cli.app, shared.provider.aws, shared.provider.aws.install, shared.provider.aws.stacks; "
        "print(json.dumps(sorted(m for m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout)
    assert [m for m in loaded if m.split(".")[0] in HEAVY] == []


def test_the_cli_starts_without_asyncio_tls_or_the_http_and_drawing_libraries() -> None:
    # every command's module is imported at the start (typer registers them): each loads what it runs on
    # only when it runs (an event loop for `convox cp` and the AWS commands, TLS and httpx for HTTPS, rich)
    code = "import json, sys, cli.app; print(json.dumps(sorted(m for m, v in sys.modules.items() if v is not None)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout)
    assert [m for m in loaded if m.split(".")[0] in ("asyncio", "ssl", "httpx", "rich", "websockets")] == []
