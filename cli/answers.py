"""The rack's JSON answers read as :mod:`shared.protocol` types, checked on the way in (standard library only:
the fast paths of `convox exec`/`run` and the metrics stream use it without httpx).

A check is shallow by design: a JSON object with every key of the type (extra keys from a newer rack are
kept and ignored). It stops an answer the CLI does not understand with a message, instead of a KeyError deep
in a command.
"""

from __future__ import annotations

from typing import TypeVar, cast

from cli.errors import CliError

T = TypeVar("T")


def expect(kind: type[T], value: object, where: str) -> T:
    """``value`` as the TypedDict ``kind``: a JSON object with (at least) every key of ``kind``."""
    keys: frozenset[str] = getattr(kind, "__required_keys__", frozenset())
    if not isinstance(value, dict) or not keys <= value.keys():
        missing = sorted(keys - value.keys()) if isinstance(value, dict) else []
        what = f"an object without {', '.join(missing)}" if missing else f"a {type(value).__name__}"
        raise CliError(f"the rack answered {where} with {what} where this CLI expects {kind.__name__} (out of date?)")
    return cast("T", value)


def expect_list(kind: type[T], value: object, where: str) -> list[T]:
    """``value`` as a list of ``kind`` (each checked as :func:`expect` does)."""
    if not isinstance(value, list):
        raise CliError(
            f"the rack answered {where} with a {type(value).__name__} where this CLI expects a list of {kind.__name__}"
        )
    return [expect(kind, item, where) for item in value]


def expect_strings(value: object, where: str) -> dict[str, str]:
    """``value`` as names and values (an environment, the rack's parameters)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise CliError(f"the rack answered {where} with something else than names and their values")
    return cast("dict[str, str]", value)
