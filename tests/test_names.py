"""Names from outside, matched in full, and the paths built from them kept under their root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.errors import BadRequest
from shared.models import AppCreate
from shared.names import OutsideRoot, env_problem, is_app_name, is_env_key, is_under, parse_pair, under
from shared.provider.local.apps import check_name


@pytest.mark.parametrize("name", ["myapp\n", "\nmyapp", "my/app", "..", "", "a" * 31, "Myapp", "1app", "myapp\x00"])
def test_what_is_not_an_app_name(name: str) -> None:
    assert not is_app_name(name)
    with pytest.raises(BadRequest):
        check_name(name)
    with pytest.raises(ValueError):
        AppCreate(name=name)


def test_app_names_and_env_keys_that_are() -> None:
    assert is_app_name("myapp") and is_app_name("a") and is_app_name("a" * 30) and is_app_name("my-app-2")
    assert is_env_key("GREETING") and is_env_key("_x1")
    assert not is_env_key("KEY\n") and not is_env_key("BAD\nKEY") and not is_env_key("1KEY") and not is_env_key("")


def test_env_values_with_nul_and_pairs() -> None:
    assert env_problem({"A": "ok\nmultiline is fine"}) == ""
    assert "NUL" in env_problem({"A": "a\x00b"})
    assert "invalid environment variable name" in env_problem({"A\n": "x"})
    assert parse_pair("A=b=c") == ("A", "b=c")
    for bad in ("A", "=x", "A\n=x", "A=\x00"):
        with pytest.raises(BadRequest):
            parse_pair(bad)


def test_a_path_from_a_name_stays_under_its_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "link")
    assert under(root, "myapp") == root / "myapp"
    assert under(root, "myapp", "0001.log") == root / "myapp" / "0001.log"
    for parts in (("..",), (".",), ("",), ("a/b",), ("/etc",), ("a\x00",), ("link",), ("link", "x"), ("ok", "..")):
        with pytest.raises(OutsideRoot):
            under(root, *parts)
    assert is_under(root, root, or_root=True) and not is_under(root, root)
    assert not is_under(root, root / "link")
