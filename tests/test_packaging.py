"""The built wheel holds every package and imports work from it the way they do from the checkout."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def test_wheel_installs_and_runs_convox_version(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("convox_rack-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in (
        "cli/main.py",
        "shared/provider/local/__init__.py",
        "services/gateway/__main__.py",
        "services/apps/routes.py",
    ):
        assert package in names
    assert not any(name.startswith("tests/") for name in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # third-party dependencies come from this environment, but not its editable hook (a .pth inside a
    # directory named by another .pth is never run), so the project's own code can only come from the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    version = subprocess.run(
        [str(venv / "bin" / "convox"), "--version"], capture_output=True, text=True, cwd=outside, check=True
    )
    assert version.stdout.startswith("convox ")
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import cli.app, services.gateway, services.apps, services.supervisor, shared.provider.local as p;"
            "print(p.__file__)",
        ],
        capture_output=True,
        text=True,
        cwd=outside,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(site)), where
    helped = subprocess.run(
        [str(venv / "bin" / "convox"), "apps", "--help"], capture_output=True, text=True, cwd=outside
    )
    assert helped.returncode == 0 and "create" in helped.stdout
