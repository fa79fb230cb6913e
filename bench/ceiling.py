"""The ceiling of exec throughput through relaying processes: ``python -m bench.ceiling [--repeat N]``.

Not the product: a probe for issue #4's "exec throughput at least 1.0x docker exec". It measures the fastest
path any design can have that puts one Python process between the Docker Engine and a client in another
process, and then two (as the rack does: the processes service, then the gateway): blocking sockets, no event
loop, no websocket library, the engine's 8-byte frames turned into 5-byte frame headers with the payload never
copied in user space (``sendmsg`` of views into the receive buffer), or moved by ``splice(2)`` without a copy
at all; the second relay passes on whatever comes, as it comes; the client reads into one buffer and writes
to /dev/null. Each is timed side by side with ``docker exec`` of the same ``dd`` (512 MiB) in the same container.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import subprocess
import sys
import time

from bench import timing
from bench.stats import Stats

SIZE = 512 * 1024 * 1024
DD = ["dd", "if=/dev/zero", "bs=1M", "count=512"]
DOCKER_SOCKET = "/var/run/docker.sock"
F_SETPIPE_SZ = 1031


def _engine(method: str, path: str, body: dict[str, object], upgrade: bool = False) -> socket.socket:
    """A request to the engine on a new connection; the connection, its response head read."""
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(DOCKER_SOCKET)
    data = json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(data)}\r\n"
    if upgrade:
        head += "Connection: Upgrade\r\nUpgrade: tcp\r\n"
    conn.sendall(head.encode() + b"\r\n" + data)
    received = b""
    while b"\r\n\r\n" not in received:
        received += conn.recv(1)  # byte by byte: nothing of the stream after the head is taken
    return conn


def _exec_id(container: str) -> str:
    conn = _engine("POST", f"/containers/{container}/exec", {"AttachStdout": True, "AttachStderr": True, "Cmd": DD})
    body = b""
    while not body.rstrip().endswith(b"}"):
        body += conn.recv(4096)
    conn.close()
    return str(json.loads(body[body.index(b"{") :])["Id"])


def receive(port: int) -> None:
    """The client: everything from the relay to /dev/null."""
    conn = socket.create_connection(("127.0.0.1", port))
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    sink = os.open(os.devnull, os.O_WRONLY)
    while n := conn.recv_into(buf):
        os.write(sink, view[:n])


def forward() -> None:
    """A second relay: what comes from the first passed on to the client as it comes, read into one buffer.
    Prints the port the first relay connects to, then the one the client does."""
    upstream, downstream = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    print(upstream.getsockname()[1], downstream.getsockname()[1], flush=True)
    target, _ = downstream.accept()
    source, _ = upstream.accept()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while n := source.recv_into(buf):
        target.sendall(view[:n])


def relay(container: str, how: str, hops: int = 1) -> float:
    """One exec of ``dd`` relayed to a client process through ``hops`` relays (this one, then a plain one);
    its bytes per second from exec to the client's end."""
    me = [sys.executable, "-m", "bench.ceiling"]
    second = None
    if hops == 2:
        second = subprocess.Popen([*me, "--forward"], stdout=subprocess.PIPE)
        assert second.stdout is not None
        up, down = (int(port) for port in second.stdout.readline().split())
        client = subprocess.Popen([*me, "--receive", str(down)])
        out = socket.create_connection(("127.0.0.1", up))
    else:
        listener = socket.create_server(("127.0.0.1", 0))
        client = subprocess.Popen([*me, "--receive", str(listener.getsockname()[1])])
        out, _ = listener.accept()
    started = time.perf_counter()
    engine = _engine("POST", f"/exec/{_exec_id(container)}/start", {"Detach": False, "Tty": False}, upgrade=True)
    (_splice if how == "splice" else _sendmsg)(engine, out)
    out.close()
    if second is not None:
        second.wait()
    client.wait()
    return SIZE / (time.perf_counter() - started)


def _header(size: int) -> bytes:
    return b"\x82\x7e" + (size + 1).to_bytes(2, "big") + b"\x01"  # binary frame, 16-bit length, channel 1


def _sendmsg(engine: socket.socket, out: socket.socket) -> None:
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    end = 0
    while n := engine.recv_into(view[end:]):
        end += n
        pos = 0
        parts: list[bytes | memoryview] = []
        while end - pos >= 8:
            size = int.from_bytes(buf[pos + 4 : pos + 8], "big")
            if pos + 8 + size > end:
                break
            parts += [_header(size), view[pos + 8 : pos + 8 + size]]
            pos += 8 + size
        while parts:
            sent = out.sendmsg(parts)
            while parts and sent >= len(parts[0]):
                sent -= len(parts.pop(0))
            if parts and sent:
                parts[0] = memoryview(parts[0])[sent:]
        buf[: end - pos] = buf[pos:end]
        end -= pos


def _splice(engine: socket.socket, out: socket.socket) -> None:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 1 << 20)
    header = bytearray(8)
    while engine.recv_into(header, 8, socket.MSG_WAITALL) == 8:
        size = int.from_bytes(header[4:8], "big")
        out.send(_header(size), socket.MSG_MORE)
        for source, target in ((engine.fileno(), write_end), (read_end, out.fileno())):
            left = size
            while left:
                left -= os.splice(source, target, left)
    os.close(read_end)
    os.close(write_end)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--receive", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--forward", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receive:
        receive(args.receive)
        return 0
    if args.forward:
        forward()
        return 0
    from tests.images import ensure_busybox_image

    container = timing.run(["docker", "run", "-d", "--rm", "--init", ensure_busybox_image(), "sleep", "600"])
    container_id = container.stdout.decode().strip()
    try:
        docker = ["docker", "exec", container_id, *DD]
        for hops, how in ((2, "sendmsg"), (1, "sendmsg"), (1, "splice")):
            ours, theirs = timing.interleave(
                lambda hops=hops, how=how: relay(container_id, how, hops),  # type: ignore[misc]
                lambda: SIZE / timing.time_command(docker),
                repeat=args.repeat,
                warmup=1,
            )
            _report(f"{'one relaying process' if hops == 1 else 'two relaying processes'} ({how})", ours, theirs)
    finally:
        subprocess.run(["docker", "rm", "-f", container_id], capture_output=True, check=False)
    return 0


def _report(what: str, ours: Stats, theirs: Stats) -> None:
    print(
        f"{what}: {ours.median / 1e6:.0f} MB/s, docker exec: {theirs.median / 1e6:.0f} MB/s,"
        f" ratio {ours.median / theirs.median:.2f}x (medians of {len(ours.samples)})"
    )


if __name__ == "__main__":
    sys.exit(main())
