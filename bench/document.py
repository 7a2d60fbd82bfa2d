"""What a run prints and docs/BENCHMARKS.md: machine, versions, method and
commands, summary, target verdicts, raw numbers."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from bench import targets
from bench.fleet import BACKOFF
from bench.report import Summary

RAW_COLUMNS = (
    "rep",
    "point",
    "path",
    "rps",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "errors",
    "mb_s",
    "big_mb_s",
    "cpu_s",
    "cpu_us_per_req",
    "cpu_s_per_gib",
    "peak_rss_relay_mb",
    "peak_rss_agent_mb",
    "peak_rss_ssh_mb",
    "peak_rss_sshd_mb",
    "wall_s",
    "foreign_cores",
)


# The interleaved A/B runs behind the SSH sizes in sluice/sshconfig.py; kept
# here, with the numbers, rather than in the code.
TUNING_HISTORY = (
    "Channel window towards the relay, 256 KiB: on loopback it moved more bytes per "
    "second than 2 MiB; 192 KiB (3 rounds) made bulk ~15% slower with the p50 of small "
    "requests beside a download within noise; 128 KiB halved bulk speed.",
    "Packets of 256 KiB, up from 32 KiB (5 rounds, with malloc keeping buffers on the "
    "heap): 1 GiB download ~570 -> ~710 MB/s, relay+agent CPU 2.85 -> 2.2 s/GiB, uploads "
    "and small requests unchanged; 128 KiB fell in between.",
    "Agent receive window 1 MiB (request bodies): uploads ~160 -> ~260 MB/s on loopback; "
    "2 MiB did no better.",
)


def _md_table(grid: list[list[str]]) -> str:
    lines = ["| " + " | ".join(grid[0]) + " |", "|" + "---|" * len(grid[0])]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in grid[1:]]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _foreign(rows: list[dict[str, Any]]) -> str:
    got = sorted(float(r.get("foreign_cores", 0.0)) for r in rows)
    if not got:
        return "not measured"
    busy = sum(1 for v in got if v > 0.25)
    return (
        f"median {got[len(got) // 2]:.2f}, max {got[-1]:.2f} cores; {busy} of {len(got)} "
        "points had more than a quarter core of outside load"
    )


def _load_warning(rows: list[dict[str, Any]]) -> list[str]:
    got = sorted(float(r.get("foreign_cores", 0.0)) for r in rows)
    if not got or got[len(got) // 2] <= 0.25:
        return []
    return [
        f"**Outside load**: other processes on this machine used a median of "
        f"{got[len(got) // 2]:.2f} cores during the points (see `foreign_cores` in the raw "
        "numbers), so absolute numbers are lower and noisier than on an idle machine; "
        "ratios between paths measured back to back hold up better.",
        "",
    ]


def render(s: Summary) -> str:
    r = s.results
    plan = r["plan"]
    env = r["environment"]
    quick = r["quick"]
    out = [
        "# Benchmarks" + (" (quick check: small sizes, one repetition)" if quick else ""),
        "",
        f"Written by `{'make bench-quick' if quick else 'make bench'}` "
        f"(`python -m bench.run{' --quick' if quick else ''}`) on "
        f"{r.get('finished_at') or f'{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC'} in "
        f"{r['elapsed_s'] / 60:.1f} minutes. "
        "Do not edit by hand: run `make bench` again. Code in `bench/`.",
        "",
        *_load_warning(s.rows),
        "## Machine and versions",
        "",
        *[f"- **{k}**: {v}" for k, v in env.items()],
        "",
        "## What runs",
        "",
        "One internal API for every path: Debian's nginx (one worker) on loopback, serving a "
        "~80-byte JSON file, sparse files for downloads, WebDAV `PUT` for uploads (answered "
        "once the whole body is in) and `/slow` (`echo_sleep 1`). Four paths, all on "
        "127.0.0.1:",
        "",
        "- **direct**: client → nginx.",
        "- **openssh**: client → sshd's forwarded port → `ssh -N -R` → nginx. A private "
        "`sshd -D -f sshd_config` with its own host key and authorized_keys (no PAM, "
        "`StrictModes no`), `Ciphers aes128-gcm@openssh.com`, compression off.",
        "- **sluice-onprem**: client → relay `/v1/connections/{id}/proxy/…` → SSH tunnel → "
        "`sluice-agent run` → nginx.",
        "- **sluice-cloud**: client → relay proxy route → nginx (no tunnel): the relay's own cost.",
        "",
        "`sluice-server run` and `sluice-agent run` are separate processes configured by "
        "environment (log level warning, uvloop). CPU is `utime+stime` from "
        "`/proc/<pid>/stat` of relay + agent (Sluice) or ssh + sshd and its per-connection "
        "children (OpenSSH); peak RSS is `VmHWM`, reset before each point through "
        "`/proc/<pid>/clear_refs`. Client tools (wrk, curl) and nginx are not counted.",
        "",
        f"- Small GETs: `wrk --latency -t min(2,c) -c C -d {plan['seconds']}s --timeout 10s "
        "-s report.lua` (a `done` hook prints exact percentiles); the Sluice paths add "
        "`-H 'Authorization: Bearer <admin token>'`. *New connection per request* adds "
        "`-H 'Connection: close'` (a new client connection each time; the relay still reuses "
        "its pooled streams to the agent, as it would in production).",
        f"- Transfers: `curl -s -o /dev/null -w …` for the {s.medium} and {s.large} downloads, "
        f"`curl -T file -H 'Expect:'` (PUT) for the {s.medium} upload. MB/s is 10⁶ bytes/s.",
        f"- Mixed: the {s.large} download starts, then c=1 keep-alive GETs run for 60% of the "
        "solo download's time on the same path; the download's speed is compared with its "
        "solo speed from the same repetition.",
        f"- {plan['repetitions']} repetition(s); within each, every point runs on every path "
        "back to back (direct, openssh, sluice-onprem, sluice-cloud). Cells show the median "
        "and (min to max).",
        f"- Scale: {plan['slow']} requests at once to `/slow` through one agent (aiohttp "
        f"client, one connection each); {plan['agents']} agents as `bench.fleet` processes "
        f"({plan['per_process']} asyncssh agent sessions each, the agent's own Supervisor and "
        f"tunnel code) on a fresh relay; then SIGTERM the relay and start it again on the "
        f"same data dir. Fleet agents' backoff: `{json.dumps(BACKOFF)}`. "
        "Handshakes at once = most connection attempts (TCP connect to tunnel registered) "
        "in flight together, from the agents' timestamps.",
        "",
        "Everything — relay, agent, nginx, sshd, ssh, wrk, curl, fleet agents — shares "
        "the machine's cores, so client and backend load is part of every number. "
        "`foreign_cores` in the raw numbers is the CPU that processes *outside* the bench "
        "used during each point (from /proc/stat less the bench's own process tree): "
        + _foreign(s.rows)
        + ".",
        "",
        "## What a request through Sluice costs, and the levers in place",
        "",
        "- The relay's listener (`server/proxy/front.py`) reads a proxy request's head "
        "itself (llhttp through httptools) and answers from the socket, without aiohttp's "
        "request and response objects, routing and middlewares; requests it does not "
        "serve (the API, HEAD, chunked or 100-continue bodies) go to aiohttp's server. "
        "The relay applies the connection (URL, headers, auth) and writes the API request "
        "head in one write on a kept-alive CONNECT stream through the agent "
        "(`server/tunnel/stream_pool.py`, `server/tunnel/http1.py`; "
        "the answer is parsed by llhttp). "
        "Cloud mode writes the same head on kept-alive TCP connections from the relay; "
        "header fields stay byte pairs throughout (`server/proxy/headers.py`). "
        "Decrypted connection settings "
        "are cached for 2 s, with one read per expiry however many requests wait.",
        "- SSH: `aes128-gcm@openssh.com` first; asyncssh's hot path tuned in "
        "`sluice/ssh_tuning.py`: no automatic `SSH_MSG_IGNORE` before every packet under "
        "AEAD ciphers, the packets of one channel flush in one socket write, channel data "
        "framed with two copies instead of about twelve and decrypted straight from each "
        "read (asyncssh re-copied its whole input buffer for every packet; a packet that "
        "spans reads is joined once), one AES-GCM key schedule per key. 256 KiB receive "
        "windows towards the relay (answers; bounds how much bulk data a small answer can "
        "queue behind), shrunk to 128 KiB for a bulk answer while small answers run beside "
        "it on the same agent connection (`server/tunnel/window_share.py`), 1 MiB towards the "
        "agent (request bodies), 256 KiB packets (a "
        "quarter of the per-packet work of 32 KiB ones), glibc's malloc told to keep "
        "buffers of up to 2 MiB on the heap instead of mapping each one "
        "(`sluice/runtime.py`), uvloop, TCP_NODELAY (asyncio and uvloop set it on every "
        "TCP socket).",
        "- Answers of up to 64 KiB with a known length go to the caller in one write; larger "
        "ones stream, with body pieces that queued up joined into one write (up to 256 KiB).",
        "- What is left (`perf record` on the relay and agent; py-spy profiles with "
        "`python -m bench.run --profile DIR`): small requests are bound by the relay's "
        "single core, most of it in the Python interpreter (the relay's engine, stream pool "
        "and front, asyncssh's packet handling; no single spot dominates), the rest in "
        "system calls (one socket write each way per request); bulk "
        "transfers spend about a third in the kernel (loopback TCP), a quarter in the "
        "interpreter and a tenth in memory copies and AES-GCM.",
        "",
        "## Tuning history",
        "",
        *[f"- {line}" for line in TUNING_HISTORY],
        "",
        "## Summary",
        "",
        _md_table(s.grid()),
        "",
        "## Targets for the Sluice on-premise path",
        "",
        _md_table(
            [["target", "verdict", "measured"]]
            + [[v.name, v.verdict, v.detail] for v in targets.evaluate(s)]
        ),
        "",
        "## Scale",
        "",
        *[f"- {line}" for line in s.scale_lines()],
        "",
        "## Raw numbers",
        "",
        "Every point of every repetition (CPU is for the path's relay/agent or ssh/sshd).",
        "",
        _md_table(
            [list(RAW_COLUMNS)] + [[_fmt(row.get(c)) for c in RAW_COLUMNS] for row in s.rows]
        ),
        "",
        "Slow requests:",
        "",
        "```json",
        json.dumps(r["slow"], indent=1),
        "```",
        "",
        "Agents and restart:",
        "",
        "```json",
        json.dumps(r["fleet"], indent=1),
        "```",
        "",
    ]
    return "\n".join(out)


def text_table(s: Summary) -> str:
    """The summary and the target verdicts as the run prints them."""
    grid = s.grid()
    widths = [max(len(r[i]) for r in grid) for i in range(len(grid[0]))]
    text = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in grid]
    text.insert(1, "-+-".join("-" * w for w in widths))
    text += ["", "Targets (Sluice on-premise):"]
    text += [f"  {v.verdict:6} {v.name}: {v.detail}" for v in targets.evaluate(s)]
    text += ["", "Scale:"] + [f"  {line}" for line in s.scale_lines()]
    text += ["", f"Outside load during the points: {_foreign(s.rows)}"]
    return "\n".join(text)
