"""A run's rows summarised: medians with min to max over repetitions."""

from __future__ import annotations

import statistics
from typing import Any

DASH = "\u2013"  # en dash: ranges and empty cells
PATHS = ("direct", "openssh", "sluice-onprem", "sluice-cloud")
Row = dict[str, Any]


def _mib(size: int) -> str:
    return f"{size // (1024 * 1024)} MiB" if size < 1024**3 else f"{size // 1024**3} GiB"


class Summary:
    """Medians with min to max over repetitions, from the rows a run recorded."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self.rows: list[Row] = results["rows"]
        plan = results["plan"]
        self.medium, self.large = _mib(plan["medium"]), _mib(plan["large"])

    def values(self, path: str, point: str, metric: str) -> list[float]:
        return [
            float(r[metric])
            for r in self.rows
            if r["path"] == path and r["point"] == point and metric in r
        ]

    def median(self, path: str, point: str, metric: str) -> float | None:
        got = self.values(path, point, metric)
        return statistics.median(got) if got else None

    def worst(self, path: str, point: str, metric: str) -> float | None:
        got = self.values(path, point, metric)
        return max(got) if got else None

    def cell(self, path: str, point: str, metric: str, fmt: str) -> str:
        got = self.values(path, point, metric)
        if not got:
            return DASH
        mid = format(statistics.median(got), fmt)
        if len(got) == 1:
            return mid
        return f"{mid} ({format(min(got), fmt)}{DASH}{format(max(got), fmt)})"

    # -- the summary table ---------------------------------------------------
    def lines(self) -> list[tuple[str, str, str, str]]:
        """(section, metric label, point, metric[:fmt]) rows of the summary."""
        m, lg = self.medium, self.large
        out = []
        for point, label in (
            ("get_c1", "keep-alive GET c=1"),
            ("get_c32", "keep-alive GET c=32"),
            ("get_c256", "keep-alive GET c=256"),
            ("new_c1", "new connection per GET c=1"),
            ("new_c32", "new connection per GET c=32"),
        ):
            out += [
                (label, "req/s", point, "rps:.0f"),
                (label, "p50 ms", point, "p50_ms:.3f"),
                (label, "p99 ms", point, "p99_ms:.3f"),
                (label, "max ms", point, "max_ms:.1f"),
                (label, "errors", point, "errors:.0f"),
                (label, "CPU µs/req (relay+agent | ssh+sshd)", point, "cpu_us_per_req:.0f"),
            ]
        for point, label in (
            ("down_medium", f"{m} download"),
            ("up_medium", f"{m} upload"),
            ("down_large", f"{lg} download"),
        ):
            out += [
                (label, "MB/s", point, "mb_s:.1f"),
                (label, "CPU s/GiB (relay+agent | ssh+sshd)", point, "cpu_s_per_gib:.2f"),
                (label, "errors", point, "errors:.0f"),
            ]
        for role in ("relay", "agent", "ssh", "sshd"):
            out.append(
                (
                    f"peak RSS during {lg} download",
                    f"{role} MB",
                    "down_large",
                    f"peak_rss_{role}_mb:.1f",
                )
            )
        label = f"mixed: c=1 GETs during {lg} download"
        out += [
            (label, "GET p50 ms", "mixed", "p50_ms:.3f"),
            (label, "GET p99 ms", "mixed", "p99_ms:.3f"),
            (label, "GET max ms", "mixed", "max_ms:.1f"),
            (label, "download MB/s", "mixed", "big_mb_s:.1f"),
        ]
        return out

    def grid(self) -> list[list[str]]:
        rows = [["", "metric", *PATHS]]
        last = ""
        for section, label, point, spec in self.lines():
            metric, fmt = spec.split(":")
            cells = [self.cell(p, point, metric, fmt) for p in PATHS]
            if all(c == DASH for c in cells):
                continue
            rows.append([section if section != last else "", label, *cells])
            last = section
        ratio_row = ["", "download vs solo"]
        for path in PATHS:
            solo = self.median(path, "down_large", "mb_s")
            mixed = self.median(path, "mixed", "big_mb_s")
            ratio_row.append(f"{mixed / solo:.2f}x" if solo and mixed else DASH)
        rows.append(ratio_row)
        return rows

    def scale_lines(self) -> list[str]:
        slow, fleet = self.results["slow"], self.results["fleet"]
        lines = [
            f"{slow['requests']} concurrent 1 s requests through one agent: {slow['ok']} ok, "
            f"failures {slow['failures'] or 'none'}, all done in {slow['wall_s']:.2f} s "
            f"(p50 {slow['p50_s']:.2f} s, p99 {slow['p99_s']:.2f} s, max {slow['max_s']:.2f} s); "
            f"relay+agent CPU {slow['cpu_s']:.2f} s; peak RSS "
            + ", ".join(f"{k} {v:.1f} MB" for k, v in slow["peak_rss_mb"].items()),
        ]
        idle = self.results.get("idle_rss_mb")
        if idle:
            lines.append(
                "RSS at rest, before any load: "
                + ", ".join(f"{k} {v:.1f} MB" for k, v in idle.items())
            )
        if fleet is None:
            return [*lines, "agents and restart: not run (--skip-scale)"]
        return [
            *lines,
            f"{fleet['agents']} agents ({fleet['processes']} processes of {fleet['per_process']}"
            f"): all online {fleet['connect_all_s']:.1f} s after start, relay CPU "
            f"{fleet['relay_cpu_connect_s']:.1f} s; relay RSS {fleet['relay_rss_idle_mb']:.1f} MB "
            f"idle -> {fleet['relay_rss_mb']:.1f} MB ({fleet['relay_rss_per_agent_kb']:.0f} KiB "
            f"per agent, peak {fleet['relay_hwm_mb']:.1f} MB); most handshakes at once "
            f"{fleet['handshakes_at_once_connect']}",
            f"relay restart under {fleet['agents']} agents: stop {fleet['relay_stop_s']:.1f} s, "
            f"healthy {fleet['relay_start_s']:.1f} s after spawn, all online "
            f"{fleet['restart_all_online_s']:.1f} s after SIGTERM "
            f"({fleet['restart_online_after_ready_s']:.1f} s after /healthz); most handshakes at "
            f"once {fleet['handshakes_at_once_restart']}; {fleet['attempts']} attempts, "
            f"{fleet['failed_attempts']} failed; median successful handshake "
            f"{fleet['handshake_median_s'] * 1000:.0f} ms",
        ]

    def broken(self) -> list[str]:
        """Paths that did not work at all (not targets missed): for --quick in CI."""
        out = []
        for row in self.rows:
            if row["point"] in ("get_c1", "down_medium", "up_medium", "down_large") and row.get(
                "errors"
            ):
                out.append(f"{row['path']} {row['point']} (rep {row['rep']})")
        slow = self.results["slow"]
        if slow["ok"] != slow["requests"]:
            out.append(f"slow requests: {slow['requests'] - slow['ok']} failed")
        return out
