"""The raw stream's parts without an engine: the kernel pump (shared/splice.py), the hang-up watch
(shared/rawstream.py), the CLI's frame reader (cli/rawexec.py) and the service's session
(services/processes/raw.py). Sockets, pipes and threads are real; where a test needs a process, the
ProcessStream is a test double (named so below), and where it needs the engine's connection, the test
plays the engine on the other end of a socket pair: each test says which."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.rawexec import _receive
from services.processes import raw
from shared import rawserve, rawstream
from shared.logfmt import Logger
from shared.splice import Pump, batch_reads
from shared.stream import Channel, Stdio, Terminal


def read_all(fd: int) -> bytes:
    out = b""
    while chunk := os.read(fd, 1 << 20):
        out += chunk
    return out


def send_cut(sock: socket.socket, data: bytes, cuts: list[int]) -> None:
    """``data`` sent in pieces of the sizes ``cuts`` gives, over and over."""
    turn = 0
    while data:
        cut = cuts[turn % len(cuts)]
        sock.sendall(data[:cut])
        data, turn = data[cut:], turn + 1


def pump_all(src: int, dst: int) -> int:
    pump = Pump(src, dst)
    try:
        total = 0
        while moved := pump.move():
            total += moved
        return total
    finally:
        pump.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_the_pump_moves_every_byte_between_two_sockets_through_its_pipe() -> None:
    data = os.urandom(3 << 20)
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        batch_reads(b)

        def write() -> None:
            a.sendall(data)
            a.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=write)
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(read_all(d.fileno())))
        writer.start()
        reader.start()
        assert pump_all(b.fileno(), c.fileno()) == len(data)
        c.shutdown(socket.SHUT_WR)
        writer.join()
        reader.join()
    assert got == [data]


def test_the_pump_reads_what_cannot_be_spliced_and_writes_to_a_pipe() -> None:
    null = os.open(os.devnull, os.O_RDONLY)  # /dev/null cannot be spliced from: read instead (EOF at once)
    read, write = os.pipe()
    try:
        assert pump_all(null, write) == 0
        os.write(write, b"through a pipe")
        os.close(write)
        a, b = socket.socketpair()
        with a, b:
            assert pump_all(read, a.fileno()) == len(b"through a pipe")  # through the pump's own pipe
            a.shutdown(socket.SHUT_WR)
            assert read_all(b.fileno()) == b"through a pipe"
    finally:
        os.close(null)
        os.close(read)


def test_a_pipe_pumped_into_a_full_socket_can_still_be_written_by_its_writer() -> None:
    """`producer | convox exec ... | consumer` where one program is both (as subprocess's communicate is): the
    pump's wait for room in the stream must not lock the pipe its writer writes (a splice from that pipe
    straight into the socket did, and the writer then waited in the kernel, uninterruptibly, for the stream,
    which waited for it: CI's hang of test_convox_exec_with_pipes_moves_bytes_both_ways_intact_over_a_raw_stream)."""
    read, write = os.pipe()
    a, b = socket.socketpair()  # nobody reads b until the end: a fills up
    fcntl.fcntl(write, fcntl.F_SETFL, fcntl.fcntl(write, fcntl.F_GETFL) | os.O_NONBLOCK)
    pumping = threading.Thread(target=pump_all, args=(read, a.fileno()), daemon=True)
    pumping.start()
    finished: list[bool] = []

    def fill_then_one_more() -> None:  # non-blocking writes: each at once, whether it finds room or not
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the socket fills, then the pipe
            try:
                os.write(write, b"x" * 4096)
            except BlockingIOError:
                break
        time.sleep(0.2)  # the pump waits for room in the socket now
        with contextlib.suppress(BlockingIOError):
            os.write(write, b"y")
        finished.append(True)

    writer = threading.Thread(target=fill_then_one_more, daemon=True)
    writer.start()
    writer.join(8)
    stuck = writer.is_alive()
    reader = threading.Thread(target=lambda: read_all(b.fileno()), daemon=True)
    reader.start()  # the stream drains: whatever waited goes on
    writer.join(10)
    os.close(write)
    pumping.join(10)
    a.shutdown(socket.SHUT_WR)
    reader.join(10)
    for end in (read,):
        os.close(end)
    a.close()
    b.close()
    assert not stuck, "the pipe's writer waited on the pump"
    assert finished == [True]


def test_a_hangup_is_a_closed_peer_not_a_half_closed_one(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    watch = threading.Thread(target=rawstream.wait_hangup, args=(a.fileno(),))
    watch.start()
    b.shutdown(socket.SHUT_WR)  # stdin's EOF
    watch.join(0.3)
    assert watch.is_alive()
    b.close()  # gone
    watch.join(5)
    assert not watch.is_alive()


def frame(kind: int, payload: bytes) -> bytes:
    return rawstream.frame_header(kind, len(payload)) + payload


@settings(max_examples=40, deadline=None)
@given(
    parts=st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.binary(max_size=3000)), max_size=12),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), min_size=1, max_size=30),
    first=st.integers(min_value=0, max_value=40),
)
def test_the_cli_writes_each_frame_to_its_output_however_the_stream_is_cut(
    parts: list[tuple[int, bytes]], cuts: list[int], first: int
) -> None:
    stream = b"".join(frame(k, p) for k, p in parts) + rawstream.status_frame(exit_code=3)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    a, b = socket.socketpair()
    with a, b:

        def send() -> None:
            send_cut(a, stream[first:], cuts)
            a.close()

        sender = threading.Thread(target=send)
        sender.start()
        outputs: dict[int, bytes] = {}
        readers = [
            threading.Thread(target=lambda fd=fd: outputs.__setitem__(fd, read_all(fd))) for fd in (out_r, err_r)
        ]
        for reader in readers:
            reader.start()
        status = _receive(b, stream[:first], out=out_w, err=err_w)
        os.close(out_w)
        os.close(err_w)
        for reader in readers:
            reader.join()
        sender.join()
    os.close(out_r)
    os.close(err_r)
    assert json.loads(status or b"") == {"exit_code": 3}
    assert outputs[out_r] == b"".join(p for k, p in parts if k == 1)
    assert outputs[err_r] == b"".join(p for k, p in parts if k in (2, 3))


@settings(max_examples=60, deadline=None)
@given(
    parts=st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.binary(max_size=700)), max_size=12),
    cuts=st.lists(st.integers(min_value=1, max_value=900), min_size=1, max_size=30),
    first=st.integers(min_value=0, max_value=40),
    read=st.integers(min_value=8, max_value=600),
)
def test_a_followed_logs_frames_are_read_whole_however_cut_and_whatever_their_size(
    parts: list[tuple[int, bytes]], cuts: list[int], first: int, read: int
) -> None:
    """``rawstream.frames`` (what `convox logs` reads over the rack's socket) reads into one buffer, reused: a
    frame cut across reads, or bigger than the buffer, still comes out whole."""
    stream = b"".join(frame(k, p) for k, p in parts)
    a, b = socket.socketpair()
    with a, b:

        def send() -> None:
            send_cut(a, stream[first:], cuts)
            a.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        got = list(rawstream.frames(b, stream[:first], read=read))
        sender.join()
    assert got == parts


def test_the_cli_sees_a_stream_without_a_status(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(frame(1, b"partial"))
    a.close()
    out_r, out_w = os.pipe()
    try:
        assert _receive(b, b"", out=out_w, err=out_w) is None
        os.close(out_w)
        assert read_all(out_r) == b"partial"
    finally:
        os.close(out_r)


class ProcessDouble:
    """A test double of a provider's ProcessStream: an echo process whose stdio is either relayed through
    output()/write() (``engine`` None) or the engine's connection, played by the test (``engine`` set)."""

    def __init__(self, engine: socket.socket | None = None, pending: bytes = b"", code: int = 0) -> None:
        self.engine = engine
        self.pending = pending
        self.code = code
        self.stdin = asyncio.Queue[bytes | None]()
        self.closed = 0
        self.sizes: list[tuple[int, int]] = []

    async def start(self, terminal: Terminal) -> None:
        pass

    async def output(self) -> AsyncIterator[tuple[Channel, bytes | memoryview]]:
        yield Channel.STDERR, b"starting\n"
        while (data := await self.stdin.get()) is not None:
            yield Channel.STDOUT, data

    async def write(self, data: bytes | memoryview) -> None:
        await self.stdin.put(bytes(data))

    async def close_stdin(self) -> None:
        await self.stdin.put(None)

    async def resize(self, width: int, height: int) -> None:
        self.sizes.append((width, height))

    async def wait(self) -> int:
        return self.code

    def take_stdio(self) -> Stdio | None:
        if self.engine is None:
            return None
        self.engine.setblocking(True)
        return Stdio(self.engine, self.pending)

    async def close(self) -> None:
        self.closed += 1


async def session(
    process: ProcessDouble, stdin: bytes, pending: bytes = b"", pause: float = 0.0, tty: bool = False
) -> tuple[str, list[tuple[int, bytes]], socket.socket]:
    """Serve a raw stream to a client that sends ``stdin`` (``pending`` as if read with its request; after
    ``pause`` seconds), then shuts its write side and reads to the end: the outcome and the frames it got."""
    client, served = socket.socketpair()
    served.setblocking(True)
    batch_reads(served)  # as the service's own taking of a connection does (shared/rawserve.py)

    def talk() -> bytes:
        time.sleep(pause)
        client.sendall(stdin)
        client.shutdown(socket.SHUT_WR)
        return read_all(client.fileno())

    talking = asyncio.get_running_loop().run_in_executor(None, talk)
    outcome = await raw.serve(served, pending, process, tty=tty)
    data = await talking
    head, _, data = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    frames = []
    while data:
        size = int.from_bytes(data[4:8], "big")
        frames.append((data[0], data[8 : 8 + size]))
        data = data[8 + size :]
    return outcome, frames, client


async def test_a_relayed_raw_stream_frames_the_providers_output_and_ends_with_its_status() -> None:
    process = ProcessDouble(code=4)  # the double has no engine connection: the service relays through it
    outcome, frames, client = await session(process, b"hello ", pending=b"early ")
    client.close()
    assert outcome == "exit"
    assert frames[0] == (rawstream.STDERR, b"starting\n")
    assert b"".join(p for k, p in frames if k == rawstream.STDOUT) == b"early hello "
    assert frames[-1] == (rawstream.STATUS, b'{"exit_code": 4}')
    assert process.closed == 1


async def test_a_relayed_raw_stream_waits_for_stdin_that_comes_late() -> None:
    process = ProcessDouble(code=0)  # the double has no engine connection: the service relays through it
    outcome, frames, client = await session(process, b"late", pause=0.05)  # past a batched read's wait
    client.close()
    assert outcome == "exit"
    assert b"".join(p for k, p in frames if k == rawstream.STDOUT) == b"late"


async def test_a_spliced_raw_stream_passes_the_engines_bytes_both_ways_and_shuts_its_stdin() -> None:
    engine, played = socket.socketpair()  # the test plays the engine on `played`: frames out, stdin in
    engine_out = frame(1, b"from the engine\n")

    def play() -> bytes:
        played.sendall(engine_out[5:])
        got = read_all(played.fileno())  # stdin, until the service shuts its side (the client's EOF)
        played.close()  # the process ends: the engine's stream ends
        return got

    playing = asyncio.get_running_loop().run_in_executor(None, play)
    process = ProcessDouble(engine, pending=engine_out[:5], code=0)
    outcome, frames, client = await session(process, b"to stdin", pending=b"first, ")
    client.close()
    assert await playing == b"first, to stdin"
    assert outcome == "exit"
    assert frames == [(1, b"from the engine\n"), (rawstream.STATUS, b'{"exit_code": 0}')]
    assert process.closed == 1
    assert engine.fileno() == -1  # the service closed the engine's connection it took


async def test_a_raw_client_that_goes_away_ends_the_session_and_closes_the_process() -> None:
    engine, played = socket.socketpair()  # the test plays an engine whose process never ends
    client, served = socket.socketpair()
    served.setblocking(True)
    process = ProcessDouble(engine)
    serving = asyncio.ensure_future(raw.serve(served, b"", process))
    await asyncio.sleep(0.1)
    assert not serving.done()
    client.close()  # the client goes: POLLHUP on the service's side
    assert await asyncio.wait_for(serving, 5) == "disconnect"
    assert process.closed == 1
    played.close()


async def test_a_passed_raw_stream_gives_the_client_the_engines_connection_and_then_the_status() -> None:
    engine, played = socket.socketpair()  # the test plays the engine on `played`
    process = ProcessDouble(engine, pending=b"\x01\0\0\0", code=9)
    client, served = socket.socketpair()
    served.setblocking(True)
    serving = asyncio.ensure_future(raw.serve(served, b"", process, pass_stdio=True))

    def talk() -> tuple[bytes, bytes, bytes]:
        data, fds = b"", list[int]()
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 8 or not fds:
            chunk, got, _, _ = socket.recv_fds(client, 65536, 1)
            data += chunk
            fds += got
        head, _, rest = data.partition(b"\r\n\r\n")
        assert b"Rack-Stdio: passed" in head
        size = int.from_bytes(rest[:4], "big")
        passed = socket.socket(fileno=fds[0])
        with passed:  # the engine's connection itself: stdin goes there, and its EOF
            passed.sendall(b"stdin")
            passed.shutdown(socket.SHUT_WR)
            played.sendall(b"\0\0\0\x02ok")  # the rest of the engine's frame (its first bytes were pending)
            played.shutdown(socket.SHUT_WR)
            out = rest[4 : 4 + size] + read_all(passed.fileno())
        stdin = read_all(played.fileno())
        client.shutdown(socket.SHUT_WR)  # read to the end: the status, please
        return out, stdin, read_all(client.fileno())

    out, stdin, status = await asyncio.get_running_loop().run_in_executor(None, talk)
    assert await asyncio.wait_for(serving, 5) == "exit"
    assert (out, stdin) == (frame(1, b"ok"), b"stdin")
    assert status == rawstream.status_frame(exit_code=9)
    assert process.closed == 1
    client.close()
    played.close()


async def test_a_relayed_terminal_takes_the_clients_keys_and_resizes_as_frames() -> None:
    process = ProcessDouble(code=3)  # the double has no engine connection: the service relays through it
    keys = frame(rawstream.STDIN, b"ls\r") + rawstream.resize_frame(100, 40) + frame(rawstream.STDIN, b"x")
    outcome, frames, client = await session(process, keys[3:], pending=keys[:3], tty=True)  # cut in a header
    client.close()
    assert outcome == "exit"
    assert b"".join(p for k, p in frames if k == rawstream.STDOUT) == b"ls\rx"
    assert process.sizes == [(100, 40)]
    assert frames[-1] == (rawstream.STATUS, b'{"exit_code": 3}')


async def test_a_passed_terminal_gets_the_engines_connection_and_the_clients_resizes_apply() -> None:
    engine, played = socket.socketpair()  # the test plays the engine on `played`: a terminal's bytes
    process = ProcessDouble(engine, pending=b"$ ", code=0)
    client, served = socket.socketpair()
    served.setblocking(True)
    early = rawstream.resize_frame(90, 30)  # sent with the request
    serving = asyncio.ensure_future(raw.serve(served, early, process, pass_stdio=True, tty=True))

    def talk() -> tuple[bytes, bytes, bytes]:
        data, fds = b"", list[int]()
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 6 or not fds:
            chunk, got, _, _ = socket.recv_fds(client, 65536, 1)
            data += chunk
            fds += got
        rest = data.partition(b"\r\n\r\n")[2]
        with socket.socket(fileno=fds[0]) as passed:
            passed.sendall(b"exit\r")  # keys, straight to the engine
            client.sendall(rawstream.resize_frame(120, 50))
            deadline = time.monotonic() + 5
            while process.sizes != [(90, 30), (120, 50)] and time.monotonic() < deadline:
                time.sleep(0.01)
            keys = b""
            while len(keys) < 5:
                keys += played.recv(64)
            played.sendall(b"bye\r\n")
            played.close()  # the process ends: the engine's stream ends
            out = rest[4:] + read_all(passed.fileno())
        client.shutdown(socket.SHUT_WR)
        return keys, out, read_all(client.fileno())

    keys, out, status = await asyncio.get_running_loop().run_in_executor(None, talk)
    assert await asyncio.wait_for(serving, 5) == "exit"
    assert (keys, out) == (b"exit\r", b"$ bye\r\n")
    assert process.sizes == [(90, 30), (120, 50)]
    assert status == rawstream.status_frame(exit_code=0)
    client.close()


async def test_a_relayed_terminal_whose_client_goes_away_ends_its_process() -> None:
    process = ProcessDouble()  # relayed; its output never ends on its own
    client, served = socket.socketpair()
    served.setblocking(True)
    serving = asyncio.ensure_future(raw.serve(served, b"", process, tty=True))
    await asyncio.sleep(0.1)
    client.close()  # as a killed CLI's connection closes: its process must not run on
    assert await asyncio.wait_for(serving, 5) == "disconnect"
    assert process.closed == 1


def handed(served: socket.socket) -> dict[str, object]:
    """A test double of the HTTP server's raw extension (shared/rawhttp.py): it hands ``served``'s socket."""
    return {"hand": lambda: (os.dup(served.fileno()), b""), "release": served.close}


async def test_an_output_only_raw_stream_sends_its_chunks_then_its_status() -> None:
    client, served = socket.socketpair()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"Step 1/2\n"
        yield b"Step 2/2\n"

    async def status() -> bytes:
        return rawstream.status_frame(exit_code=0)

    outcome = await rawserve.serve_output(handed(served), chunks(), status, Logger("test"))
    data = read_all(client.fileno())
    client.close()
    assert outcome == "exit"
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert rest == frame(1, b"Step 1/2\n") + frame(1, b"Step 2/2\n") + rawstream.status_frame(exit_code=0)


async def test_an_output_only_raw_stream_ends_when_its_client_goes() -> None:
    client, served = socket.socketpair()
    endless = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"waiting\n"
        await endless.wait()  # a build that goes on
        yield b"never\n"

    async def status() -> bytes:
        raise AssertionError("no status for a client that went")

    serving = asyncio.ensure_future(rawserve.serve_output(handed(served), chunks(), status, Logger("test")))
    await asyncio.sleep(0.1)
    client.close()
    assert await asyncio.wait_for(serving, 5) == "disconnect"


async def test_an_output_only_raw_streams_direct_output_keeps_its_order_with_its_chunks_when_the_client_lags() -> None:
    """What hands batches to the stream's ``Direct`` (the log store's collector) is played by the test."""
    client, served = socket.socketpair()
    direct = rawserve.Direct()
    later: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def chunks() -> AsyncIterator[bytes]:
        while (chunk := await later.get()) is not None:
            yield chunk

    async def status() -> bytes:
        return rawstream.status_frame(exit_code=0)

    serving = asyncio.ensure_future(rawserve.serve_output(handed(served), chunks(), status, Logger("test"), direct))
    assert not direct.send([b"too soon\n"])  # the stream is not accepted yet
    head = b""
    while b"\r\n\r\n" not in head:  # the answer came: the stream is open (in the same step)
        head += await asyncio.to_thread(client.recv, 4096)
    assert head.startswith(b"HTTP/1.1 101")
    assert direct.send([b"a\n", b"b\n"])
    await direct.hold()  # as the stream's own sender does around each write of its own
    assert not direct.send([b"held\n"])  # the socket has room, but the sender's write comes first
    direct.release()
    big = os.urandom(8 << 20)  # more than the socket holds while the client reads nothing
    assert direct.send([big])
    assert direct.writing  # its rest goes on in a thread
    assert not direct.send([b"late\n"])  # so this is left to the stream
    await later.put(b"late\n")
    await later.put(None)
    data = await asyncio.to_thread(read_all, client.fileno())
    client.close()
    assert await asyncio.wait_for(serving, 5) == "exit"
    rest = head.partition(b"\r\n\r\n")[2] + data
    assert rest == frame(1, b"a\nb\n") + frame(1, big) + frame(1, b"late\n") + rawstream.status_frame(exit_code=0)
