"""`convox services proxy NAME [--port P]`: a local port that reaches a backing service through the rack.

Each connection to ``127.0.0.1:P`` opens its own websocket to ``/services/NAME/proxy``; bytes go both ways as
they come (the client's on the stdin channel, the server's on stdout). Ctrl-C stops listening (exit 130).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from urllib.parse import quote

from cli.config import Rack
from cli.errors import CliError

DEFAULT_PORTS = {"postgres": 5432, "mysql": 3306, "mariadb": 3306, "redis": 6379, "memcached": 11211}
CHUNK = 64 * 1024


async def _relay(rack: Rack, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    from websockets.exceptions import ConnectionClosed

    from cli.stream import CLOSE_CHANNEL, STDIN_CHANNEL, STDOUT_CHANNEL, connect, encode

    try:
        async with connect(rack, f"/services/{quote(name)}/proxy") as connection:

            async def upstream() -> None:
                while chunk := await reader.read(CHUNK):
                    await connection.send(encode(STDIN_CHANNEL, chunk))
                await connection.send(encode(CLOSE_CHANNEL, bytes((STDIN_CHANNEL,))))

            async def downstream() -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for message in connection:
                        if isinstance(message, bytes) and message and message[0] == STDOUT_CHANNEL:
                            writer.write(message[1:])
                            await writer.drain()

            up = asyncio.create_task(upstream())
            try:
                await downstream()
            finally:
                up.cancel()
                with contextlib.suppress(BaseException):
                    await up
    except CliError as exc:
        print(f"ERROR: {exc.message}", file=sys.stderr, flush=True)
    except OSError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def serve(rack: Rack, name: str, port: int, on_ready: asyncio.Event | None = None) -> None:
    tasks: set[asyncio.Task[None]] = set()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await _relay(rack, name, reader, writer)

    try:
        server = await asyncio.start_server(accepted, "127.0.0.1", port)
    except OSError as exc:
        raise CliError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror} (choose another with --port)") from None
    bound = server.sockets[0].getsockname()[1]
    print(f"Proxying 127.0.0.1:{bound} to {name} (Ctrl-C stops)", file=sys.stderr, flush=True)
    if on_ready is not None:
        on_ready.set()
    async with server:
        try:
            await server.serve_forever()
        finally:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
