"""``sluice-agent status``: ask a running agent's health endpoint how it is doing.

Reads /readyz and /metrics from the address in health_listen and prints a
short summary. Exit status: 0 when the tunnel is up, 1 when it is not, 2 when
the health endpoint cannot be reached (or is disabled).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, TypedDict

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from sluice.addresses import HostPort

EXIT_READY = 0
EXIT_NOT_READY = 1
EXIT_UNREACHABLE = 2

DEFAULT_TIMEOUT = 5.0

# A wildcard listen address is reached through loopback.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class HealthUnreachable(Exception):
    """The health endpoint did not answer, or answered something unexpected."""


class StatusSnapshot(TypedDict):
    ready: bool
    readyz: dict[str, Any]
    metrics: str


async def fetch_status(host: str, port: int, timeout: float) -> StatusSnapshot:
    """GET /readyz and /metrics; raise HealthUnreachable when either fails."""
    address = HostPort(_WILDCARDS.get(host, host), port)
    base = f"http://{address}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(f"{base}/readyz") as resp:
                if resp.status not in (200, 503):
                    raise HealthUnreachable(
                        f"{base}/readyz answered HTTP {resp.status}; "
                        "is health_listen pointing at a Sluice agent?"
                    )
                readyz = await resp.json()
                ready = resp.status == 200
            async with session.get(f"{base}/metrics") as resp:
                resp.raise_for_status()
                metrics = await resp.text()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise HealthUnreachable(
            f"cannot reach the agent's health endpoint at {base}: {_reason(exc)}"
        ) from None
    if not isinstance(readyz, dict):
        raise HealthUnreachable(f"{base}/readyz did not answer a JSON object")
    return StatusSnapshot(ready=ready, readyz=readyz, metrics=metrics)


def _reason(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno:
        # asyncio's own text ("Connect call failed (...)") repeats the address.
        return os.strerror(exc.os_error.errno)
    return str(exc) or type(exc).__name__


def render_status(readyz: dict[str, Any], metrics_text: str) -> str:
    """A short human summary of one /readyz answer and one /metrics scrape."""
    m = _Metrics(metrics_text)
    ready = readyz.get("status") == "ready"
    state = str(readyz.get("state", "unknown"))
    relay = readyz.get("relay")
    since = _duration(readyz.get("seconds_in_state"))
    version = m.label("sluice_agent_info", "version")

    title = f"sluice-agent {version}" if version else "sluice-agent"
    lines = [f"{title}: {'READY' if ready else 'NOT READY'}"]
    if ready:
        tunnel = f"up to relay {relay}" if relay else "up"
    else:
        tunnel = state.replace("_", " ")
        if relay:
            tunnel += f" (last up to relay {relay})"
    if since:
        tunnel += f", for {since}"
    rows: list[tuple[str, str]] = [("tunnel", tunnel)]
    if not ready and readyz.get("last_error"):
        rows.append(("last error", str(readyz["last_error"])))
    rows += [
        ("reconnects", _count(m.value("sluice_agent_reconnects_total"))),
        (
            "streams",
            f"{_count(m.value('sluice_agent_streams_open'))} open, "
            f"{_count(m.value('sluice_agent_streams_total'))} total",
        ),
        (
            "traffic",
            f"{_bytes(m.value('sluice_agent_bytes_total', direction='up'))} up, "
            f"{_bytes(m.value('sluice_agent_bytes_total', direction='down'))} down",
        ),
        ("denied", _count(m.value("sluice_agent_denied_total"))),
        ("connect failures", _count(m.value("sluice_agent_connect_failures_total"))),
        ("connect latency", _latency(m)),
    ]
    width = max(len(name) for name, _ in rows) + 1
    lines += [f"  {name + ':':<{width}} {text}" for name, text in rows]
    return "\n".join(lines)


def status_main(health_listen: str, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Print the running agent's status; return the exit code (0 ready, 1 not, 2 unreachable)."""
    if health_listen.strip().lower() == "off":
        print(
            "sluice-agent status: the health endpoint is disabled (health_listen = off); "
            "set health_listen (SLUICE_AGENT_HEALTH_LISTEN) to host:port and restart the agent",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    try:
        address = HostPort.parse(health_listen)
    except ValueError as exc:
        print(f"sluice-agent status: health_listen: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        snapshot = asyncio.run(fetch_status(address.host, address.port, timeout))
    except HealthUnreachable as exc:
        print(
            f"sluice-agent status: {exc}\n"
            "The agent may not be running, or it listens elsewhere: check its health_listen "
            "setting (SLUICE_AGENT_HEALTH_LISTEN) against the address above.",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    print(render_status(snapshot["readyz"], snapshot["metrics"]))
    return EXIT_READY if snapshot["ready"] else EXIT_NOT_READY


class _Metrics:
    """Sample lookup over one Prometheus text scrape."""

    def __init__(self, text: str) -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = []
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    self.samples.append((sample.name, dict(sample.labels), sample.value))
        except ValueError:
            # A garbled scrape still leaves /readyz to report on.
            pass

    def value(self, name: str, **labels: str) -> float | None:
        for sample_name, sample_labels, value in self.samples:
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
                return value
        return None

    def label(self, name: str, label: str) -> str | None:
        for sample_name, sample_labels, _value in self.samples:
            if sample_name == name and label in sample_labels:
                return sample_labels[label]
        return None

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """(upper bound, cumulative count) pairs of a histogram, sorted by bound."""
        found = [
            (float(labels["le"]), value)
            for sample_name, labels, value in self.samples
            if sample_name == f"{name}_bucket" and "le" in labels
        ]
        return sorted(found)


def estimate_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket.

    Returns None without observations. When the rank falls in the +Inf
    bucket the answer is the highest finite bound (a lower limit).
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            share = (rank - lower_count) / (count - lower_count)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def _latency(m: _Metrics) -> str:
    count = m.value("sluice_agent_connect_seconds_count")
    total = m.value("sluice_agent_connect_seconds_sum")
    if not count or total is None:
        return "no connects yet"
    p50 = estimate_quantile(0.5, m.buckets("sluice_agent_connect_seconds"))
    parts = []
    if p50 is not None:
        parts.append(f"p50 ~{_ms(p50)}")
    parts.append(f"mean {_ms(total / count)}")
    noun = "connect" if count == 1 else "connects"
    return ", ".join(parts) + f" over {_count(count)} {noun}"


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:,.0f} ms"


def _count(value: float | None) -> str:
    return "?" if value is None else f"{int(value):,}"


def _bytes(value: float | None) -> str:
    if value is None:
        return "?"
    size = float(value)
    if size < 1024:
        return f"{int(size)} B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} TiB"


def _duration(seconds: Any) -> str | None:
    if not isinstance(seconds, int | float) or seconds < 0:
        return None
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
