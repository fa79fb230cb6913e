"""The ceiling of `convox logs` lines per second for a follower written in Python: ``python -m
bench.logs_ceiling [--rounds N] [--hops 2]``; with ``--latency``, the floor of its write-to-print latency.

Not the product: a probe for issue #14's "`convox logs` lines per second at least 1.0x `docker logs -f`". The
rack's collector is itself a follower of the Docker Engine, so no design can beat the fastest Python follower
there is: one process, blocking reads of the engine's raw HTTP/1.0 stream, Docker's frames cut and their
payloads written to stdout in one write per read, no store, no ordering, no second process. It runs side by
side with `docker logs -f` on the same container and the same bursts as ``bench/cases/logs.py`` (the same
reader reads both), and also reports each follower's CPU per line (user + system, psutil).

``--latency``: a line every 20 ms (as ``bench/cases/logs.py``), printed by the ideal follower itself (one Python
hop, as `docker logs -f` has one Go hop after the engine) and by the ideal follower relaying to a second Python
process that prints (two hops: the rack's shape, its logs service then the CLI), all three side by side; each
one's median latency over docker's.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

from bench.cases.logs import BURST, BURST_SCRIPT, TICK_SCRIPT, Reader, latencies, wait_for, wait_for_round
from bench.cpu import tree_cpu
from bench.stats import Stats

DOCKER_SOCKET = "/var/run/docker.sock"


def follow(container: str, since: str) -> None:
    """The ideal Python follower: the engine's log stream to stdout, payloads only."""
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(DOCKER_SOCKET)
    query = f"follow=1&stdout=1&stderr=1&timestamps=1&since={since}"
    conn.sendall(f"GET /containers/{container}/logs?{query} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        more = conn.recv(1 << 16)
        if not more:
            return
        buffer += more
    buffer = buffer.split(b"\r\n\r\n", 1)[1]
    out = sys.stdout.fileno()
    while data := conn.recv(1 << 18):
        buffer += data
        at, end, payloads = 0, len(buffer), []
        while at + 8 <= end:
            size = int.from_bytes(buffer[at + 4 : at + 8], "big")
            if at + 8 + size > end:
                break
            payloads.append(buffer[at + 8 : at + 8 + size])
            at += 8 + size
        buffer = buffer[at:]
        if payloads:
            os.write(out, b"".join(payloads))


def relay() -> None:
    """The ideal second hop: whatever comes on stdin to stdout, a write per read."""
    while data := os.read(0, 1 << 18):
        os.write(1, data)


def ideal(container: str, since: str, hops: int, env: dict[str, str]) -> Reader:
    """The ideal follower, relayed through ``hops - 1`` more Python processes."""
    me = f"{sys.executable} -m bench.logs_ceiling"
    return Reader(["sh", "-c", f"exec {me} --follow {container} {since}" + f" | {me} --relay" * (hops - 1)], env)


def latency(container: str, since: str, count: int) -> None:
    env = dict(os.environ)
    followers = {
        "one Python hop": ideal(container, since, 1, env),
        "two Python hops": ideal(container, since, 2, env),
        "docker logs -f": Reader(["docker", "logs", "-f", "-t", "--since", since, container], env),
    }
    try:
        warm = 20
        for name, reader in followers.items():

            def enough(reader: Reader = reader) -> bool:
                return len(latencies(reader, b"tick-")) >= warm + count

            wait_for(enough, 30 + count * 0.1, name)
        p50 = {name: Stats(tuple(latencies(r, b"tick-")[warm : warm + count])).median for name, r in followers.items()}
        docker = p50["docker logs -f"]
        for name, value in p50.items():
            print(f"{name}: p50 {value * 1e3:.2f} ms ({(value - docker) * 1e3:+.2f} ms over docker)")
    finally:
        for reader in followers.values():
            reader.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.logs_ceiling")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--hops", type=int, default=1, choices=(1, 2), help="Python processes in a row (2: | relay)")
    parser.add_argument("--latency", action="store_true", help="the latency's floor instead (a line every 20 ms)")
    parser.add_argument("--follow", nargs=2, metavar=("CONTAINER", "SINCE"), help=argparse.SUPPRESS)
    parser.add_argument("--relay", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.follow:
        follow(*args.follow)
        return 0
    if args.relay:
        relay()
        return 0
    from tests.images import ensure_busybox_image

    script = TICK_SCRIPT if args.latency else BURST_SCRIPT
    argv = ["docker", "run", "-d", "--init", "--log-driver", "local", ensure_busybox_image(), "sh", "-c", script]
    container = subprocess.run(argv, capture_output=True, check=True).stdout.decode().strip()
    since = str(int(time.time()) - 1)
    if args.latency:
        try:
            latency(container, since, 300)
        finally:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)
        return 0
    env = dict(os.environ)
    python = ideal(container, since, args.hops, env)
    docker = Reader(["docker", "logs", "-f", "-t", "--since", since, container], env)
    try:
        time.sleep(2)  # both followers attached
        pids = {"python": python.proc.pid, "docker": docker.proc.pid}
        before = {name: sum(tree_cpu(pid).values()) for name, pid in pids.items()}
        ratios: list[float] = []
        for number in range(1, args.rounds + 1):
            tag = f"r{number}".encode()
            subprocess.run(["docker", "exec", container, "touch", "/go"], capture_output=True, check=True)
            for reader in (python, docker):
                wait_for_round(reader, tag, f"round {number}")
            ours, theirs = python.rate(tag), docker.rate(tag)
            ratios.append(ours / theirs)
            print(f"round {number}: python {ours:,.0f} lines/s, docker logs -f {theirs:,.0f}, {ours / theirs:.2f}x")
        lines = args.rounds * BURST
        cpu = {name: (sum(tree_cpu(pid).values()) - before[name]) / lines * 1e6 for name, pid in pids.items()}
        print(
            f"median {Stats(tuple(ratios)).median:.2f}x; CPU per line: python {cpu['python']:.1f} us,"
            f" docker logs -f {cpu['docker']:.1f} us"
        )
    finally:
        python.close()
        docker.close()
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
