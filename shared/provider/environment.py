"""How a new release's environment comes from the one it follows, for every provider: the merge of a release's
``set`` and ``unset``, and the contract's stricter environment change (``convox env set/unset``).

Pure functions over plain dicts; each provider applies them inside its own atomic read-and-write of the
latest release (a transaction locally, a conditional write on AWS)."""

from __future__ import annotations

from collections.abc import Collection

from shared.errors import NotFound


def merged_env(current: dict[str, str], set: dict[str, str] | None, unset: Collection[str]) -> dict[str, str]:
    """``current`` without the keys of ``unset`` (those not there are fine), then with ``set`` on top: a key in
    both is set."""
    changed = {key: value for key, value in current.items() if key not in unset}
    changed.update(set or {})
    return changed


def changed_env(
    current: dict[str, str], set: dict[str, str] | None, unset: Collection[str], replace: bool = False
) -> dict[str, str]:
    """``set`` on top of ``current`` (of nothing with ``replace``), then ``unset`` removed: NotFound for a key
    of ``unset`` that is not there."""
    changed = {**({} if replace else current), **(set or {})}
    for key in unset:
        if key not in changed:
            raise NotFound(f"no such environment variable: {key}")
        del changed[key]
    return changed
