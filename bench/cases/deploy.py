"""Deploy: `convox deploy` of a small app against `docker build` + `docker run` of it by hand (issue #3)."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench import timing
from bench.context import ROOT, Context
from bench.result import Result, Target

SAMPLE = ROOT / "tests" / "apps" / "web"
MANIFEST = """services:
  web:
    build: .
    command: httpd -f -p 3000 -h /www
    port: 3000
    health: /
    scale:
      memory: 64
"""
"""One process type, as the docker side runs one container."""
TARGET = Target.ratio_below(1.3)  # issue #14 (it was 3x in issue #3)
APP = "benchdeploy"


def wait_for(url: str, body: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).text == body:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{url} did not answer {body!r} within {within:.0f}s")


def run(ctx: Context) -> Result:
    from tests.images import ensure_busybox_image

    ensure_busybox_image()
    rack = ctx.rack()
    env = rack.env()
    work = Path(ctx.stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-deploy-")))
    ours_dir, theirs_dir = work / "convox", work / "docker"
    shutil.copytree(SAMPLE, ours_dir)
    shutil.copytree(SAMPLE, theirs_dir)
    (ours_dir / "convox.yml").write_text(MANIFEST)
    timing.run([str(ctx.convox), "apps", "create", APP], env=env)
    ctx.stack.callback(
        lambda: subprocess.run([str(ctx.convox), "apps", "delete", APP], env=env, check=False, capture_output=True)
    )
    tag = "rack-bench/deploy:latest"
    running: list[str] = []
    ctx.stack.callback(
        lambda: (
            subprocess.run([ctx.docker, "rm", "-f", *running], check=False, capture_output=True) if running else None
        )
    )
    counter = iter(range(1_000_000))
    nonce = secrets.token_hex(4)
    """In every version served: content no earlier run built, so neither side finds it in the Engine's build
    cache. With the same versions each run (v1, v3, ...), the docker side's layers of an earlier run (its images
    stay, dangling) made its builds cached ones (0.06 s against 0.6 s here) while the rack deletes its app's."""

    def convox_deploy() -> float:
        version = f"v{next(counter)}-{nonce}\n"
        (ours_dir / "www" / "index.html").write_text(version)
        start = time.perf_counter()
        timing.run([str(ctx.convox), "deploy", str(ours_dir), "--app", APP], env=env, timeout=300)
        elapsed = time.perf_counter() - start
        balancer = timing.run([str(ctx.convox), "api", "get", f"/apps/{APP}"], env=env).stdout
        address = json.loads(balancer)["balancer"]
        wait_for(f"http://{address}/", version, within=5)
        return elapsed

    def docker_deploy() -> float:
        version = f"v{next(counter)}-{nonce}\n"
        (theirs_dir / "www" / "index.html").write_text(version)
        start = time.perf_counter()
        timing.run([ctx.docker, "build", "-q", "-t", tag, str(theirs_dir)], timeout=300)
        cid = (
            timing.run(
                [
                    ctx.docker,
                    "run",
                    "-d",
                    "-p",
                    "127.0.0.1::3000",
                    "-m",
                    "64m",
                    tag,
                    "httpd",
                    "-f",
                    "-p",
                    "3000",
                    "-h",
                    "/www",
                ]
            )
            .stdout.decode()
            .strip()
        )
        port = timing.run([ctx.docker, "port", cid, "3000/tcp"]).stdout.decode().strip().rsplit(":", 1)[1]
        wait_for(f"http://127.0.0.1:{port}/", version)
        elapsed = time.perf_counter() - start
        if running:
            subprocess.run([ctx.docker, "rm", "-f", running.pop()], check=False, capture_output=True)
        running.append(cid)
        return elapsed

    samplers: tuple[Callable[[], float], Callable[[], float]] = (convox_deploy, docker_deploy)
    ours, theirs = timing.interleave(*samplers, repeat=ctx.repetitions(5), warmup=ctx.warmups(1))
    return Result(
        title="convox deploy / docker build + docker run (until the new version answers)",
        unit="s",
        convox=ours,
        docker=theirs,
        target=TARGET,
        details={"app": str(SAMPLE)},
    )
