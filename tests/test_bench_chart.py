"""The benchmark report's chart: a results document rendered as an HTML page with an SVG bar per case."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench import report
from bench.chart import goal_ratio, render
from bench.result import Result, Row, Target
from bench.stats import Stats


def _rows() -> list[Row]:
    fast = Result(
        "convox ps vs docker stats", "s", Stats((0.3, 0.35, 0.33)), Stats((2.0, 2.1, 2.2)), Target.ratio_below(0.3)
    )
    slow = Result("exec throughput", "B/s", Stats((200e6,)), Stats((350e6,)), Target.ratio_above(1.0))
    absolute = Result("convox --version", "s", Stats((0.015,)), Stats((0.010,)), Target.below(0.150))
    return [
        Row("ps_twenty", fast),
        Row("exec_throughput", slow),
        Row("version", absolute),
        Row("deploy", error="RuntimeError: <engine> gone"),
    ]


def test_write_json_puts_a_chart_beside_the_document(tmp_path: Path) -> None:
    path = report.write_json(_rows(), {"repeat": 3}, tmp_path / "latest.json")
    page = (tmp_path / "latest.html").read_text()
    document = json.loads(path.read_text())
    assert [r["case"] for r in document["results"]] == ["ps_twenty", "exec_throughput", "version", "deploy"]
    assert page.startswith("<!doctype html>") and "<svg" in page
    # One bar per measured case, coloured by its verdict; the errored case is listed, escaped.
    assert len(re.findall(r'<rect [^>]*class="pass"', page)) == 2
    assert len(re.findall(r'<rect [^>]*class="fail"', page)) == 1
    assert "RuntimeError: &lt;engine&gt; gone" in page
    assert "0.16x" in page and "0.57x" in page


def test_every_measured_case_has_its_goal_line_where_the_goal_is() -> None:
    document = report.document(_rows(), {})
    results = json.loads(json.dumps(document, default=str))["results"]
    assert goal_ratio(results[0]) == 0.3
    assert goal_ratio(results[1]) == 1.0
    # An absolute goal (150 ms) means 15x of docker's 10 ms in this run.
    ratio = goal_ratio(results[2])
    assert ratio is not None and abs(ratio - 15.0) < 1e-9
    page = render(json.loads(json.dumps(document, default=str)))
    goals = re.findall(r'<line x1="([\d.]+)"[^>]*class="goal"', page)
    assert len(goals) == 3
    # The lower goal lies left of the higher ones on the shared axis.
    xs = [float(x) for x in goals]
    assert xs[0] < xs[1] < xs[2]


def test_a_target_is_shown_with_the_precision_it_needs() -> None:
    assert Target.below(0.150).describe("s") == "< 150 ms"
    assert Target.below(0.0007).describe("s") == "< 0.7 ms"  # docker's 0.4 ms plus 0.3, not "< 1 ms"
    assert Target.ratio_above(0.9).describe("B/s") == "ratio ≥ 0.9x"
