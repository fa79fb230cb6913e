"""The Docker Engine API over its unix socket, as much of it as a build needs: build an image from a context
tar, push it. Blocking (the builder is a plain program, one build at a time); standard library only."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CHUNK = 1024 * 1024


class EngineError(Exception):
    """The engine refused or failed: its own message."""


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


def socket_path(docker_host: str) -> str:
    """The socket of ``DOCKER_HOST`` (``unix:///var/run/docker.sock``, the default); only unix sockets: the
    task mounts the instance's socket, and the engine never listens on a port for it."""
    if not docker_host:
        return "/var/run/docker.sock"
    if not docker_host.startswith("unix://"):
        raise EngineError(f"DOCKER_HOST must be a unix socket (unix:///PATH), not {docker_host!r}")
    return docker_host.removeprefix("unix://")


def registry_auth(username: str, password: str, server: str) -> str:
    """The ``X-Registry-Auth`` header: base64url of the credentials as JSON."""
    body = json.dumps({"username": username, "password": password, "serveraddress": server}).encode()
    return base64.urlsafe_b64encode(body).decode()


class Engine:
    def __init__(self, docker_host: str = "", timeout: float = 3600.0) -> None:
        self.path = socket_path(docker_host)
        self.timeout = timeout

    def _stream(
        self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """The engine's JSON-lines answer, one object at a time; a non-2xx status is an :class:`EngineError`."""
        connection = UnixConnection(self.path, self.timeout)
        try:
            connection.request(method, url, body=body, headers=headers or {})
            response = connection.getresponse()
            if response.status >= 300:
                text = response.read().decode("utf-8", "replace")
                with contextlib.suppress(ValueError):
                    text = json.loads(text).get("message", text)
                raise EngineError(text.strip() or f"HTTP {response.status}")
            buffer = b""
            while chunk := response.read1(CHUNK):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
            if buffer.strip():
                yield json.loads(buffer)
        finally:
            connection.close()

    def version(self) -> str:
        for answer in self._stream("GET", "/version"):
            return str(answer.get("Version", ""))
        return ""

    def build(
        self,
        context: Path,
        tag: str,
        dockerfile: str,
        buildargs: dict[str, str],
        nocache: bool,
        output: Callable[[str], None],
    ) -> None:
        """Build ``context`` (an uncompressed tar) as ``tag``; the build's output goes to ``output`` as it comes."""
        query = urllib.parse.urlencode(
            {
                "t": tag,
                "dockerfile": dockerfile,
                "buildargs": json.dumps(buildargs),
                "nocache": "1" if nocache else "0",
                "rm": "1",
                "forcerm": "1",
            }
        )
        size = os.path.getsize(context)
        with context.open("rb") as body:
            headers = {"Content-Type": "application/x-tar", "Content-Length": str(size)}
            for answer in self._stream("POST", f"/build?{query}", body=body, headers=headers):
                if "error" in answer:
                    raise EngineError(str(answer.get("errorDetail", {}).get("message") or answer["error"]).strip())
                if "stream" in answer:
                    output(str(answer["stream"]))

    def push(self, image: str, auth: str, output: Callable[[str], None]) -> str:
        """Push ``image`` (``HOST/NAME:TAG``) with the ``X-Registry-Auth`` value ``auth``; returns the digest the
        registry gave it. Progress bars are left out of ``output``, each layer's outcome is in it."""
        name, _, tag = image.rpartition(":")
        query = urllib.parse.urlencode({"tag": tag})
        digest = ""
        quoted = urllib.parse.quote(name, safe="/:")
        for answer in self._stream("POST", f"/images/{quoted}/push?{query}", headers={"X-Registry-Auth": auth}):
            if "error" in answer:
                raise EngineError(str(answer.get("errorDetail", {}).get("message") or answer["error"]).strip())
            if "aux" in answer and isinstance(answer["aux"], dict):
                digest = str(answer["aux"].get("Digest", digest))
            status = answer.get("status")
            if status and not answer.get("progressDetail"):
                output(f"{answer['id']}: {status}\n" if answer.get("id") else f"{status}\n")
        if not digest:
            raise EngineError(f"the registry gave no digest for {image}")
        return digest
