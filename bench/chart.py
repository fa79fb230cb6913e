"""A chart people read: the ratios of a results document as an HTML page with one inline SVG bar chart.

One bar per case, its length the ratio convox/docker of the medians on a logarithmic axis (1.0x in the
middle: to the left convox is faster, or moves less, than docker), the case's goal drawn as a line across
its bar: a ratio goal where it stands, an absolute goal converted to the ratio it means in this run (the
goal divided by docker's median). Bars are green when the case met its goal, red when not; cases that
errored are listed under the chart. No script, no external asset: the page opens offline.

``python -m bench.chart [results.json] [out.html]`` re-renders a saved document.
"""

from __future__ import annotations

import html
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

LOW, HIGH = 0.05, 20.0  # the axis: 1/20x .. 20x, wide enough for every case we have (ps is ~0.16x)
ROW, LABEL, PLOT, PAD = 34, 330, 520, 16


def _x(ratio: float) -> float:
    """Where ``ratio`` lies on the plot, in pixels from its left edge (clamped to the axis)."""
    clamped = min(max(ratio, LOW), HIGH)
    return PLOT * (math.log(clamped) - math.log(LOW)) / (math.log(HIGH) - math.log(LOW))


def goal_ratio(result: Mapping[str, Any]) -> float | None:
    """The case's goal as a ratio convox/docker (None when it cannot be one: docker measured nothing)."""
    target = result["target"]
    if target["on"] == "ratio":
        return float(target["limit"])
    docker = float(result["docker"]["median"])
    return float(target["limit"]) / docker if docker > 0 else None


def _bar(index: int, result: Mapping[str, Any]) -> str:
    y = PAD + index * ROW
    ratio = float(result["ratio"])
    passed = result["status"] == "pass"
    one = _x(1.0)
    end = _x(ratio) if math.isfinite(ratio) else PLOT
    left, width = min(one, end), max(abs(end - one), 1.0)
    title = html.escape(str(result.get("title") or result["case"]))
    parts = [
        f'<text x="{LABEL - 8}" y="{y + 21}" text-anchor="end" class="label">'
        f"<title>{title}</title>{html.escape(result['case'])}</text>",
        f'<rect x="{LABEL + left:.1f}" y="{y + 7}" width="{width:.1f}" height="20" '
        f'class="{"pass" if passed else "fail"}"><title>{title}: {ratio:.2f}x</title></rect>',
        f'<text x="{LABEL + PLOT + 8}" y="{y + 21}" class="value">{ratio:.2f}x '
        f"({html.escape(str(result['target']['text']))})</text>",
    ]
    goal = goal_ratio(result)
    if goal is not None:
        gx = LABEL + _x(goal)
        parts.append(
            f'<line x1="{gx:.1f}" y1="{y + 2}" x2="{gx:.1f}" y2="{y + 32}" class="goal">'
            f"<title>goal {goal:.2f}x</title></line>"
        )
    return "\n".join(parts)


def _axis(rows: int) -> str:
    bottom = PAD + rows * ROW
    ticks = []
    for tick in (0.1, 0.3, 0.5, 1.0, 2.0, 3.0, 10.0):
        x = LABEL + _x(tick)
        ticks.append(
            f'<line x1="{x:.1f}" y1="{PAD}" x2="{x:.1f}" y2="{bottom}" '
            f'class="{"one" if tick == 1.0 else "grid"}"/>'
            f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle" class="tick">{tick:g}x</text>'
        )
    return "\n".join(ticks)


def render(document: Mapping[str, Any]) -> str:
    """The HTML page for a results document (bench.report.document's shape)."""
    results: Sequence[Mapping[str, Any]] = document.get("results", [])
    measured = [r for r in results if r.get("status") in ("pass", "fail")]
    errored = [r for r in results if r.get("status") == "error"]
    height = PAD * 2 + len(measured) * ROW + 24
    width = LABEL + PLOT + 230
    bars = "\n".join(_bar(i, r) for i, r in enumerate(measured))
    errors = "".join(f"<li><b>{html.escape(r['case'])}</b>: {html.escape(str(r.get('error')))}</li>" for r in errored)
    machine = document.get("machine", {})
    verdict = "Every case met its goal" if document.get("passed") else "Some cases missed their goal"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>convox vs docker</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #222; }}
.label, .value, .tick {{ font-size: 13px; fill: #222; }} .tick {{ fill: #666; }}
.pass {{ fill: #2e8b57; }} .fail {{ fill: #c0392b; }}
.goal {{ stroke: #111; stroke-width: 3; stroke-dasharray: 4 2; }}
.grid {{ stroke: #ddd; }} .one {{ stroke: #888; stroke-width: 1.5; }}
</style></head><body>
<h1>convox vs docker, side by side</h1>
<p>Ratio convox/docker of the medians, logarithmic axis; the dashed line on each bar is its goal
(below it passes for durations, above it for throughputs). {html.escape(verdict)}.</p>
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img"
 aria-label="ratios of convox to docker per case">
{_axis(len(measured))}
{bars}
</svg>
{f"<h2>Errored</h2><ul>{errors}</ul>" if errors else ""}
<p><small>generated {html.escape(str(document.get("generated", "")))} on
{html.escape(str(machine.get("platform", "")))}, {html.escape(str(machine.get("cpus", "")))} CPUs</small></p>
</body></html>
"""


def write_html(document: Mapping[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(render(document))
    tmp.replace(path)
    return path


def main(argv: Sequence[str]) -> int:
    from bench.report import RESULTS_DIR

    source = Path(argv[0]) if argv else RESULTS_DIR / "latest.json"
    target = Path(argv[1]) if len(argv) > 1 else source.with_suffix(".html")
    print(write_html(json.loads(source.read_text()), target))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
