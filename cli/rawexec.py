"""`convox exec` over the rack's own unix socket: a raw stream (``v1.raw.rack``, :mod:`shared.rawstream`)
instead of a websocket, with pipes or on a terminal (:func:`exec_terminal`).

The request is the websocket's, asking ``Upgrade: v1.raw.rack``; a refusal is ``ERROR: <the rack's message>``
as for the websocket. Then stdin goes to the rack as it is, moved by the kernel (``splice``, a thread of its
own) and shut at its EOF; output comes as Docker's frames, read into one buffer used again and again and
written out frame by frame without a copy (``writev`` of views). The last frame is the exit status; a stream
that ends without it is an error. Nothing here needs asyncio or a websocket library: the command starts
sooner too.
"""

from __future__ import annotations

import base64
import contextlib
import os
import select
import socket
import threading
from collections.abc import Sequence
from urllib.parse import urlencode

from cli.config import Rack
from cli.errors import CliError
from shared import rawstream
from shared.splice import Pump, batch_reads, recv_into, write_all

READ_SIZE = 1 << 20
"""What one read of the stream takes at most (into the one buffer)."""
SEND_BUFFER = 4 << 20
"""What the rack's socket may hold of stdin sent (see :data:`cli.streamconn.SEND_BUFFER`)."""
HEAD_LIMIT = 64 << 10
STDIN, STDOUT, STDERR = 0, 1, 2


def _connect(rack: Rack) -> socket.socket:
    from cli.stream import StreamUnavailable

    assert rack.uds is not None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(rack.uds)
    except OSError as exc:
        sock.close()
        raise StreamUnavailable(f"rack unreachable at {rack.host}: {exc.strerror}") from None
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    return sock


def _recv(sock: socket.socket, fds: list[int]) -> bytes:
    """One read that also takes the descriptors riding on it (the engine's connection, when passed)."""
    data, received, _, _ = socket.recv_fds(sock, HEAD_LIMIT, 1)
    fds.extend(received)
    return data


def _answer(sock: socket.socket, rack: Rack) -> tuple[bytes, socket.socket | None]:
    """Read the rack's answer to the upgrade: what followed a ``101``'s head and, when the rack passed it,
    the engine's connection with what the rack had read of it put back in front; or the refusal, raised."""
    from cli.stream import StreamUnavailable, refusal

    data, fds = b"", list[int]()
    try:
        while (mark := data.find(b"\r\n\r\n")) < 0:
            chunk = _recv(sock, fds)
            if not chunk or len(data) > HEAD_LIMIT:
                raise StreamUnavailable(f"the rack at {rack.host} ended the stream before answering")
            data += chunk
        lines = data[:mark].decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise StreamUnavailable(f"the rack at {rack.host} answered something else than HTTP") from None
        rest = data[mark + 4 :]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if status != 101:
            size = headers.get("content-length") or "0"
            length = int(size) if size.isdigit() else 0
            while len(rest) < min(length, HEAD_LIMIT) and (chunk := sock.recv(HEAD_LIMIT)):
                rest += chunk
            raise refusal(status, rest[:length], rack.host)
        if headers.get(rawstream.STDIO.lower()) != rawstream.PASSED:
            return rest, None
        while len(rest) < 4 or len(rest) < 4 + int.from_bytes(rest[:4], "big") or not fds:
            chunk = _recv(sock, fds)
            if not chunk:
                raise StreamUnavailable(f"the rack at {rack.host} ended the stream before passing it")
            rest += chunk
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    for extra in fds[1:]:
        os.close(extra)
    length = int.from_bytes(rest[:4], "big")
    engine = socket.socket(fileno=fds[0])
    if rest[4 + length :]:  # nothing follows it: the status comes once the client has read the stream
        engine.close()
        raise StreamUnavailable(f"the rack at {rack.host} sent more than the stream it passed")
    return rest[4 : 4 + length], engine


def _feed(sock: socket.socket) -> None:
    """stdin to the rack until its EOF, then the socket's write side shut (the remote stdin's EOF)."""
    pump = Pump(STDIN, sock.fileno())
    try:
        while pump.move():
            pass
    except OSError:  # the rack closed the stream (the process ended), or stdin failed: nothing more to send
        return
    finally:
        pump.close()
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


def _watch(sock: socket.socket, engine: socket.socket, read: threading.Event) -> None:
    """While the engine's stream is read: the rack sends nothing on its own connection until asked, so anything
    there (its close: the processes service went away) ends the stream; it is then without a status."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.poll()
    if not read.is_set():
        with contextlib.suppress(OSError):
            engine.shutdown(socket.SHUT_RDWR)


def _write(fd: int, views: list[memoryview]) -> None:
    """Write every view, in order (a pipe may take only part at a time)."""
    while views:
        try:
            written = os.writev(fd, views)
        except BlockingIOError:  # an output left non-blocking by whoever shares it
            select.select([], [fd], [])
            continue
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _receive(sock: socket.socket, first: bytes, out: int = STDOUT, err: int = STDERR) -> bytes | None:
    """Write the output frames to ``out`` and ``err`` until the status frame: its payload (None when the
    stream ended without it)."""
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    have = len(first)
    view[:have] = first
    dest, left = out, 0  # the frame being written out: where, and how much of its payload is still to come
    status: bytearray | None = None
    while True:
        pos = 0
        runs: list[tuple[int, list[memoryview]]] = []
        while pos < have:
            if left:
                take = min(left, have - pos)
                if status is not None:
                    status += view[pos : pos + take]
                elif runs and runs[-1][0] == dest:
                    runs[-1][1].append(view[pos : pos + take])
                else:
                    runs.append((dest, [view[pos : pos + take]]))
                pos += take
                left -= take
                continue
            if status is not None:
                break
            if have - pos < rawstream.HEADER:
                break
            kind, left = buffer[pos], int.from_bytes(buffer[pos + 4 : pos + 8], "big")
            pos += rawstream.HEADER
            if kind == rawstream.STATUS:
                status = bytearray()
            else:
                dest = err if kind in (rawstream.STDERR, rawstream.ENGINE_ERROR) else out
        for fd, views in runs:
            _write(fd, views)
        del runs
        if status is not None and not left:
            return bytes(status)
        rest = have - pos  # part of a header: to the front, read on after it
        buffer[:rest] = buffer[pos:have]
        got = recv_into(sock, view[rest:])
        if not got:
            return None
        have = rest + got


def open_stream(
    rack: Rack, path: str, query: Sequence[tuple[str, str]], pass_stdio: bool = False
) -> tuple[socket.socket, bytes, socket.socket | None]:
    """A raw stream of the route ``path``: the rack's connection, what came after its answer's head and, when
    ``pass_stdio`` asked for it and the rack gave it, the engine's connection (the refusal, raised)."""
    token = base64.b64encode(f"convox:{rack.password}".encode()).decode()
    target = path + (f"?{urlencode(list(query))}" if query else "")
    passing = f"{rawstream.STDIO}: {rawstream.PASS}\r\n" if pass_stdio else ""
    request = (
        f"GET {target} HTTP/1.1\r\nHost: rack\r\nAuthorization: Basic {token}\r\n"
        f"Connection: Upgrade\r\nUpgrade: {rawstream.RAW_PROTOCOL}\r\n{passing}\r\n"
    )
    sock = _connect(rack)
    try:
        sock.sendall(request.encode())
        first, engine = _answer(sock, rack)
    except BaseException:
        sock.close()
        raise
    return sock, first, engine


def receive(sock: socket.socket, first: bytes, out: int = STDOUT, err: int = STDERR) -> bytes | None:
    """The output frames to ``out`` and ``err`` until the status frame: its payload (None without it)."""
    batch_reads(sock)
    return _receive(sock, first, out, err)


def exec_raw(rack: Rack, path: str, query: Sequence[tuple[str, str]]) -> int:
    """Run ``convox exec`` with pipes as a raw stream; returns the remote exit code."""
    from cli.stream import Ended

    sock, first, engine = open_stream(rack, path, query, pass_stdio=True)
    with sock:
        stdio = engine if engine is not None else sock
        with engine if engine is not None else contextlib.nullcontext():
            batch_reads(stdio)
            threading.Thread(target=_feed, args=(stdio,), name="stdin", daemon=True).start()
            read = threading.Event()
            if engine is not None:
                threading.Thread(target=_watch, args=(sock, engine, read), name="rack", daemon=True).start()
            try:
                payload = _receive(stdio, first)
                read.set()
                if engine is not None and payload is None:  # the engine's stream is over: the status is the rack's
                    sock.shutdown(socket.SHUT_WR)
                    payload = _receive(sock, b"")
            except BrokenPipeError:
                raise Ended(141) from None
    return _exit_code(payload)


def _copy_out(engine: socket.socket, first: bytes) -> None:
    """A terminal's output as it comes (no batching: each key's echo at once) to stdout, until its end."""
    view = memoryview(bytearray(READ_SIZE))
    if first:
        write_all(STDOUT, first)
    while True:
        try:
            got = engine.recv_into(view)
        except ConnectionError:
            return
        if not got:
            return
        write_all(STDOUT, view[:got])


def _type_frames(sock: socket.socket) -> None:
    """The terminal's keys to the rack as stdin frames (a TTY not passed), its EOF the socket's write side."""
    try:
        while data := os.read(STDIN, 1 << 16):
            sock.sendall(rawstream.frame_header(rawstream.STDIN, len(data)) + data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:  # the rack closed the stream (the process ended), or the terminal went away
        return


def exec_terminal(rack: Rack, path: str, query: Sequence[tuple[str, str]]) -> int:
    """Run ``convox exec`` on this terminal as a raw stream; returns the remote exit code. The engine's
    connection, passed, carries the keys and the terminal's bytes both ways; the rack's carries the
    terminal's resizes (``SIGWINCH``) and, once the output has ended, the exit status. The terminal is raw
    while the stream runs and restored on every way out; SIGTERM and SIGHUP end the stream as Ctrl-C would
    end a local command (exit 128 + the signal), and the closed stream hangs up the remote process."""
    import signal

    from cli import terminal
    from cli.stream import STOP_SIGNALS, Ended

    params = [*query, ("tty", "true")]
    size = terminal.size(STDIN)
    if size:
        params += [("width", str(size[0])), ("height", str(size[1]))]
    sock, first, engine = open_stream(rack, path, params, pass_stdio=True)  # a refusal: before raw mode

    def stop(signum: int, _: object) -> None:
        raise Ended(128 + signum)

    def resized(_signum: int, _frame: object) -> None:
        now = terminal.size(STDIN)
        if now:
            with contextlib.suppress(OSError):
                sock.sendall(rawstream.resize_frame(*now))

    with sock, engine if engine is not None else contextlib.nullcontext(), terminal.raw(STDIN):
        handlers = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
        handlers[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, resized)
        try:
            if engine is not None:
                threading.Thread(target=_feed, args=(engine,), name="stdin", daemon=True).start()
                read = threading.Event()
                threading.Thread(target=_watch, args=(sock, engine, read), name="rack", daemon=True).start()
                _copy_out(engine, first)
                read.set()
                with contextlib.suppress(OSError):  # read to its end: the status, please
                    sock.shutdown(socket.SHUT_WR)
                payload = _receive(sock, b"")
            else:
                threading.Thread(target=_type_frames, args=(sock,), name="stdin", daemon=True).start()
                payload = _receive(sock, first)
        except BrokenPipeError:
            raise Ended(141) from None
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
    return _exit_code(payload)


def _exit_code(payload: bytes | None) -> int:
    """The remote exit code of a stream's status frame (its absence, or an error, raised)."""
    from cli.stream import parse_status

    if payload is None:
        raise CliError("the stream ended without an exit status (the connection was lost)")
    status = parse_status(payload)
    if status is None:
        raise CliError("the stream ended with a malformed exit status")
    if status.error:
        raise CliError(status.error, code=status.exit_code or 1)
    return status.exit_code or 0
