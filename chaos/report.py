"""A campaign's HTML report: one self-contained page with inline SVG plots.

Written next to ``summary.json`` as ``report.html``; it needs nothing from the
network (no scripts, no fonts, no CDN). Plots, on one time axis:

* **faults**: one lane per member slot, each fault a coloured window (hover
  for its note), the leader as a green strip under its lane, leader changes
  as thin vertical lines across every plot;
* **throughput**: acknowledged and failed/ambiguous operations per second;
* **latency**: every operation at its invocation time, log scale (ambiguous
  ones at the top, in red);
* **violations**: a red marker at the invocation of every operation a checker
  names (``op N``), with the finding as its tooltip, and the full list below.
"""

from __future__ import annotations

import html
import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chaos.campaign import CampaignResult

COLOURS = {
    "kill": "#dc2828",
    "kill_majority": "#dc2828",
    "pause": "#f5961e",
    "restart": "#3c6ee6",
    "partition": "#3c3c3c",
    "oneway": "#e63caa",
    "delay": "#28bec8",
    "loss": "#8c5a28",
    "move_leader": "#963cc8",
    "replace_member": "#963cc8",
    "learner_cycle": "#963cc8",
    "power_loss": "#000000",
    "disk_full": "#b8860b",
    "slow_disk": "#6b8e23",
    "failpoint": "#c71585",
    "none": "#cccccc",
}
LEADER = "#28aa46"
OK_COLOUR = "#28aa46"
FAIL_COLOUR = "#999999"
INFO_COLOUR = "#dc2828"
WIDTH = 1200
LEFT = 70
RIGHT = 20
_OP_REF = re.compile(r"\bop (\d+)\b")


class _Axis:
    def __init__(self, t0: float, duration: float) -> None:
        self.t0 = t0
        self.duration = max(duration, 1e-3)
        self.width = WIDTH - LEFT - RIGHT

    def x(self, t: float) -> float:
        frac = min(max((t - self.t0) / self.duration, 0.0), 1.0)
        return round(LEFT + frac * self.width, 1)

    def ticks(self) -> list[int]:
        step = next(s for s in (5, 10, 30, 60, 300, 600, 1800, 3600) if self.duration / s <= 15)
        return list(range(0, int(self.duration) + 1, step))


def _esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def _time_axis(axis: _Axis, y: float, height: float) -> list[str]:
    out = []
    for s in axis.ticks():
        x = axis.x(axis.t0 + s)
        out.append(f'<line x1="{x}" y1="{y}" x2="{x}" y2="{y + height}" class="grid"/>')
        out.append(f'<text x="{x}" y="{y + height + 12}" class="tick">{s}s</text>')
    return out


def _leader_lines(result: CampaignResult, axis: _Axis, y: float, height: float) -> list[str]:
    out = []
    for t, who in result.leaders:
        x = axis.x(t)
        out.append(
            f'<line x1="{x}" y1="{y}" x2="{x}" y2="{y + height}" class="leader">'
            f"<title>leader m{who} at {t - axis.t0:.1f}s</title></line>"
        )
    return out


def _faults_svg(result: CampaignResult, axis: _Axis) -> str:
    slots = result.config.members + (1 if result.config.membership else 0)
    lane = 30
    height = slots * lane + 20
    parts = [f'<svg width="{WIDTH}" height="{height}" role="img" aria-label="faults">']
    for i in range(slots):
        y = i * lane
        parts.append(f'<text x="8" y="{y + 16}" class="label">m{i}</text>')
        parts.append(
            f'<rect x="{LEFT}" y="{y}" width="{axis.width}" height="{lane - 8}" class="lane"/>'
        )
    for f in result.faults:
        colour = COLOURS.get(f.kind, "#888888")
        x0, x1 = axis.x(f.start), axis.x(f.end or f.start)
        tip = _esc(f"r{f.round} {f.kind} {f.members} {f.start - axis.t0:.1f}s..: {f.note}")
        for i in f.members:
            y = i * lane
            parts.append(
                f'<rect x="{x0}" y="{y}" width="{max(x1 - x0, 2)}" height="{lane - 14}" '
                f'fill="{colour}"><title>{tip}</title></rect>'
            )
    bounds = [*result.leaders, (axis.t0 + axis.duration, None)]
    for (t, who), (t_next, _) in itertools.pairwise(bounds):
        if who is not None and who < slots:
            y = who * lane + lane - 13
            parts.append(
                f'<rect x="{axis.x(t)}" y="{y}" width="{max(axis.x(t_next) - axis.x(t), 1)}" '
                f'height="4" fill="{LEADER}"><title>leader m{who}</title></rect>'
            )
    parts += _leader_lines(result, axis, 0, slots * lane - 8)
    parts += _time_axis(axis, 0, slots * lane - 8)
    parts.append("</svg>")
    return "".join(parts)


def _throughput_svg(result: CampaignResult, axis: _Axis) -> str:
    height = 140
    ok: Counter[int] = Counter()
    bad: Counter[int] = Counter()
    for op in result.ops:
        second = int(max(op.invoke - axis.t0, 0))
        (ok if op.status == "ok" else bad)[second] += 1
    peak = max([*ok.values(), *bad.values(), 1])
    parts = [f'<svg width="{WIDTH}" height="{height + 20}" role="img" aria-label="throughput">']
    parts.append(f'<rect x="{LEFT}" y="0" width="{axis.width}" height="{height}" class="lane"/>')
    parts.append(f'<text x="8" y="12" class="label">{peak}/s</text>')
    parts.append(f'<text x="8" y="{height}" class="label">0</text>')
    seconds = int(axis.duration) + 1
    for series, colour in ((ok, OK_COLOUR), (bad, INFO_COLOUR)):
        points = " ".join(
            f"{axis.x(axis.t0 + s + 0.5)},{round(height - height * series[s] / peak, 1)}"
            for s in range(seconds)
        )
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}"/>')
    parts += _leader_lines(result, axis, 0, height)
    parts += _time_axis(axis, 0, height)
    parts.append("</svg>")
    return "".join(parts)


def _latency_svg(result: CampaignResult, axis: _Axis, marked: dict[int, list[str]]) -> str:
    height = 220
    lo, hi = math.log10(1e-3), math.log10(10.0)
    parts = [f'<svg width="{WIDTH}" height="{height + 20}" role="img" aria-label="latency">']
    parts.append(f'<rect x="{LEFT}" y="0" width="{axis.width}" height="{height}" class="lane"/>')
    for label, seconds in (("10s", 10.0), ("1s", 1.0), ("100ms", 0.1), ("10ms", 0.01)):
        y = round(height - height * (math.log10(seconds) - lo) / (hi - lo), 1)
        parts.append(f'<text x="8" y="{y + 4}" class="label">{label}</text>')
        parts.append(f'<line x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}" class="grid"/>')
    by_id = {op.id: op for op in result.ops}
    for op_id, findings in marked.items():
        named = by_id.get(op_id)
        if named is not None:
            x = axis.x(named.invoke)
            tip = _esc("; ".join(findings))
            parts.append(
                f'<line x1="{x}" y1="0" x2="{x}" y2="{height}" class="violation">'
                f"<title>{tip}</title></line>"
            )
    dots: dict[str, list[str]] = {OK_COLOUR: [], FAIL_COLOUR: [], INFO_COLOUR: []}
    for op in result.ops:
        x = axis.x(op.invoke)
        if op.ret is None or op.status == "info":
            dots[INFO_COLOUR].append(f"M{x},2h1.5")
            continue
        latency = min(max(op.ret - op.invoke, 1e-3), 10.0)
        y = round(height - height * (math.log10(latency) - lo) / (hi - lo), 1)
        dots[OK_COLOUR if op.status == "ok" else FAIL_COLOUR].append(f"M{x},{y}h1.5")
    for colour, path in dots.items():
        if path:
            parts.append(f'<path d="{"".join(path)}" stroke="{colour}" stroke-width="2"/>')
    parts += _leader_lines(result, axis, 0, height)
    parts += _time_axis(axis, 0, height)
    parts.append("</svg>")
    return "".join(parts)


def _table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_report(result: CampaignResult, path: Path) -> None:
    """Write ``result`` as a self-contained HTML page with inline SVG plots."""
    axis = _Axis(result.started, result.duration)
    marked: dict[int, list[str]] = {}
    for checker, found in result.violations.items():
        for v in found:
            for m in _OP_REF.finditer(v):
                marked.setdefault(int(m.group(1)), []).append(f"{checker}: {v}")
    cfg = result.config
    status = "OK, no violations" if result.ok else "VIOLATIONS FOUND"
    legend = "".join(
        f'<span class="key"><i style="background:{c}"></i>{_esc(k)}</span>'
        for k, c in COLOURS.items()
        if any(f.kind == k for f in result.faults)
    )
    faults = [
        (
            f"r{f.round}",
            f"{f.start - axis.t0:.2f}s",
            f"{(f.end or f.start) - f.start:.2f}s",
            f.kind,
            " ".join(f"m{i}" for i in f.members),
            f.note,
        )
        for f in result.faults
    ]
    counts = [
        (kind, " ".join(f"{s}={n}" for s, n in sorted(per.items())))
        for kind, per in sorted(result.counts.items())
    ]
    checks = [
        (checker, "ok" if not found else f"{len(found)} violation(s)")
        for checker, found in sorted(result.violations.items())
    ]
    violations = "".join(
        f"<li><b>{_esc(checker)}</b>: {_esc(v)}</li>"
        for checker, found in sorted(result.violations.items())
        for v in found[:200]
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>chaos campaign seed={cfg.seed} target={_esc(cfg.target)}: {status}</title>
<style>
body {{ font: 13px/1.4 system-ui, sans-serif; margin: 16px; color: #222; }}
h1 {{ font-size: 18px; }} h2 {{ font-size: 15px; margin-top: 22px; }}
.ok {{ color: #1a7f37; }} .bad {{ color: #c62828; }}
svg text {{ font: 11px sans-serif; fill: #333; }} svg .tick {{ text-anchor: middle; }}
.lane {{ fill: #f0f0f0; }} .grid {{ stroke: #ddd; }}
.leader {{ stroke: {LEADER}; stroke-width: 1; opacity: 0.6; }}
.violation {{ stroke: #c62828; stroke-width: 1; opacity: 0.45; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 2px 6px; }}
.key {{ margin-right: 12px; }} .key i {{ display: inline-block; width: 12px; height: 10px;
  margin-right: 4px; vertical-align: middle; }}
code {{ background: #f4f4f4; padding: 1px 4px; }}
</style></head><body>
<h1>Chaos campaign against {_esc(cfg.target)}, seed {cfg.seed}:
<span class="{"ok" if result.ok else "bad"}">{status}</span></h1>
<p>{cfg.rounds} rounds, {cfg.members} members, {result.duration:.1f}s.
Reproduce: <code>{_esc(cfg.repro())}</code></p>
<h2>Faults and leaders</h2>
<p>{legend}<span class="key"><i style="background:{LEADER}"></i>leader</span></p>
{_faults_svg(result, axis)}
<h2>Throughput (operations per second: green acknowledged, red failed or ambiguous)</h2>
{_throughput_svg(result, axis)}
<h2>Latency (log scale; red at the top: ambiguous; red lines: operations named by a
violation)</h2>
{_latency_svg(result, axis, marked)}
<h2>Checks</h2>
{_table(checks, ("checker", "result"))}
<ul>{violations}</ul>
<h2>Operations</h2>
{_table(counts, ("kind", "outcomes"))}
<h2>Faults</h2>
{_table(faults, ("round", "start", "length", "kind", "members", "note"))}
<h2>Stats</h2>
{_table([(k, str(v)) for k, v in sorted(result.stats.items())], ("stat", "value"))}
</body></html>
"""
    path.write_text(page)
