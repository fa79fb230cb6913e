"""Runner locks: alive while their process lives, dead the moment it is killed (a real child process)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from shared.provider.local.runners import Runner, dead, is_alive

HOLDER = """
import sys, time
from pathlib import Path
from shared.provider.local.runners import Runner
runner = Runner(Path(sys.argv[1]))
print(runner.hold(), flush=True)
time.sleep(600)
"""


def test_a_runner_is_alive_until_its_process_is_killed(tmp_path: Path) -> None:
    root = tmp_path / "runners"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:
        assert child.stdout is not None
        token = child.stdout.readline().strip()
        assert is_alive(root, token)
        assert asyncio.run(dead(root, {token, "", "0123456789abcdef", "../../etc/passwd"})) == {
            "",
            "0123456789abcdef",
            "../../etc/passwd",
        }
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert asyncio.run(dead(root, [token])) == {token}
        assert not (root / token).exists()  # removed by whoever found it free
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_a_released_runner_is_dead_and_holding_twice_keeps_one_token(tmp_path: Path) -> None:
    runner = Runner(tmp_path / "runners")
    token = runner.hold()
    assert runner.hold() == token and runner.held
    assert asyncio.run(runner.holding()) == token  # held already: the same token, no second lock
    assert is_alive(tmp_path / "runners", token)
    runner.release()
    assert not runner.held and not is_alive(tmp_path / "runners", token)
    assert list((tmp_path / "runners").iterdir()) == []
