"""Test helpers that read a process stream to its end: every (channel, data) message, and one channel's bytes."""

from __future__ import annotations

from shared.stream import ProcessStream


async def drain(stream: ProcessStream) -> list[tuple[int, bytes]]:
    """Every message of the stream until it ends; each view is copied, as it lasts one turn."""
    return [(int(channel), bytes(data)) async for channel, data in stream.output()]


def joined(messages: list[tuple[int, bytes]], channel: int) -> bytes:
    """The bytes of one channel, in order."""
    return b"".join(data for ch, data in messages if ch == channel)
