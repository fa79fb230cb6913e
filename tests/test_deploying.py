"""`convox deploy` without Typer: which command lines it reads itself, what it loads, the build stream's channels."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cli.building import CHANNELS, channel_of
from cli.deploying import fast, parse
from cli.errors import CliError
from shared import stream


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], ([], {}, set())),
        (["src"], (["src"], {}, set())),
        (["src", "--app", "web"], (["src"], {"app": "web"}, set())),
        (["-a", "web", "src"], (["src"], {"app": "web"}, set())),
        (["--app=web", "--app", "api"], ([], {"app": "api"}, set())),
        (
            ["-d", "", "-m", "ci/convox.yml", "--no-cache"],
            ([], {"description": "", "manifest": "ci/convox.yml"}, {"no_cache"}),
        ),
        (["--description=a=b"], ([], {"description": "a=b"}, set())),
        (["--", "-odd"], (["-odd"], {}, set())),
        (["-"], (["-"], {}, set())),
    ],
)
def test_deploy_reads_the_command_lines_it_knows(args: list[str], expected: object) -> None:
    assert parse(args) == expected


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["-h"],
        ["--app"],
        ["--app", "--no-cache"],
        ["-aweb"],
        ["--no-cache=yes"],
        ["--unknown"],
        ["--promote"],
    ],
)
def test_deploy_leaves_to_typer_what_it_does_not_read_for_certain(args: list[str]) -> None:
    assert parse(args) is None
    assert fast(["deploy", *args]) is None


def test_deploy_leaves_two_directories_and_other_commands_to_typer() -> None:
    assert fast(["deploy", "one", "two"]) is None
    assert fast(["build", "."]) is None
    assert fast([]) is None


def test_a_deploy_loads_neither_typer_nor_rich_nor_pydantic_before_its_upload() -> None:
    code = (
        "import sys, cli.deploying, cli.building, cli.rollout, cli.client, shared.archive, shared.dockerignore; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'click', 'rich', 'pydantic', 'asyncio'}))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "[]"


def test_the_build_stream_knows_the_protocols_channels() -> None:
    assert {int(channel) for channel in stream.Channel} == CHANNELS
    assert channel_of(stream.encode(stream.Channel.STDOUT, b"x")) == 1
    with pytest.raises(CliError, match="empty message"):
        channel_of(b"")
    with pytest.raises(CliError, match="unknown channel 9"):
        channel_of(b"\x09x")
