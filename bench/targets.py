"""Issue 5's targets for the Sluice on-premise path, judged on one run's medians."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.report import Summary

ONPREM = "sluice-onprem"


@dataclass(frozen=True)
class Verdict:
    name: str
    met: bool | None  # None: not measured
    detail: str

    @property
    def verdict(self) -> str:
        return "n/a" if self.met is None else ("met" if self.met else "MISSED")


def _ratio(s: Summary, name: str, point: str, metric: str, floor: float) -> Verdict:
    ours, theirs = s.median(ONPREM, point, metric), s.median("openssh", point, metric)
    if not ours or not theirs:
        return Verdict(name, None, "not measured")
    ratio = ours / theirs
    return Verdict(
        name, ratio >= floor, f"{ratio:.2f}x OpenSSH (need ≥ {floor}x): {ours:.1f} vs {theirs:.1f}"
    )


def _at_most(
    name: str,
    value: float | None,
    limit: float,
    unit: str,
    extra: str = "",
) -> Verdict:
    if value is None:
        return Verdict(name, None, "not measured")
    return Verdict(
        name,
        value <= limit,
        f"{value:.3f} {unit} (need ≤ {limit:g} {unit}, {value / limit:.2f}x the limit){extra}",
    )


def evaluate(s: Summary) -> list[Verdict]:
    m, lg = s.medium, s.large
    out = [
        _ratio(s, f"{m} download ≥ 0.8x OpenSSH MB/s", "down_medium", "mb_s", 0.8),
        _ratio(s, f"{m} upload ≥ 0.8x OpenSSH MB/s", "up_medium", "mb_s", 0.8),
    ]
    direct = s.median("direct", "get_c1", "p50_ms")
    p50 = s.median(ONPREM, "get_c1", "p50_ms")
    if direct is None or p50 is None:
        out.append(Verdict("c=1 GET p50 ≤ direct + 0.5 ms", None, "not measured"))
    else:
        added = p50 - direct
        out.append(
            Verdict(
                "c=1 GET p50 ≤ direct + 0.5 ms",
                added <= 0.5,
                f"{p50:.3f} ms = direct {direct:.3f} + {added:.3f} ms "
                f"(added {added / 0.5:.2f}x the allowed 0.5 ms)",
            )
        )
    out.append(_at_most("c=1 GET p99 ≤ 2 ms", s.median(ONPREM, "get_c1", "p99_ms"), 2, "ms"))
    out.append(_ratio(s, "c=32 GET ≥ 0.5x OpenSSH req/s", "get_c32", "rps", 0.5))
    errors = s.values(ONPREM, "get_c256", "errors")
    out.append(
        Verdict(
            "c=256 GET without errors",
            (sum(errors) == 0) if errors else None,
            f"{sum(errors):.0f} errors over {len(errors)} repetitions",
        )
    )
    for point, label in (
        ("down_large", f"{lg} download"),
        ("down_medium", f"{m} download"),
        ("up_medium", f"{m} upload"),
    ):
        ours = s.median(ONPREM, point, "cpu_s_per_gib")
        theirs = s.median("openssh", point, "cpu_s_per_gib")
        name = f"relay+agent CPU/GiB ≤ 2.5x ssh+sshd ({label})"
        if not ours or not theirs:
            out.append(Verdict(name, None, "not measured"))
            continue
        ratio = ours / theirs
        out.append(
            Verdict(
                name,
                ratio <= 2.5,
                f"{ratio:.2f}x (need ≤ 2.5x): {ours:.2f} vs {theirs:.2f} CPU s/GiB",
            )
        )
    out.append(
        _at_most(
            f"mixed: GET p50 ≤ 1 ms during {lg} download",
            s.median(ONPREM, "mixed", "p50_ms"),
            1,
            "ms",
        )
    )
    out.append(
        _at_most(
            f"mixed: GET p99 ≤ 10 ms during {lg} download",
            s.median(ONPREM, "mixed", "p99_ms"),
            10,
            "ms",
        )
    )
    solo, mixed = s.median(ONPREM, "down_large", "mb_s"), s.median(ONPREM, "mixed", "big_mb_s")
    if solo and mixed:
        out.append(
            Verdict(
                "mixed: download ≥ 0.7x solo",
                mixed / solo >= 0.7,
                f"{mixed / solo:.2f}x ({mixed:.1f} vs {solo:.1f} MB/s)",
            )
        )
    out.append(
        _at_most(
            f"agent peak RSS ≤ 80 MB during {lg} download",
            s.worst(ONPREM, "down_large", "peak_rss_agent_mb"),
            80,
            "MB",
            " (worst repetition)",
        )
    )
    fleet = s.results["fleet"]
    if fleet is not None:
        out.append(
            _at_most(
                f"relay RSS ≤ 250 MB with {fleet['agents']} agents",
                fleet["relay_rss_mb"],
                250,
                "MB",
                f" (peak {fleet['relay_hwm_mb']:.1f} MB)",
            )
        )
        out.append(
            _at_most(
                f"all {fleet['agents']} agents online ≤ 30 s after a relay restart",
                fleet["restart_all_online_s"],
                30,
                "s",
                " (from SIGTERM)",
            )
        )
    slow = s.results["slow"]
    out.append(
        Verdict(
            f"{slow['requests']} concurrent 1 s requests all succeed",
            slow["ok"] == slow["requests"],
            f"{slow['ok']}/{slow['requests']} in {slow['wall_s']:.2f} s",
        )
    )
    return out
