"""`.dockerignore` read and matched as Docker reads and matches it (moby's patternmatcher and ignorefile).

- A line starting with ``#`` is a comment; blank lines are skipped; surrounding whitespace is trimmed.
- Patterns are cleaned like Go's ``filepath.Clean`` and made relative (a leading ``/`` is dropped).
- ``*`` matches any run of characters but ``/``, ``?`` one character but ``/``, ``[...]`` a class,
  ``\\`` escapes the next character, and ``**`` any number of directories (zero included).
- A pattern that matches a directory matches everything under it.
- ``!pattern`` is an exception: it re-includes what an earlier pattern excluded. The last match wins.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

IGNORE_FILE = ".dockerignore"
_WILDCARDS = frozenset("*?[\\")


def parse(text: str) -> list[str]:
    """The patterns of a ``.dockerignore`` file, exceptions keeping their ``!``."""
    patterns: list[str] = []
    for number, raw in enumerate(text.splitlines()):
        line = raw.removeprefix("\ufeff") if number == 0 else raw
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = posixpath.normpath(pattern)
            if pattern.startswith("//"):
                pattern = pattern.lstrip("/") or "/"
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


Token = tuple[str, str]
"""One step of a compiled pattern: ``("lit", c)``, ``("one", "")`` (``?``), ``("class", regex)``, ``("star",
"")`` (``*``), ``("any", "")`` (a trailing ``**``) or ``("dirs", "")`` (``**/``: any directories, none too)."""


def _tokens(pattern: str) -> list[Token]:
    """The steps of one pattern, read the way moby's patternmatcher reads it."""
    out: list[Token] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                out.append(("any", "") if i >= n else ("dirs", ""))
            else:
                out.append(("star", ""))
        elif ch == "?":
            out.append(("one", ""))
        elif ch == "\\":
            out.append(("lit", pattern[i] if i < n else "\\"))
            i += 1
        elif ch == "[":
            body = ["["]
            if i < n and pattern[i] == "^":
                body.append("^")
                i += 1
            while True:
                if i >= n:
                    raise ValueError(f"syntax error in pattern: {pattern!r}")
                ch = pattern[i]
                i += 1
                if ch == "\\" and i < n:
                    body.append("\\" + pattern[i])
                    i += 1
                elif ch == "]":
                    body.append("]")
                    break
                elif ch == "[":
                    body.append("\\[")
                else:
                    body.append(ch)
            text = "".join(body)
            try:
                re.compile(text)
            except re.error:
                raise ValueError(f"syntax error in pattern: {pattern!r}") from None
            out.append(("class", text))
        else:
            out.append(("lit", ch))
    return out


@dataclass(frozen=True)
class Pattern:
    text: str
    exclusion: bool
    tokens: tuple[Token, ...]
    classes: dict[int, re.Pattern[str]]

    @classmethod
    def compile(cls, raw: str) -> Pattern:
        exclusion = raw.startswith("!")
        text = raw[1:] if exclusion else raw
        if exclusion and not text:
            raise ValueError('illegal exclusion pattern: "!"')
        text = posixpath.normpath(text) if text else "."
        tokens = tuple(_tokens(text))
        classes = {i: re.compile(arg, re.DOTALL) for i, (kind, arg) in enumerate(tokens) if kind == "class"}
        return cls(text, exclusion, tokens, classes)

    def match(self, path: str) -> bool:
        """Whether the whole of ``path`` matches: a set of positions in the pattern advanced one character at a
        time (no backtracking, so time is at most the path's length times the pattern's)."""
        tokens = self.tokens
        n = len(tokens)
        states = self._closure({0})
        for ch in path:
            following: set[int] = set()
            for state in states:
                inside = state < 0  # -(i + 1): within a ``**/`` at step i, past at least one character
                i = -state - 1 if inside else state
                if i >= n:
                    continue
                kind, arg = tokens[i]
                if kind == "dirs" or inside:
                    following.add(-(i + 1))
                    if ch == "/":
                        following.add(i + 1)
                elif kind == "lit":
                    if ch == arg:
                        following.add(i + 1)
                elif kind == "one":
                    if ch != "/":
                        following.add(i + 1)
                elif kind == "class":
                    if self.classes[i].fullmatch(ch):
                        following.add(i + 1)
                elif kind == "star":
                    if ch != "/":
                        following.add(i)
                else:  # any
                    following.add(i)
            if not following:
                return False
            states = self._closure(following)
        return n in states

    def _closure(self, states: set[int]) -> set[int]:
        """``states`` with every step that can match nothing (``*``, ``**``) skipped as well."""
        todo = list(states)
        while todo:
            i = todo.pop()
            if 0 <= i < len(self.tokens) and self.tokens[i][0] in ("star", "any", "dirs") and i + 1 not in states:
                states.add(i + 1)
                todo.append(i + 1)
        return states

    @property
    def literal_prefix(self) -> str:
        """The pattern up to its first wildcard."""
        for index, ch in enumerate(self.text):
            if ch in _WILDCARDS:
                return self.text[:index]
        return self.text


class Matcher:
    """Decides whether a path (relative, ``/``-separated) of a build context is excluded."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = [Pattern.compile(p) for p in patterns]
        self.has_exceptions = any(p.exclusion for p in self.patterns)

    @classmethod
    def for_directory(cls, root: Path) -> Matcher:
        """The matcher of ``root/.dockerignore`` (matching nothing when there is none)."""
        path = root / IGNORE_FILE
        try:
            text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        except OSError:
            text = ""
        return cls(parse(text))

    def excluded(self, path: str) -> bool:
        """Whether ``path`` is left out: the last pattern matching it or one of its parents wins."""
        path = posixpath.normpath(path)
        parent = posixpath.dirname(path)
        parents = parent.split("/") if parent else []
        matched = False
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue
            hit = pattern.match(path)
            if not hit:
                for depth in range(1, len(parents) + 1):
                    if pattern.match("/".join(parents[:depth])):
                        hit = True
                        break
            if hit:
                matched = not pattern.exclusion
        return matched

    def may_include_under(self, directory: str) -> bool:
        """Whether an exception could re-include something under the excluded ``directory``."""
        if not self.has_exceptions:
            return False
        prefix = directory.rstrip("/") + "/"
        for pattern in self.patterns:
            if not pattern.exclusion:
                continue
            literal = pattern.literal_prefix
            if literal != pattern.text:  # a wildcard: it might reach anywhere its literal start allows
                if literal.startswith(prefix) or prefix.startswith(literal):
                    return True
            elif (pattern.text + "/").startswith(prefix):
                return True
        return False


def leaves_out(root: Path, matcher: Matcher | None = None) -> bool:
    """Whether ``matcher`` (``root/.dockerignore`` by default) excludes any path under ``root``, looking until
    the first one. When nothing is excluded, :func:`walk` lists every path whatever ``keep`` says."""
    matcher = matcher if matcher is not None else Matcher.for_directory(root)
    pending = [""]
    while pending:
        relative = pending.pop()
        try:
            entries = list(os.scandir(root / relative if relative else root))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            path = f"{relative}/{entry.name}" if relative else entry.name
            if matcher.excluded(path):
                return True
            if entry.is_dir(follow_symlinks=False):
                pending.append(path)
    return False


def walk(root: Path, matcher: Matcher | None = None, keep: Iterable[str] = ()) -> Iterator[str]:
    """The relative paths under ``root`` that a build context holds, parents before children, sorted.

    Symbolic links are listed, never followed. ``keep`` names paths sent even when excluded (Docker always
    sends the Dockerfile and ``.dockerignore``)."""
    matcher = matcher if matcher is not None else Matcher.for_directory(root)
    kept = {posixpath.normpath(k) for k in keep}
    seen: set[str] = set()

    def visit(relative: str) -> Iterator[str]:
        directory = root / relative if relative else root
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            path = f"{relative}/{entry.name}" if relative else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if matcher.excluded(path) and path not in kept:
                if is_dir and matcher.may_include_under(path):
                    yield from visit(path)
                continue
            seen.add(path)
            yield path
            if is_dir:
                yield from visit(path)

    yield from visit("")
    for path in sorted(kept - seen):
        try:
            mode = os.lstat(root / path).st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
            yield path
