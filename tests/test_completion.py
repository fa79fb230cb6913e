"""Shell completion driven through a real bash: `convox --install-completion` writes the script, bash's
completion function (as Tab calls it) completes commands, flags, the rack's app names and an app's process
types; zsh's entry point answers the same. The CLI runs against a real rack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cli
from tests.test_deploy import SAMPLE, deploy


@pytest.fixture
def shell_env(cli: Cli, tmp_path: Path) -> dict[str, str]:
    """A home and a `convox` on PATH, as an installed CLI is."""
    home = tmp_path / "home"
    bin_dir = tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    wrapper = bin_dir / "convox"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m cli.main "$@"\n')
    wrapper.chmod(0o755)
    return {**cli.env, "HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}


@pytest.fixture
def deployed(cli: Cli, app_name: str, busybox_image: str, tmp_path: Path) -> Iterator[str]:
    source = tmp_path / "web"
    shutil.copytree(SAMPLE, source)
    cli("apps", "create", app_name, check=True)
    try:
        assert deploy(cli, app_name, source).returncode == 0
        yield app_name
    finally:
        cli("apps", "delete", app_name)


def complete(env: dict[str, str], *words: str) -> list[str]:
    """What bash offers for the last of ``words`` (as typed after `convox`), through the installed script."""
    script = (
        'source "$HOME/.bash_completions/convox.sh"\n'
        'COMP_WORDS=(convox "$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n'
        '_convox_completion convox\nprintf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(
        ["bash", "-c", script, "complete", *words], capture_output=True, text=True, env=env, timeout=60, check=True
    )
    return [line for line in result.stdout.splitlines() if line]


def test_bash_completion_of_commands_flags_apps_and_process_types(shell_env: dict[str, str], deployed: str) -> None:
    installed = subprocess.run(
        ["bash", "-c", "convox --install-completion; exit $?"],
        capture_output=True,
        text=True,
        env=shell_env,
        timeout=60,
    )
    assert installed.returncode == 0, installed.stderr
    home = Path(shell_env["HOME"])
    assert "complete -o default -F _convox_completion convox" in (home / ".bash_completions" / "convox.sh").read_text()
    assert ".bash_completions/convox.sh" in (home / ".bashrc").read_text()
    assert complete(shell_env, "sc") == ["scale"]
    assert "restart" in complete(shell_env, "re")
    assert {"--count", "--memory"} <= set(complete(shell_env, "scale", "--"))
    assert complete(shell_env, "ps", "--app", deployed[:6]) == [deployed]
    assert complete(shell_env, "scale", "--app", deployed, "") == ["backend", "web"]
    assert complete(shell_env, "restart", "--app", deployed, "w") == ["web"]
    assert complete(shell_env, "logs", "--app", deployed, "--service", "b") == ["backend"]


def test_completion_of_apps_offers_nothing_when_the_rack_is_down(shell_env: dict[str, str]) -> None:
    env = {**shell_env, "CONVOX_HOST": "http://127.0.0.1:9"}  # nothing listens on the discard port
    subprocess.run(
        ["bash", "-c", "convox --install-completion; exit $?"], capture_output=True, env=env, timeout=60, check=True
    )
    assert complete(env, "ps", "--app", "") == []


def test_zsh_completion_installs_and_answers_through_its_entry_point(shell_env: dict[str, str], tmp_path: Path) -> None:
    # a test double for a zsh user: bash started under the name zsh, which is what the shell detection reads
    fake_zsh = tmp_path / "bin" / "zsh"
    fake_zsh.symlink_to(shutil.which("bash") or "/bin/bash")
    installed = subprocess.run(
        [str(fake_zsh), "-c", "convox --install-completion; exit $?"],
        capture_output=True,
        text=True,
        env=shell_env,
        timeout=60,
    )
    assert installed.returncode == 0, installed.stderr
    home = Path(shell_env["HOME"])
    assert "compdef _convox_completion convox" in (home / ".zfunc" / "_convox").read_text()
    assert "fpath+=~/.zfunc" in (home / ".zshrc").read_text()
    env = {**shell_env, "_CONVOX_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "convox sc"}
    result = subprocess.run(["convox"], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert "scale" in result.stdout
