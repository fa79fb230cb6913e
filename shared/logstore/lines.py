"""A log line as the store keeps it, and where each of its sources is (its cursor)."""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter

from shared.logline import line_source

source_of = attrgetter("src")
cursor_of = attrgetter("cur")
text_of_line = attrgetter("text")


@dataclass(slots=True)
class Line:
    ts: str
    service: str
    release: str
    pid: str
    text: str
    src: str = ""
    cur: str = ""
    seq: int = 0

    def encode(self) -> bytes:
        """The line as the history keeps it (:func:`decode_line` reads it back)."""
        return encode_all([self])

    def render(self) -> bytes:
        """``2015-01-01T00:00:00.000000Z web:RNJYVQUMKKU/68831d3dce63 text\n`` (see ``LogsAPI``)."""
        return render_all([self])[0]


def render_all(lines: list[Line]) -> list[bytes]:
    """Each line as :meth:`Line.render` shows it (this runs once per line per follower)."""
    return [text.encode("utf-8", "backslashreplace") for text in _rendered(lines)]


def render_block(lines: list[Line]) -> bytes:
    """The lines as :func:`render_all` shows them, one after the other: one text, encoded once (a follower
    that writes a batch at once)."""
    return "".join(_rendered(lines)).encode("utf-8", "backslashreplace")


def _rendered(lines: list[Line]) -> list[str]:
    if lines and lines[0].pid and _one_source(lines):  # a process's read: its source named once, not per line
        first = lines[0]
        named = f"Z {first.service}:{first.release}/{first.pid} "
        return [f"{x.ts[:26]}{named}{x.text}\n" for x in lines]
    return [
        f"{x.ts[:26]}Z {x.service}:{x.release}/{x.pid} {x.text}\n"
        if x.pid
        else f"{x.ts[:26]}Z {line_source(x)} {x.text}\n"
        for x in lines
    ]


def encode_all(lines: list[Line]) -> bytes:
    """Lines as the history keeps them, one after the other: one text, encoded once."""
    if lines and _one_source(lines):  # a process's read: the fields of its source once, not per line
        first = lines[0]
        fields = f"\t{first.service}\t{first.release}\t{first.pid}\t{first.src}\t"
        text = "".join([f"{x.seq}\t{x.ts}{fields}{x.cur}\t{x.text}\n" for x in lines])
    else:
        text = "".join(
            [f"{x.seq}\t{x.ts}\t{x.service}\t{x.release}\t{x.pid}\t{x.src}\t{x.cur}\t{x.text}\n" for x in lines]
        )
    return text.encode("utf-8", "backslashreplace")


def _one_source(lines: list[Line]) -> bool:
    """Whether the lines are one container's (its lines share their service, release and process)."""
    src = lines[0].src
    return src.startswith("c:") and lines[-1].src == src and len(set(map(source_of, lines))) == 1


def decode_line(raw: bytes) -> Line | None:
    try:
        seq, ts, service, release, pid, src, cur, text = raw.decode("utf-8", "backslashreplace").split("\t", 7)
        return Line(ts, service, release, pid, text, src, cur, int(seq))
    except ValueError:
        return None


def text_of(data: bytes) -> str:
    """A line's bytes as text: UTF-8, anything else escaped (``\\xff``), never dropped."""
    return data.decode("utf-8", "backslashreplace")


@dataclass(slots=True)
class Offset:
    """Where a source is: its cursor and, for containers, how many lines had that timestamp."""

    cursor: str
    count: int = 1


def after(src: str, a: str, b: str) -> bool:
    """Whether cursor ``a`` of ``src`` is past ``b`` (timestamps for containers, numbers otherwise)."""
    if src.startswith("c:"):
        return a > b
    try:
        return int(a) > int(b)
    except ValueError:
        return a > b


def advance(offsets: dict[str, Offset], src: str, cur: str) -> None:
    known = offsets.get(src)
    if known is None or after(src, cur, known.cursor):
        offsets[src] = Offset(cur, 1)
    elif cur == known.cursor:
        known.count += 1


def text_bytes(lines: list[Line]) -> int:
    """How much text the lines hold (characters; what the history's and memory's bounds count)."""
    return sum(map(len, map(text_of_line, lines)))


def sources(lines: list[Line]) -> set[str]:
    """The sources the lines come from (a line without one, such as the rack's, has none)."""
    found = set(map(source_of, lines))
    found.discard("")
    return found


def advance_all(offsets: dict[str, Offset], lines: list[Line]) -> None:
    """:func:`advance` for every line, a container's run of lines at once."""
    if lines and lines[0].src.startswith("c:") and len(found := set(map(source_of, lines))) == 1:
        # the common case, one container's lines: their cursors (timestamps) at C speed, no dict per line
        _advance_container(offsets, found.pop(), list(map(cursor_of, lines)))
        return
    runs: dict[str, list[str]] = {}
    for line in lines:
        if line.src:
            runs.setdefault(line.src, []).append(line.cur)
    for src, curs in runs.items():
        if not src.startswith("c:"):
            for cur in curs:
                advance(offsets, src, cur)
            continue
        _advance_container(offsets, src, curs)


def _advance_container(offsets: dict[str, Offset], src: str, curs: list[str]) -> None:
    """A container's cursors (timestamps) at once: the newest, and how many lines had it."""
    top = max(curs)
    known = offsets.get(src)
    if known is None or top > known.cursor:
        offsets[src] = Offset(top, curs.count(top))
    elif top == known.cursor:
        known.count += curs.count(top)
