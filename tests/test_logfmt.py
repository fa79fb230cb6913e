"""logfmt lines: one event, one line, whatever a value from outside holds."""

from __future__ import annotations

from shared.logfmt import Quoted, format_line


def test_a_hostile_value_never_splits_a_line_nor_forges_a_field() -> None:
    hostile = '/apps/x\n2026-01-01T00:00:00Z gateway: ns=gateway at=forged\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"\\ x=1'
    line = format_line(at="request", path=Quoted(hostile), status=400)
    assert line.splitlines() == [line]  # str.splitlines splits on every one of those characters
    assert line.startswith('at=request path="/apps/x\\n2026') and line.endswith('\\"\\\\ x=1" status=400')
    assert line.count('"') == 3  # the opening and closing quotes and the escaped one


def test_plain_values_stay_bare_and_quoted_ones_keep_their_text() -> None:
    assert format_line(ns="apps", app="myapp", elapsed=12.3456, ok=True) == "ns=apps app=myapp elapsed=12.346 ok=true"
    assert format_line(method=Quoted("GET"), message="two words") == 'method="GET" message="two words"'
