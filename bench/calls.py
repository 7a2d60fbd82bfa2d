"""Function calls per request in the relay and the agent: ``python -m bench.calls``.

Runs a relay and an agent of one source tree (``--tree DIR``, default this
one) in front of nginx, with ``bench/calls_site`` first on their PYTHONPATH,
and counts each process's calls (``sys.setprofile``) while ``wrk`` sends
keep-alive GETs of a small JSON answer at the given concurrency; prints the
Python and C calls per request of each process and the functions called
most. The counting slows both processes several times over: compare counts,
not timings. Counts show per-request work that profiles spread thin (a
function called a dozen times per request, a cast or a context manager on
every packet). ``--opcodes``: the bytecodes each process runs per request
too, by function and by line (``sys.settrace`` with ``f_trace_opcodes``;
about 15 times slower still, so whatever runs per second rather than per
request, such as a settings reload every 2 s, weighs more than at full speed).

``--mixed``: three counted phases in one relay and agent: c=1 GETs alone, a
download of a sparse file (``--mib``) alone, and the same download with c=1
GETs beside it for as long as it runs. Prints, per process, the calls the
mixed phase made beyond the solo download's and its GETs' own (each GET at
the c=1 phase's count): what a GET beside a download costs the download
(issue 22: a GET there cost ~3x a GET alone in CPU). Each process's
counts from the kernel come with them (``bench.proc.sched``: ``proc
run_us``, CPU µs; ``proc reads``/``writes``, system calls; ``proc
context_switches``); ``--proc`` counts only those, with the processes
unprofiled (at full speed), for CPU per GET and per MiB.

What it showed at 84b1553 (issue 28d): the extra CPU of the mixed point is
not the GETs' own but the shared window's (``server.tunnel.window_share``):
a download forced to 128 KiB windows with no GETs at all costs relay and
agent ~0.9 ms more per MiB (8 packets, 8 top-ups and ~10 wake-ups per MiB
each side instead of 4, 0.8 and ~2), paid per MiB whatever the GET rate, so
the fewer GETs per MiB, the dearer each looks. Interleaved ``bench.ab
--points down1g --sched``, 5 rounds, load 3-3.5: the download forced to the
shared window 245 MB/s (212-310) against 477 (385-602), relay 1.39 vs 0.74
ms/MiB, 24 vs 7.3 system calls and 11.4 vs 2.4 context switches per MiB.
Neither writing the top-up at once (394 vs 380 MB/s, 7 rounds) nor 64 KiB
packets with a top-up per packet (two in flight: 390 vs 363 MB/s, 42
system calls per MiB) made the shared regime cheaper; no sharing at all
gave the mixed download +26% (397 -> 501 MB/s) and GET p50 1.14 -> 1.52 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench import load
from bench.nginx import MiB, Nginx
from bench.proc import sched
from bench.stack import Relay, start_agent

SITE = Path(__file__).parent / "calls_site"
ROOT = Path(__file__).resolve().parent.parent


def per_request(text: str, requests: int, top: int) -> list[str]:
    """The summary of one process's counts file (``n name`` lines)."""
    rows = [line.split(" ", 1) for line in text.splitlines() if line]
    every = [(int(n), name) for n, name in rows]
    counted = [(n, name) for n, name in every if not name.startswith(("op ", "opline "))]
    python = sum(n for n, name in counted if not name.startswith("C "))
    native = sum(n for n, name in counted if name.startswith("C "))
    lines = [
        f"Python calls/request {python / requests:.1f}, C calls/request {native / requests:.1f}"
    ]
    lines += [f"  {n / requests:7.2f}  {name}" for n, name in counted[:top]]
    ops = [(n, name) for n, name in every if name.startswith("op ")]
    if ops:
        lines.append(f"bytecodes/request {sum(n for n, _ in ops) / requests:.1f}, by function:")
        lines += [f"  {n / requests:7.2f}  {name[3:]}" for n, name in ops[:top]]
        lines.append("by line:")
        lines += [
            f"  {n / requests:7.2f}  {name[7:]}" for n, name in every if name.startswith("opline ")
        ][:top]
    return lines


@dataclass
class _Stack:
    """A relay and an agent that count their calls (SIGUSR1/SIGUSR2), in
    front of nginx, with one connection through the agent."""

    root: Path
    relay: Relay
    pids: dict[str, int]
    base: str  # the connection's proxy URL


@contextlib.asynccontextmanager
async def _counting_stack(
    tree: Path, files: dict[str, int], profile: bool = True, opcodes: bool = False
) -> AsyncIterator[_Stack]:
    """*tree*'s relay and agent with the counting site module; *files*:
    sparse files nginx serves. *profile* False: the processes are not
    profiled (counted from outside only: ``bench.proc.sched``)."""
    root = Path(tempfile.mkdtemp(prefix="sluice-calls-", dir="/dev/shm"))
    nginx = await Nginx.start(root / "nginx", files, upload_size=MiB, real={})
    relay: Relay | None = None
    try:
        env = {"PYTHONPATH": f"{SITE}:{tree}", "SLUICE_BENCH_CALLS_DIR": str(root)}
        if opcodes:
            env["SLUICE_BENCH_CALLS_OPCODES"] = "1"
        relay = await Relay.create(
            root / "relay", **env, **({"SLUICE_BENCH_CALLS": "relay"} if profile else {})
        )
        agent_id, token = await relay.create_agent("calls")
        agent = await start_agent(
            relay,
            agent_id,
            token,
            f"127.0.0.1:{nginx.port}",
            root / "agent.log",
            **env,
            **({"SLUICE_BENCH_CALLS": "agent"} if profile else {}),
        )
        try:
            conn = await relay.create_connection("calls", nginx.base, agent_id)
            pids = {"relay": relay.pid, "agent": agent.pid}
            yield _Stack(root, relay, pids, relay.proxy_base(conn))
        finally:
            await agent.stop()
    finally:
        if relay is not None:
            await relay.close()
        await nginx.stop()
        shutil.rmtree(root, ignore_errors=True)


def _counts(text: str) -> dict[str, float]:
    return {name: int(n) for n, name in (line.split(" ", 1) for line in text.splitlines() if line)}


async def _counted(
    stack: _Stack, work: Callable[[], Awaitable[int]], profile: bool = True
) -> tuple[int, dict[str, dict[str, float]]]:
    """Both processes' counts while *work* runs (it returns its requests):
    their calls (*profile*: the site module's, between SIGUSR1 and SIGUSR2)
    and, as ``proc ...``, what the kernel counted (``bench.proc.sched``)."""
    pids = stack.pids
    for role in pids:
        (stack.root / f"calls-{role}.txt").unlink(missing_ok=True)
    before = {role: sched(pid) for role, pid in pids.items()}
    if profile:
        for pid in pids.values():
            os.kill(pid, signal.SIGUSR1)
    done = await work()
    if profile:
        for pid in pids.values():
            os.kill(pid, signal.SIGUSR2)
    got: dict[str, dict[str, float]] = {}
    for role, pid in pids.items():
        took = sched(pid) - before[role]
        got[role] = {
            "proc run_us": took.run * 1e6,
            "proc reads": took.reads,
            "proc writes": took.writes,
            "proc context_switches": took.voluntary + took.involuntary,
        }
        if profile:
            counts = stack.root / f"calls-{role}.txt"
            async with asyncio.timeout(10):
                while not counts.exists():
                    await asyncio.sleep(0.05)  # the process writes it from its handler
            got[role] |= _counts(counts.read_text())
    return done, got


async def measure(
    tree: Path, connections: int, seconds: int, top: int, opcodes: bool = False
) -> list[str]:
    async with _counting_stack(tree, {}, opcodes=opcodes) as stack:
        url = stack.base + "/small.json"
        auth = stack.relay.auth
        lua = load.write_lua(stack.root)
        # Warm: pools, caches, memos.
        await load.wrk(url, lua=lua, connections=connections, seconds=1, headers=auth)
        errors = 0

        async def gets() -> int:
            nonlocal errors
            got = await load.wrk(
                url, lua=lua, connections=connections, seconds=seconds, headers=auth
            )
            errors = got.errors
            return got.requests

        requests, counted = await _counted(stack, gets)
        out = [f"c={connections}: {requests} requests, {errors} errors"]
        for role, counts in counted.items():
            calls = {name: n for name, n in counts.items() if not name.startswith("proc ")}
            text = "".join(f"{int(n)} {name}\n" for name, n in calls.items())
            out.append(f"{role}: " + "\n".join(per_request(text, requests, top)))
        return out


def mixed_extra(
    mixed: Mapping[str, float],
    solo: Mapping[str, float],
    alone: Mapping[str, float],
    gets_ratio: float,
) -> dict[str, float]:
    """Per name, the mixed phase's count beyond the solo download's and its
    GETs' own (*alone*'s, scaled by *gets_ratio*: GETs beside / GETs alone)."""
    return {
        name: mixed.get(name, 0) - solo.get(name, 0) - alone.get(name, 0) * gets_ratio
        for name in set(mixed) | set(solo) | set(alone)
    }


def _python(counts: Mapping[str, float]) -> float:
    return sum(n for name, n in counts.items() if not name.startswith(("C ", "proc ")))


async def measure_mixed(tree: Path, mib: int, top: int, proc_only: bool = False) -> list[str]:
    """The calls of GETs beside a download beyond those of each alone (``--mixed``)."""
    profile = not proc_only
    async with _counting_stack(tree, {"big.bin": mib * MiB}, profile) as stack:
        small = stack.base + "/small.json"
        big = stack.base + "/files/big.bin"
        auth = stack.relay.auth
        lua = load.write_lua(stack.root)
        await load.wrk(small, lua=lua, connections=1, seconds=1, headers=auth)
        await load.download(big, auth)

        async def alone() -> int:
            got = await load.wrk(small, lua=lua, connections=1, seconds=3, headers=auth)
            return got.requests

        speeds: list[float] = []

        async def solo() -> int:
            moved = await load.download(big, auth)
            assert moved.bytes == mib * MiB, moved
            speeds.append(moved.mb_per_s)
            return 0

        async def beside() -> int:
            task = asyncio.ensure_future(load.download(big, auth))
            gets = 0
            while not task.done():
                got = await load.wrk(small, lua=lua, connections=1, seconds=1, headers=auth)
                gets += got.requests
            moved = await task
            assert moved.bytes == mib * MiB, moved
            speeds.append(moved.mb_per_s)
            return gets

        c1_gets, c1 = await _counted(stack, alone, profile)
        _, down = await _counted(stack, solo, profile)
        gets, mixed = await _counted(stack, beside, profile)
        out = [
            f"--mixed: {mib} MiB download, alone {speeds[0]:.0f} MB/s, beside {gets} c=1 "
            f"GETs {speeds[1]:.0f} MB/s ({gets / mib:.2f} GETs/MiB); c=1 alone {c1_gets} GETs"
        ]
        for role in stack.pids:
            extra = mixed_extra(mixed[role], down[role], c1[role], gets / c1_gets)
            if profile:
                out.append(
                    f"{role}: Python calls per GET alone {_python(c1[role]) / c1_gets:.1f}; "
                    f"per MiB of the solo download {_python(down[role]) / mib:.1f}; beyond "
                    f"both, per GET beside it {_python(extra) / max(gets, 1):.1f}"
                )
            run = "proc run_us"
            out.append(
                f"{role}: CPU µs per GET alone {c1[role].get(run, 0) / c1_gets:.1f}; per MiB "
                f"of the solo download {down[role].get(run, 0) / mib:.1f}; beyond both, per "
                f"GET beside it {extra.get(run, 0) / max(gets, 1):.1f}"
            )
            ranked = sorted(extra.items(), key=lambda kv: -abs(kv[1]))[:top]
            out += [
                f"  {n / max(gets, 1):8.2f}/GET  alone {c1[role].get(name, 0) / c1_gets:7.2f}"
                f"/GET  solo {down[role].get(name, 0) / mib:7.2f}/MiB  {name}"
                for name, n in ranked
            ]
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--top", type=int, default=40, help="functions listed per process")
    parser.add_argument("--mixed", action="store_true", help="GETs beside a download (above)")
    parser.add_argument("--mib", type=int, default=256, help="the --mixed download's size")
    parser.add_argument("--proc", action="store_true", help="--mixed: CPU and system calls only")
    parser.add_argument(
        "--opcodes", action="store_true", help="bytecodes run per request, by function and line"
    )
    args = parser.parse_args()
    if args.mixed:
        got = asyncio.run(measure_mixed(args.tree.resolve(), args.mib, args.top, args.proc))
        print("\n".join(got))
        return
    lines = asyncio.run(
        measure(args.tree.resolve(), args.connections, args.seconds, args.top, args.opcodes)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
