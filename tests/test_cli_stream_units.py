"""The CLI's stream plumbing without a rack: stdin read without a standing watch, the websocket connection
that reads into one buffer, and the allocator told to keep its freed memory."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from cli import terminal
from cli.streamconn import READ_SIZE, BufferedClientConnection


async def test_stdin_is_watched_only_while_a_read_waits() -> None:
    loop = asyncio.get_running_loop()
    read_end, write_end = os.pipe()
    try:
        reader = terminal.Input(read_end)
        view = memoryview(bytearray(16))
        waiting = asyncio.ensure_future(reader.read_into(view))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        os.write(write_end, b"abc")
        assert await asyncio.wait_for(waiting, 5) == 3 and bytes(view[:3]) == b"abc"
        assert not loop.remove_reader(read_end)  # no watch left behind between reads
        os.write(write_end, b"de")  # already there: read at once
        assert await reader.read_into(view) == 2 and bytes(view[:2]) == b"de"
        os.close(write_end)
        write_end = -1
        assert await reader.read_into(view) == 0
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


async def test_a_read_cancelled_while_waiting_leaves_no_watch() -> None:
    loop = asyncio.get_running_loop()
    read_end, write_end = os.pipe()
    try:
        reader = terminal.Input(read_end)
        waiting = asyncio.ensure_future(reader.read_into(memoryview(bytearray(16))))
        await asyncio.sleep(0.05)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert not loop.remove_reader(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_the_stream_connection_delivers_messages_larger_than_its_buffer_intact() -> None:
    sizes = (300 << 10 | 7, 750 << 10, 3 << 20 | 1, 10)  # across reads of the buffer, and one small
    messages = [(bytes(range(256)) * (size // 256 + 1))[:size] for size in sizes]

    async def handler(connection: ServerConnection) -> None:
        for message in messages:
            await connection.send(message)
        echoed = await connection.recv()
        await connection.send(echoed)

    async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}"
        async with connect(
            url, create_connection=BufferedClientConnection, max_size=None, compression=None
        ) as connection:
            assert isinstance(connection, asyncio.BufferedProtocol)
            assert [await connection.recv() for _ in messages] == messages
            await connection.send(messages[1])
            assert await connection.recv() == messages[1]
    assert max(len(m) for m in messages) > READ_SIZE


def test_freed_buffers_are_not_faulted_in_again() -> None:
    script = """if True:
        import resource, sys
        from shared.memory import keep_freed_memory
        if sys.argv[1] == "keep":
            keep_freed_memory()
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(200):  # what a stream does with each 1 MiB message: new buffers, freed soon after
            a = bytearray(1 << 20); b = bytes(a); del a
            c = b + b"x"; del b, c
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
    """
    faults = {
        how: int(subprocess.run([sys.executable, "-c", script, how], capture_output=True, text=True, check=True).stdout)
        for how in ("keep", "default")
    }
    assert faults["keep"] * 10 < faults["default"]
