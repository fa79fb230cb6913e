"""The CLI's HTTP calls to a rack on its own unix socket, with the standard library (``http.client``).

Over the rack's socket there is no TLS to verify and no pool worth keeping: httpx, whose import is some
0.1 s of every command, is not needed there, so :class:`cli.client.Client` uses this instead (and httpx for a
rack over HTTPS). One connection per call (connecting to a local socket costs microseconds). It takes what the
CLI's calls pass: ``params``, ``json``, ``content`` (bytes or an iterator of bytes, with its
``content-length``), ``headers`` and ``timeout`` (seconds).
"""

from __future__ import annotations

import base64
import http.client
import json as jsonlib
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from cli.errors import RackUnavailable


class Response:
    """What :class:`cli.client.Client` reads of an answer (as of an ``httpx.Response``)."""

    def __init__(self, status_code: int, reason_phrase: str, content: bytes) -> None:
        self.status_code = status_code
        self.reason_phrase = reason_phrase
        self.content = content

    def json(self) -> Any:
        return jsonlib.loads(self.content)


class _Connection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("rack", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _query(params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None) -> str:
    if not params:
        return ""
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    return "?" + urlencode([(k, "true" if v is True else "false" if v is False else v) for k, v in pairs], doseq=True)


class UnixHttp:
    def __init__(self, path: str, host: str, password: str, timeout: float) -> None:
        self.path = path
        self.host = host
        self.timeout = timeout
        self.authorization = "Basic " + base64.b64encode(f"convox:{password}".encode()).decode()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        json: Any = None,
        content: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        sent = {"Authorization": self.authorization, "Connection": "close", **(headers or {})}
        body: bytes | Iterable[bytes] | None = content
        if json is not None:
            body = jsonlib.dumps(json).encode()
            sent["Content-Type"] = "application/json"
        if isinstance(body, bytes) or body is None:
            sent["Content-Length"] = str(len(body or b""))
        conn = _Connection(self.path, self.timeout if timeout is None else timeout)
        try:
            conn.request(method, path + _query(params), body=body, headers=sent)
            answer = conn.getresponse()
            return Response(answer.status, answer.reason, answer.read())
        except (FileNotFoundError, ConnectionRefusedError):
            raise RackUnavailable(f"rack unreachable at {self.host}: connection refused") from None
        except TimeoutError:
            raise RackUnavailable(f"rack at {self.host} did not answer in time") from None
        except (OSError, http.client.HTTPException) as exc:  # the connection reset or closed mid-answer
            raise RackUnavailable(f"rack at {self.host}: {type(exc).__name__}") from None
        finally:
            conn.close()

    def close(self) -> None:
        pass
