"""Docker's log messages as complete lines: what the Engine's logs API sends, joined and cut again."""

from __future__ import annotations

import struct

from shared.logstore.timestamps import TS_WIDTH, now_ts

PARTIAL = 16 * 1024
"""Docker splits a longer line into messages of this size (json-file and local drivers alike)."""
HEADER = struct.Struct(">BxxxI")
"""A message's frame without a TTY: its stream (1 stdout, 2 stderr), three zero bytes, its size."""
SPACE = 0x20
NEWLINE = 0x0A


class Splitter:
    """One container's log messages -> its complete lines ``(timestamp, bytes)``.

    What is fed is the logs API's body as it comes, cut anywhere. Without a TTY it is Docker's framed
    messages (:data:`HEADER`), each ``TIMESTAMP text``; a line Docker split comes as messages of exactly 16 KiB
    sharing the first one's timestamp, so a message of 16 KiB without a newline is held and joined with what
    follows (a message with another timestamp means the held one was whole). Lines are cut at ``max_line``.
    With a TTY the Engine frames nothing: lines are split at newlines and the repeated timestamps of a split
    line are taken out again.
    """

    def __init__(self, tty: bool, max_line: int) -> None:
        self.tty = tty
        self.max_line = max_line
        self.held: dict[int, tuple[str, bytearray]] = {}
        self.raw = bytearray()
        self.rest = b""
        """The start of a framed message whose end has not come yet."""

    @property
    def torn(self) -> bool:
        """Whether what was fed ends inside a framed message (a stream that ended there was cut off)."""
        return bool(self.rest)

    def feed(self, chunk: bytes, out: list[tuple[str, bytes]]) -> None:
        """The next bytes of the logs API's body; the lines they complete are appended to ``out``."""
        if self.tty:
            self._feed_tty(chunk, out)
            return
        data = self.rest + chunk if self.rest else chunk
        pos = 0
        end = len(data)
        unpack = HEADER.unpack_from
        append = out.append
        stamps = data.decode("latin-1")  # once per read: a line's stamp is then a slice, not a decode
        while end - pos >= 8:
            stream, size = unpack(data, pos)
            start = pos + 8
            pos = start + size
            if pos > end:
                pos = start - 8
                break
            if data[pos - 1] == NEWLINE and size > TS_WIDTH + 1 and data[start + TS_WIDTH] == SPACE and not self.held:
                # the common message: a whole line with Docker's fixed-width stamp
                append((stamps[start : start + TS_WIDTH], data[start + TS_WIDTH + 1 : pos - 1]))
            else:
                self.message(stream, data[start:pos], out)
        self.rest = data[pos:]

    def message(self, stream: int, payload: bytes, out: list[tuple[str, bytes]]) -> None:
        """One framed message (without a TTY): ``TIMESTAMP text``, a line, its end or a piece of it."""
        space = payload.find(b" ")
        if space < 0:
            return
        ts = payload[:space].decode("ascii", "replace")
        content = payload[space + 1 :]
        held = self.held.get(stream)
        if held is not None and held[0] != ts:
            out.append((held[0], bytes(held[1])))
            del self.held[stream]
            held = None
        if content.endswith(b"\n"):
            if held is None:
                out.append((ts, content[:-1]))
            else:
                held[1].extend(content[:-1])
                out.append((ts, bytes(held[1])))
                del self.held[stream]
        elif len(content) >= PARTIAL:
            if held is None:
                held = self.held[stream] = (ts, bytearray(content))
            else:
                held[1].extend(content)
            buffer = held[1]
            while len(buffer) > self.max_line:
                out.append((ts, bytes(buffer[: self.max_line])))
                del buffer[: self.max_line]
        elif held is None:
            out.append((ts, content))
        else:
            held[1].extend(content)
            out.append((ts, bytes(held[1])))
            del self.held[stream]

    def _feed_tty(self, chunk: bytes, out: list[tuple[str, bytes]]) -> None:
        self.raw.extend(chunk)
        start = 0
        while (newline := self.raw.find(b"\n", start)) >= 0:
            self._tty_line(bytes(self.raw[start:newline]), out)
            start = newline + 1
        del self.raw[:start]
        if len(self.raw) > self.max_line + TS_WIDTH + 1:
            self._tty_line(bytes(self.raw[: self.max_line + TS_WIDTH + 1]), out)
            del self.raw[: self.max_line + TS_WIDTH + 1]

    @staticmethod
    def _tty_line(data: bytes, out: list[tuple[str, bytes]]) -> None:
        stamp = data[:TS_WIDTH]
        if len(data) > TS_WIDTH and data[TS_WIDTH] == 0x20 and stamp[10:11] == b"T":
            ts = stamp.decode("ascii")
            content = data[TS_WIDTH + 1 :]
            marker = stamp + b" "
            pos = PARTIAL
            while len(content) > pos and content.startswith(marker, pos):
                content = content[:pos] + content[pos + len(marker) :]
                pos += PARTIAL
        else:
            ts, content = now_ts(), data
        if content.endswith(b"\r"):
            content = content[:-1]
        out.append((ts, content))

    def finish(self, out: list[tuple[str, bytes]]) -> None:
        """The log ended: what is held is whole."""
        for ts, data in self.held.values():
            out.append((ts, bytes(data)))
        self.held.clear()
        if self.raw:
            self._tty_line(bytes(self.raw), out)
            self.raw.clear()
