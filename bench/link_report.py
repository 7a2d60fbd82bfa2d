"""The long-link part of the report: a table per round trip, issue 22's
targets judged at the worst round trip, and a plot of throughput against
round trip (SVG, drawn here: no plotting library)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.long_link import PATHS

Row = dict[str, Any]
DASH = "\u2013"
ONPREM = "sluice-onprem"


class LinkSummary:
    """Medians over repetitions of the long-link rows."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.plan: dict[str, Any] = results["plan"]
        self.rows: list[Row] = results["rows"]
        self.rtts: list[int] = list(self.plan["rtts_ms"])

    def values(self, rtt: int, path: str, point: str, metric: str) -> list[float]:
        return [
            float(r[metric])
            for r in self.rows
            if r["rtt_ms"] == rtt and r["path"] == path and r["point"] == point and metric in r
        ]

    def median(self, rtt: int, path: str, point: str, metric: str) -> float | None:
        got = self.values(rtt, path, point, metric)
        return statistics.median(got) if got else None

    def cell(self, rtt: int, path: str, point: str, metric: str, fmt: str) -> str:
        got = self.values(rtt, path, point, metric)
        if not got:
            return DASH
        mid = format(statistics.median(got), fmt)
        if len(got) == 1:
            return mid
        return f"{mid} ({format(min(got), fmt)}{DASH}{format(max(got), fmt)})"

    def grid(self) -> list[list[str]]:
        size = f"{self.plan['size'] // (1024 * 1024)} MiB"
        large = _size_name(self.plan.get("large", 0))
        lines = (
            (f"{size} download MB/s", "down", "mb_s", ".1f"),
            (f"{size} upload MB/s", "up", "mb_s", ".1f"),
            (f"{large} download MB/s (one run)", "down_1g", "mb_s", ".1f"),
            (f"{large} upload MB/s (one run)", "up_1g", "mb_s", ".1f"),
            ("c=1 GET beside a download, p50 ms", "beside", "p50_ms", ".1f"),
            ("c=1 GET beside a download, p99 ms", "beside", "p99_ms", ".1f"),
            ("the download beside the GETs, MB/s", "beside", "big_mb_s", ".1f"),
            ("fresh caller's GET, p50 ms", "fresh", "p50_ms", ".1f"),
            (
                f"the delay line's CPU, s per GiB of the {size} download",
                "down",
                "line_cpu_s_per_gib",
                ".2f",
            ),
        )
        out = [["round trip", "metric", *PATHS, "Sluice ÷ OpenSSH", "Sluice ÷ direct"]]
        for rtt in self.rtts:
            first = True
            for label, point, metric, fmt in lines:
                if not any(r["point"] == point for r in self.rows):
                    continue  # (no large transfers in this plan)
                cells = [self.cell(rtt, p, point, metric, fmt) for p in PATHS]
                ratios = [DASH, DASH]
                if metric == "mb_s":
                    ours = self.median(rtt, ONPREM, point, metric)
                    for i, other in enumerate(("openssh", "direct")):
                        theirs = self.median(rtt, other, point, metric)
                        if ours and theirs:
                            ratios[i] = f"{ours / theirs:.2f}x"
                out.append([f"{rtt} ms" if first else "", label, *cells, *ratios])
                first = False
        return out

    # -- targets ------------------------------------------------------------
    def verdicts(self) -> list[tuple[str, bool | None, str]]:
        """(target, met, worst case and every round trip) per target of issue 22."""
        out: list[tuple[str, bool | None, str]] = []
        for point, what in (("down", "download"), ("up", "upload")):
            for other, floor in (("openssh", 3.0), ("direct", 0.5)):
                # The worse of the two sizes at each round trip.
                ratios: dict[int, float] = {}
                for rtt in self.rtts:
                    for size_point in (point, f"{point}_1g"):
                        ours = self.median(rtt, ONPREM, size_point, "mb_s")
                        theirs = self.median(rtt, other, size_point, "mb_s")
                        if ours and theirs:
                            ratios[rtt] = min(ratios.get(rtt, ours / theirs), ours / theirs)
                name = f"{what} ≥ {floor:g}x {'OpenSSH' if other == 'openssh' else 'direct'}"
                out.append(_worst_ratio(name, ratios, floor))
        for metric, label, limit in (
            ("p50_ms", "GET beside a download p50 ≤ RTT + 5 ms", lambda rtt: rtt + 5.0),
            ("p99_ms", "GET beside a download p99 ≤ 2 RTT + 10 ms", lambda rtt: 2 * rtt + 10.0),
        ):
            out.append(self._latency(label, "beside", metric, limit))
        out.append(self._latency("fresh caller's GET ≤ RTT + 3 ms", "fresh", "p50_ms", _plus3))
        return out

    def _latency(
        self, name: str, point: str, metric: str, limit: Any
    ) -> tuple[str, bool | None, str]:
        over: dict[int, float] = {}
        parts = []
        for rtt in self.rtts:
            got = self.median(rtt, ONPREM, point, metric)
            if got is None:
                continue
            allowed = float(limit(rtt))
            over[rtt] = got - allowed
            # The direct path through the same line, where measured: a limit
            # it misses as well is the machine's (the line and the processes
            # beside it share two cores), which the verdict still counts.
            direct = self.median(rtt, "direct", point, metric)
            beside = f"; direct {direct:.1f}" if direct is not None else ""
            parts.append(f"{rtt} ms: {got:.1f} (limit {allowed:g}{beside})")
        if not over:
            return (name, None, "not measured")
        worst = max(over, key=lambda r: over[r])
        met: bool | None = over[worst] <= 0
        head = f"worst at {worst} ms: {'within' if met else 'over'} by {abs(over[worst]):.1f} ms"
        ended = [
            r
            for r in self.rows
            if r["point"] == point and r["path"] == ONPREM and r.get("overlapped") is False
        ]
        if ended:
            # GETs after the download ended measure an idle link: the figure
            # is better than the target means, so it judges nothing.
            met = None
            head += f"; the download ended before the GETs in {len(ended)} run(s): not judged"
        return (name, met, head + "; " + ", ".join(parts))


def _size_name(size: int) -> str:
    if size and size % (1 << 30) == 0:
        return f"{size >> 30} GiB"
    return f"{size >> 20} MiB"


def _plus3(rtt: int) -> float:
    return rtt + 3.0


def _worst_ratio(name: str, ratios: dict[int, float], floor: float) -> tuple[str, bool | None, str]:
    if not ratios:
        return (name, None, "not measured")
    worst = min(ratios, key=lambda r: ratios[r])
    met = ratios[worst] >= floor
    detail = (
        f"worst {ratios[worst]:.2f}x at {worst} ms ({ratios[worst] / floor:.2f} of the target); "
        + ", ".join(f"{rtt} ms: {ratio:.2f}x" for rtt, ratio in ratios.items())
    )
    return (name, met, detail)


# -- the plot ------------------------------------------------------------------
@dataclass(frozen=True)
class _Series:
    path: str
    point: str
    colour: str
    dash: str


_COLOURS = {"direct": "#4d4d4d", "openssh": "#1f77b4", "sluice-onprem": "#d62728"}


def svg(summary: LinkSummary, title: str) -> str:
    """Throughput (log scale) against round trip, download solid, upload dashed."""
    series = [
        _Series(path, point, _COLOURS[path], "" if point == "down" else "6,4")
        for path in PATHS
        for point in ("down", "up")
    ]
    width, height = 720, 400
    left, right, top, bottom = 70, 230, 40, 50
    rtts = summary.rtts
    values = [
        v
        for s in series
        for rtt in rtts
        if (v := summary.median(rtt, s.path, s.point, "mb_s")) is not None and v > 0
    ]
    if not values or not rtts:
        return '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>\n'
    import math

    lo = 10 ** math.floor(math.log10(min(values)))
    hi = 10 ** math.ceil(math.log10(max(values)))
    x_max = max(rtts) * 1.05
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(rtt: float) -> float:
        return left + plot_w * rtt / x_max

    def y(v: float) -> float:
        return top + plot_h * (1 - (math.log10(v) - math.log10(lo)) / math.log10(hi / lo))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14">{title}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>',
    ]
    decade = lo
    while decade <= hi * 1.001:
        for mult in (1, 2, 5):
            v = decade * mult
            if v > hi * 1.001:
                break
            parts.append(
                f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + plot_w}" y2="{y(v):.1f}" '
                f'stroke="#dddddd"/>'
            )
            parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        decade *= 10
    for rtt in rtts:
        parts.append(
            f'<text x="{x(rtt):.1f}" y="{top + plot_h + 18}" text-anchor="middle">{rtt}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 10}" text-anchor="middle">'
        "round trip, ms</text>"
    )
    parts.append(
        f'<text x="16" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 16 {top + plot_h / 2:.1f})">MB/s (log scale)</text>'
    )
    for i, s in enumerate(series):
        points = [
            (x(rtt), y(v))
            for rtt in rtts
            if (v := summary.median(rtt, s.path, s.point, "mb_s")) is not None and v > 0
        ]
        if points:
            dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
            coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(
                f'<polyline points="{coords}" fill="none" stroke="{s.colour}" '
                f'stroke-width="2"{dash}/>'
            )
            parts += [
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{s.colour}"/>'
                for px, py in points
            ]
        ly = top + 10 + i * 20
        lx = left + plot_w + 15
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        parts.append(
            f'<line x1="{lx}" y1="{ly}" x2="{lx + 30}" y2="{ly}" stroke="{s.colour}" '
            f'stroke-width="2"{dash}/>'
        )
        label = f"{s.path} {'download' if s.point == 'down' else 'upload'}"
        parts.append(f'<text x="{lx + 36}" y="{ly + 4}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
