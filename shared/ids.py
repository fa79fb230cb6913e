"""Ids as Convox makes them: builds ``B`` + 10 capital letters, releases ``R`` + 10."""

from __future__ import annotations

import secrets
import string


def new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(string.ascii_uppercase) for _ in range(10))


def build_id() -> str:
    return new_id("B")


def release_id() -> str:
    return new_id("R")
