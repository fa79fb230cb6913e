"""The CLI's HTTP client for the gateway: rack errors become :class:`CliError` with the rack's message.

Answers are typed: ``get(path, Kind)`` returns a :mod:`shared.protocol` TypedDict (``get_list`` a list of
them, ``get_strings`` a ``dict[str, str]``), checked by :mod:`cli.answers`; ``send`` is for a call whose
answer is not used, ``request`` (`convox api`) returns the JSON as it came.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from cli.answers import expect, expect_list, expect_strings
from cli.config import Rack
from cli.errors import CliError, RackUnavailable

if TYPE_CHECKING:
    import httpx

    from cli.unixhttp import UnixHttp

UNAVAILABLE = (502, 503, 504)
T = TypeVar("T")


class Answer(Protocol):
    """What is read of an answer: an ``httpx.Response``, or :class:`cli.unixhttp.Response`."""

    @property
    def status_code(self) -> int: ...

    @property
    def reason_phrase(self) -> str: ...

    @property
    def content(self) -> bytes: ...

    def json(self) -> Any: ...


class Client:
    def __init__(self, rack: Rack, timeout: float = 30.0) -> None:
        self.rack = rack
        self.http: httpx.Client | None = None
        self.http_unix: UnixHttp | None = None
        if rack.uds:  # the rack's own socket: the standard library's client, without httpx's import
            from cli.unixhttp import UnixHttp

            self.http_unix = UnixHttp(rack.uds, rack.host, rack.password, timeout)
            return
        import httpx

        verify = rack.ssl_context()
        self.http = httpx.Client(
            base_url=rack.base_url,
            auth=("convox", rack.password),
            timeout=timeout,
            verify=True if verify is None else verify,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.http is not None:
            self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> object:
        """The answer's JSON (``None`` for no content)."""
        response = self._answer(method, path, **kwargs)
        if response.status_code == 401:
            raise CliError(f"{error_message(response)} for {self.rack.host} (run `convox login {self.rack.host}`)")
        if response.status_code in UNAVAILABLE:
            raise RackUnavailable(error_message(response))
        if response.status_code >= 400:
            raise CliError(error_message(response))
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise CliError(f"rack answered {response.status_code} with a body that is not JSON") from None

    def _answer(self, method: str, path: str, **kwargs: Any) -> Answer:
        if self.http_unix is not None:
            return self.http_unix.request(method, path, **kwargs)  # its errors are the CLI's already
        import httpx

        assert self.http is not None
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            from cli.pins import is_certificate_error

            if is_certificate_error(exc):
                raise CliError(
                    f"the certificate of {self.rack.host} is not the one pinned at login: refusing to send the password"
                    f" (if the rack's certificate really changed, run `convox login {self.rack.host}` again)"
                ) from None
            raise RackUnavailable(f"rack unreachable at {self.rack.host}: connection refused") from None
        except httpx.TimeoutException:
            raise RackUnavailable(f"rack at {self.rack.host} did not answer in time") from None
        except httpx.TransportError as exc:  # the connection reset or closed mid-answer
            raise RackUnavailable(f"rack at {self.rack.host}: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise CliError(f"rack at {self.rack.host}: {type(exc).__name__}") from None

    def send(self, method: str, path: str, **kwargs: Any) -> None:
        """A call for its effect: what it answers (when it succeeds) is not read."""
        self.request(method, path, **kwargs)

    def get(self, path: str, kind: type[T], **kwargs: Any) -> T:
        return expect(kind, self.request("GET", path, **kwargs), path)

    def get_list(self, path: str, kind: type[T], **kwargs: Any) -> list[T]:
        return expect_list(kind, self.request("GET", path, **kwargs), path)

    def get_strings(self, path: str, **kwargs: Any) -> dict[str, str]:
        return expect_strings(self.request("GET", path, **kwargs), path)

    def post(self, path: str, kind: type[T], **kwargs: Any) -> T:
        return expect(kind, self.request("POST", path, **kwargs), path)

    def post_list(self, path: str, kind: type[T], **kwargs: Any) -> list[T]:
        return expect_list(kind, self.request("POST", path, **kwargs), path)

    def delete(self, path: str, kind: type[T], **kwargs: Any) -> T:
        return expect(kind, self.request("DELETE", path, **kwargs), path)


def error_message(response: Answer) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return f"rack answered {response.status_code} {response.reason_phrase}"
