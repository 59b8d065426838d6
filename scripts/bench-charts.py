#!/usr/bin/env python3
"""Draws the charts of BENCHMARKS.md as SVG files, from the bench's JSON lines.

    looppool-bench --json > docs/bench/latest.jsonl
    python3 scripts/bench-charts.py

Inputs (JSON lines; a line that is not a JSON object is skipped):

- docs/bench/latest.jsonl: the rows of `looppool-bench --json` (`workload`,
  `value`, `unit`, `limit`, `limit_of`, `ratio`, `target`, ...). Draws w2.svg:
  W2's p50 and p99 beside raw ping-pong of the same run, as the kernel places
  the processes and pinned to one CPU, with each target marked.
- docs/bench/peers.jsonl: the records of the Python peer harness (`run_all.py
  --extra-peer 'looppool-rs=...' --out docs/bench/peers.jsonl`: `peer`,
  `workload`, `params`, `wall_s`, `rate`, ...). Several rounds of the same peer
  are reduced to their median. Draws w1.svg, w3.svg, w4.svg (tasks/s) and
  w5.svg (MB/s each way): every peer of the run, looppool-rs highlighted.
- docs/bench/w1-long.jsonl (`--only W1,W1-long`): draws w1-long.svg, each
  long pool's rate chunk by chunk against its target.
- docs/bench/blobs.jsonl (`--only W5,W5-64MiB`): draws blobs.svg, inline
  against Blob payloads beside the raw socket and memcpy.

An object with a `run` key and no `workload` describes the run (date, commit)
and becomes the charts' subtitle; `--bench-run` and `--peers-run` set it
instead, e.g. after a fresh run. Standard library only: the SVG is written by
hand.
"""
import argparse
import json
import math
import os
import statistics
import sys
from xml.sax.saxutils import escape

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(ROOT, "docs", "bench")

WIDTH = 760
FONT = "font-family=\"-apple-system, 'Segoe UI', Helvetica, Arial, sans-serif\""
OURS = "#d9480f"  # looppool-rs, and the pool's rows
THEIRS = "#868e96"  # the Python peers
RAW = "#1c7ed6"  # raw limits
INK = "#212529"
GRID = "#dee2e6"


# ---------------------------------------------------------------- reading


def read_jsonl(path):
    """The JSON objects of a file, and the run's description if it has one."""
    records, run = [], None
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line.startswith("{"):
                continue
            obj = json.loads(line)
            if "run" in obj and "workload" not in obj:
                run = obj["run"]
            else:
                records.append(obj)
    return records, run


# The harness's peer names, as a reader knows them.
PEER_NAMES = {
    "looppool": "looppool 0.4.0 (Python)",
    "aiomp": "aiomultiprocess",
    "mp-imap": "mp imap",
    "mp-apply": "mp apply",
    "cf-submit": "cf submit",
    "cf-map": "cf map",
}


def peer_label(rec):
    """A peer and the parameters that make it a different variant."""
    label = PEER_NAMES.get(rec["peer"], rec["peer"])
    chunk = (rec.get("params") or {}).get("chunksize")
    if chunk is not None:
        label += f", chunk {chunk}"
    if rec.get("scaled"):
        label += " (extrapolated)"
    return label


def peer_medians(records, workload, field, where=None):
    """{label: median of `field`} over the rounds of each peer on `workload`."""
    groups = {}
    for rec in records:
        if rec.get("workload") != workload or rec.get("error") or rec.get("quick"):
            continue
        if where and not where(rec):
            continue
        value = rec.get(field)
        if isinstance(value, (int, float)):
            groups.setdefault(peer_label(rec), []).append(value)
    return {label: statistics.median(vals) for label, vals in groups.items()}


# ---------------------------------------------------------------- numbers


def fmt(v):
    """A figure in three significant digits or so, with a k/M suffix."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g} M"
    if a >= 1e4:
        return f"{v / 1e3:.3g} k"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def tick_label(v):
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def nice_step(span, ticks=5):
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


# ---------------------------------------------------------------- drawing


class Svg:
    def __init__(self, width, height):
        self.width, self.height = width, height
        self.parts = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>']

    def text(self, x, y, s, size=13, anchor="start", weight="normal", fill=INK):
        self.parts.append(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}">{escape(s)}</text>'
        )

    def rect(self, x, y, w, h, fill, title=None):
        tip = f"<title>{escape(title)}</title>" if title else ""
        self.parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0.5):.1f}" height="{h:.1f}" '
            f'fill="{fill}">{tip}</rect>'
        )

    def line(self, x1, y1, x2, y2, stroke=GRID, width=1, dash=None):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
            f'stroke="{stroke}" stroke-width="{width}"{d}/>'
        )

    def render(self, title):
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" '
            f'height="{self.height}" viewBox="0 0 {self.width} {self.height}" {FONT} '
            f'role="img" aria-label="{escape(title, {chr(34): "&quot;"})}">\n'
            f"<title>{escape(title)}</title>\n" + "\n".join(self.parts) + "\n</svg>\n"
        )


def header(svg, title, subtitle):
    """The title, and under it the subtitle's lines (a string or a list)."""
    svg.text(16, 26, title, size=16, weight="bold")
    lines = [subtitle] if isinstance(subtitle, str) else (subtitle or [])
    for i, line in enumerate(lines):
        svg.text(16, 46 + 16 * i, line, size=12, fill="#495057")


def hbar_chart(title, subtitle, bars, unit, log=False, ref=None, note=None):
    """Horizontal bars, best first: bars = [(label, value, colour)].

    `ref` = (value, text) draws a dashed reference line (an ideal)."""
    left, right, top, bar_h, gap = 230, 96, 96, 22, 8
    plot_w = WIDTH - left - right
    height = top + len(bars) * (bar_h + gap) + 44 + (18 if note else 0)
    svg = Svg(WIDTH, height)
    header(svg, title, subtitle)
    values = [v for _, v, _ in bars] + ([ref[0]] if ref else [])
    if log:
        lo = 10 ** math.floor(math.log10(min(values)))
        hi = 10 ** math.ceil(math.log10(max(values)))
        if hi <= lo:
            hi = lo * 10

        def x(v):
            return left + plot_w * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

        ticks = [10**e for e in range(round(math.log10(lo)), round(math.log10(hi)) + 1)]
    else:
        hi = max(values) * 1.05
        step = nice_step(hi)
        hi = math.ceil(hi / step) * step

        def x(v):
            return left + plot_w * v / hi

        ticks = [i * step for i in range(int(round(hi / step)) + 1)]
    bottom = top + len(bars) * (bar_h + gap)
    for t in ticks:
        svg.line(x(t), top - 4, x(t), bottom, GRID)
        svg.text(x(t), bottom + 16, tick_label(t), size=11, anchor="middle", fill="#495057")
    axis = unit + (" (log scale)" if log else "")
    svg.text(left + plot_w / 2, bottom + 34, axis, size=11, anchor="middle", fill="#495057")
    for i, (label, value, colour) in enumerate(bars):
        y = top + i * (bar_h + gap)
        x0 = x(lo) if log else left
        svg.rect(x0, y, x(value) - x0, bar_h, colour, f"{label}: {fmt(value)} {unit}")
        weight = "bold" if colour == OURS else "normal"
        svg.text(left - 8, y + bar_h * 0.72, label, anchor="end", weight=weight)
        # The figure after its bar, or after the reference line when the
        # two would cross.
        vx = x(value) + 6
        if ref and x(value) - 4 <= x(ref[0]) <= vx + 8 * len(fmt(value)):
            vx = max(vx, x(ref[0]) + 6)
        svg.text(vx, y + bar_h * 0.72, fmt(value), weight=weight)
    if ref:
        svg.line(x(ref[0]), top - 8, x(ref[0]), bottom, INK, 1.5, "5,4")
        svg.text(x(ref[0]), top - 12, ref[1], size=11, anchor="middle")
    if note:
        svg.text(16, height - 8, note, size=11, fill="#495057")
    return svg.render(title)


def grouped_chart(title, subtitle, panels, series, unit, note=None):
    """Panels of vertical bar groups, each panel on its own scale.

    panels = [(panel title, [(group label, [value per series], marker)])],
    series = [(name, colour)]; a marker = (value, text) or None draws a dashed
    line across its group (a target)."""
    top, plot_h, bottom_pad = 110, 230, 50
    height = top + plot_h + bottom_pad + (18 if note else 0)
    svg = Svg(WIDTH, height)
    header(svg, title, subtitle)
    lx = 16
    for name, colour in series:
        svg.rect(lx, 56, 12, 12, colour)
        svg.text(lx + 18, 66, name, size=12)
        lx += 30 + 7 * len(name)
    svg.line(lx, 62, lx + 22, 62, INK, 1.5, "5,4")
    svg.text(lx + 28, 66, "target", size=12)
    base = top + plot_h
    panel_w = (WIDTH - 16) / len(panels)
    for p, (panel_title, groups) in enumerate(panels):
        left = 16 + p * panel_w + 44
        right = 16 + (p + 1) * panel_w - 12
        values = [v for _, vs, _ in groups for v in vs] + [m[0] for _, _, m in groups if m]
        hi = max(values) * 1.1
        step = nice_step(hi, 4)
        hi = math.ceil(hi / step) * step

        def y(v, hi=hi):
            return base - plot_h * v / hi

        svg.text((left + right) / 2, top - 22, panel_title, size=13, anchor="middle", weight="bold")
        for i in range(int(round(hi / step)) + 1):
            t = i * step
            svg.line(left, y(t), right, y(t), GRID)
            svg.text(left - 6, y(t) + 4, tick_label(t), size=11, anchor="end", fill="#495057")
        svg.text(left - 6, top - 18, unit, size=11, anchor="end", fill="#495057")
        slot = (right - left) / len(groups)
        bar_w = min(48, slot * 0.5 / len(series))
        for g, (label, vals, marker) in enumerate(groups):
            cx = left + slot * (g + 0.5)
            x0 = cx - bar_w * len(series) / 2
            for s, ((name, colour), v) in enumerate(zip(series, vals)):
                bx = x0 + s * bar_w
                svg.rect(bx + 2, y(v), bar_w - 4, base - y(v), colour,
                         f"{label}, {name}: {fmt(v)} {unit}")
                svg.text(bx + bar_w / 2, y(v) - 5, fmt(v), size=11, anchor="middle")
            if marker:
                half = bar_w * len(series) / 2 + 6
                svg.line(cx - half, y(marker[0]), cx + half, y(marker[0]), INK, 1.5, "5,4")
                svg.text(cx + half + 3, y(marker[0]) + 4, marker[1], size=11)
            svg.text(cx, base + 18, label, size=12, anchor="middle")
    if note:
        svg.text(16, height - 8, note, size=11, fill="#495057")
    return svg.render(title)


# ---------------------------------------------------------------- charts


def colour_of(label):
    return OURS if label.startswith("looppool-rs") else THEIRS


def peer_bars(medians):
    return [(label, v, colour_of(label)) for label, v in sorted(medians.items(), key=lambda kv: -kv[1])]


def peer_charts(records, run):
    sub = ["Python peers beside looppool-rs, 2 workers, one cold pool per measurement (no warm-up)"]
    if run:
        sub.append(f"Peer harness run of {run}; medians of its rounds")
    out = {}
    w1 = peer_medians(records, "W1", "rate")
    if w1:
        out["w1.svg"] = hbar_chart(
            "W1: 200,000 tiny tasks, throughput", sub, peer_bars(w1), "tasks/s", log=True,
            note="chunk 1000: the caller batches 1,000 tasks per message; every other bar is one message per task.",
        )
    w3 = peer_medians(records, "W3", "rate")
    if w3:
        out["w3.svg"] = hbar_chart(
            "W3: 20,000 tasks awaiting a 50 ms sleep, throughput", sub, peer_bars(w3), "tasks/s",
            log=True, ref=(20000 / 0.5, "ideal (0.5 s)"),
            note="Peers without an event loop per worker block in each sleep (200 tasks run, extrapolated).",
        )
    w4 = peer_medians(records, "W4", "rate")
    if w4:
        out["w4.svg"] = hbar_chart(
            "W4: 4,000 tasks of 1 ms CPU then a 10 ms sleep, throughput", sub, peer_bars(w4),
            "tasks/s", ref=(4000 / 2.0, "ideal (2 s)"),
            note="Peers without an event loop per worker block in each sleep.",
        )
    w5 = peer_medians(records, "W5", "rate")
    if w5:
        out["w5.svg"] = hbar_chart(
            "W5: 1,000 payloads of 1 MiB echoed", sub, peer_bars(w5), "MB/s each way",
        )
    return out


def w2_chart(rows, run):
    by = {r["workload"]: r for r in rows if "workload" in r}
    need = ["raw-pingpong-p50", "raw-pingpong-p99", "W2-p50", "W2-p99",
            "raw-pingpong-pinned-p50", "raw-pingpong-pinned-p99", "W2-pinned-p50", "W2-pinned-p99"]
    missing = [n for n in need if n not in by]
    if missing:
        print(f"bench-charts: no W2 chart, missing rows {', '.join(missing)}", file=sys.stderr)
        return {}

    def target_of(row):
        t = (by[row].get("target") or "").replace("<=", "").strip()
        try:
            x = float(t)
        except ValueError:
            return None
        return (by[row]["limit"] * x, f"{x:g}× raw")

    panels = []
    for place, raw, pool in [("as the kernel places the processes", "raw-pingpong", "W2"),
                             ("pinned to one CPU", "raw-pingpong-pinned", "W2-pinned")]:
        groups = [(q, [by[f"{raw}-{q}"]["value"], by[f"{pool}-{q}"]["value"]], target_of(f"{pool}-{q}"))
                  for q in ("p50", "p99")]
        panels.append((place, groups))
    sub = f"looppool-bench, run of {run}" if run else "looppool-bench"
    return {
        "w2.svg": grouped_chart(
            "W2: latency of one pool.call against raw ping-pong", sub, panels,
            [("raw ping-pong (socketpair, no pool)", RAW), ("W2: pool.call", OURS)], "µs",
            note="Medians of 5 series of 5,000 round trips. The pinned rows are the steadier comparison.",
        )
    }


def line_chart(title, subtitle, series, unit, xlabel, ref=None, note=None):
    """Lines of y values over their index, one colour each.

    series = [(name, colour, [y])]; ref = (value, text) draws a dashed
    horizontal line (a target)."""
    top, plot_h, bottom_pad = 100, 260, 52
    height = top + plot_h + bottom_pad + (18 if note else 0)
    svg = Svg(WIDTH, height)
    header(svg, title, subtitle)
    left, right = 70, WIDTH - 20
    base = top + plot_h
    n = max(len(ys) for _, _, ys in series)
    hi = max([max(ys) for _, _, ys in series] + ([ref[0]] if ref else [])) * 1.1
    step = nice_step(hi, 5)
    hi = math.ceil(hi / step) * step

    def x(i):
        return left + (right - left) * i / max(1, n - 1)

    def y(v):
        return base - plot_h * v / hi

    for i in range(int(round(hi / step)) + 1):
        t = i * step
        svg.line(left, y(t), right, y(t), GRID)
        svg.text(left - 6, y(t) + 4, tick_label(t), size=11, anchor="end", fill="#495057")
    svg.text(left - 6, top - 10, unit, size=11, anchor="end", fill="#495057")
    svg.text((left + right) / 2, base + 20, xlabel, size=11, anchor="middle", fill="#495057")
    lx = left
    for name, colour, ys in series:
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(ys))
        svg.parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        svg.rect(lx, base + 30, 12, 12, colour)
        svg.text(lx + 18, base + 40, name, size=12)
        lx += 40 + 7 * len(name)
    if ref:
        svg.line(left, y(ref[0]), right, y(ref[0]), INK, 1.5, "5,4")
        svg.text(right, y(ref[0]) - 6, ref[1], size=11, anchor="end")
    if note:
        svg.text(16, height - 8, note, size=11, fill="#495057")
    return svg.render(title)


POOL_COLOURS = [OURS, RAW, "#2b8a3e"]


def w1_long_chart(rows, run):
    by = {r["workload"]: r for r in rows if "workload" in r}
    out = {}
    for name, how in [("W1-long", "as the kernel places the processes"),
                      ("W1-long-placed", "parent on one CPU, workers on the others (worker_cpus)")]:
        row = by.get(name)
        if not row or "chunk_rates" not in row:
            continue
        series = [(f"pool {i + 1}: {fmt(rate)} tasks/s", POOL_COLOURS[i % 3], ys)
                  for i, (rate, ys) in enumerate(zip(row["rates_per_pool"], row["chunk_rates"]))]
        fresh = row["limit"]
        sub = [how, f"looppool-bench --only W1,W1-long, run of {run}" if run else "looppool-bench --only W1,W1-long"]
        chunk = row.get("chunk", 200000)
        out[f"{name.lower()}.svg"] = line_chart(
            f"{name}: {fmt(row['n_per_pool'])} tasks through each of three pools", sub, series,
            "tasks/s", f"chunks of {chunk:,} tasks, in order",
            ref=(0.8 * fresh, f"target: 0.8 × fresh-pool W1 median ({fmt(fresh)})"),
        )
    return out


def blob_chart(rows, run):
    by = {r["workload"]: r for r in rows if "workload" in r}
    names = [("raw-bulk-1MiB", RAW), ("W5", OURS), ("W5-blob", OURS),
             ("raw-bulk-64MiB", RAW), ("memcpy-64MiB", RAW), ("W5-64MiB", OURS)]
    bars = [(n, by[n]["value"], c) for n, c in names if n in by]
    if len(bars) < len(names):
        return {}
    sub = f"looppool-bench --only W5,W5-64MiB, run of {run}" if run else "looppool-bench --only W5,W5-64MiB"
    return {
        "blobs.svg": hbar_chart(
            "Large payloads: 1 MiB and 64 MiB echoed, inline and as Blob", [sub], bars,
            "MB/s each way", log=True,
            note="A Blob crosses as a sealed memfd's descriptor: no copy; raw rows copy through a socketpair.",
        )
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default=os.path.join(BENCH_DIR, "latest.jsonl"))
    ap.add_argument("--peers", default=os.path.join(BENCH_DIR, "peers.jsonl"))
    ap.add_argument("--out", default=BENCH_DIR)
    ap.add_argument("--bench-run", help="subtitle of the bench chart: the run's date and commit")
    ap.add_argument("--peers-run", help="subtitle of the peer charts: the run's date and commit")
    a = ap.parse_args()

    charts = {}
    if os.path.exists(a.bench):
        rows, run = read_jsonl(a.bench)
        charts.update(w2_chart(rows, a.bench_run or run))
    else:
        print(f"bench-charts: {a.bench} not found, no W2 chart", file=sys.stderr)
    for name, draw in [("w1-long.jsonl", w1_long_chart), ("blobs.jsonl", blob_chart)]:
        path = os.path.join(BENCH_DIR, name)
        if os.path.exists(path):
            rows, run = read_jsonl(path)
            charts.update(draw(rows, run))
    if os.path.exists(a.peers):
        recs, run = read_jsonl(a.peers)
        charts.update(peer_charts(recs, a.peers_run or run))
    else:
        print(f"bench-charts: {a.peers} not found, no peer charts", file=sys.stderr)
    os.makedirs(a.out, exist_ok=True)
    for name, svg in charts.items():
        path = os.path.join(a.out, name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(svg)
        print(os.path.relpath(path))
    return 0 if charts else 1


if __name__ == "__main__":
    sys.exit(main())
