"""The app the process cases share (issue #4): deployed once per benchmark run with `convox deploy` from the
local busybox image, one process type `web` running `sleep`."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import timing
from bench.context import Context

APP = "benchps"
MANIFEST = """services:
  web:
    build: .
    command: sleep 86400
    scale:
      memory: 64
"""

_deployed: dict[int, Deployed] = {}


@dataclass(frozen=True)
class Deployed:
    app: str
    pid: str
    image: str
    env: dict[str, str]


def api_get(ctx: Context, env: dict[str, str], path: str) -> object:
    return json.loads(timing.run([str(ctx.convox), "api", "get", path], env=env).stdout)


def processes(ctx: Context, env: dict[str, str]) -> list[dict[str, object]]:
    found = api_get(ctx, env, f"/apps/{APP}/processes?stats=false")
    assert isinstance(found, list)
    return [p for p in found if p.get("name") == "web" and str(p.get("command", "")).endswith("sleep 86400'")]


def deployed(ctx: Context) -> Deployed:
    """The shared app, deployed on first use in this run and deleted when the run ends."""
    if id(ctx) in _deployed:
        return _deployed[id(ctx)]
    from tests.images import ensure_busybox_image

    image = ensure_busybox_image()
    rack = ctx.rack()
    env = rack.env()
    work = Path(ctx.stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ps-")))
    (work / "Dockerfile").write_text(f"FROM {image}\n")
    (work / "convox.yml").write_text(MANIFEST)
    timing.run([str(ctx.convox), "apps", "create", APP], env=env)
    ctx.stack.callback(
        lambda: subprocess.run([str(ctx.convox), "apps", "delete", APP], env=env, check=False, capture_output=True)
    )
    timing.run([str(ctx.convox), "deploy", str(work), "--app", APP], env=env, timeout=300)
    [process] = processes(ctx, env)
    _deployed[id(ctx)] = Deployed(APP, str(process["id"]), str(process["image"]), env)
    return _deployed[id(ctx)]


def scale(ctx: Context, app: Deployed, count: int, within: float = 120) -> list[str]:
    """Scale `web` to ``count`` and wait until that many run; their pids."""
    timing.run([str(ctx.convox), "scale", "web", "--count", str(count), "--app", app.app], env=app.env, timeout=within)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pids = [str(p["id"]) for p in processes(ctx, app.env)]
        if len(pids) == count:
            return pids
        time.sleep(0.5)
    raise RuntimeError(f"web did not reach {count} processes within {within:.0f}s")
