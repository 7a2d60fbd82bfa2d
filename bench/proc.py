"""Child processes for the bench: start, wait for, stop, and measure them.

CPU and memory come from /proc: ``utime + stime`` of a process and its
descendants (sshd serves each connection from a child), ``VmRSS`` and
``VmHWM``. Writing ``5`` to ``/proc/<pid>/clear_refs`` resets the high-water
mark, so each measurement point gets its own peak.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit() -> int:
    """Children inherit this: 1,000 tunnels and 1,000 streams need the room."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat_fields(int(entry.name))[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def process_tree(pid: int) -> list[int]:
    """*pid* and all its descendants (bounded: a few levels, as sshd has)."""
    tree, frontier = [pid], [pid]
    for _ in range(4):
        frontier = [c for p in frontier for c in _children(p)]
        tree.extend(frontier)
        if not frontier:
            break
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes and their descendants, in seconds."""
    total = 0
    for root in pids:
        for pid in process_tree(root):
            try:
                fields = _stat_fields(pid)
            except OSError:
                continue
            # Fields 14 and 15 of stat (1-based), after pid and comm.
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def write_calls(pids: list[int]) -> int:
    """Write system calls (``syscw`` of /proc/<pid>/io: write, writev; not
    send) made by these processes and their descendants; those it may not
    read count 0."""
    total = 0
    for root in pids:
        for pid in process_tree(root):
            try:
                text = Path(f"/proc/{pid}/io").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("syscw:"):
                    total += int(line.split()[1])
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (user..steal from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def own_seconds() -> float:
    """CPU of this process and everything it started, running or reaped."""
    total = 0
    for pid in process_tree(os.getpid()):
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        # utime, stime, cutime, cstime: reaped children land in their parent's c*time.
        total += sum(int(f) for f in fields[11:15])
    return total / CLOCK_TICKS


class ForeignLoad:
    """How much CPU processes outside the bench took (other jobs on the machine)."""

    def __init__(self) -> None:
        self._busy = machine_busy_seconds()
        self._own = own_seconds()
        self._at = time.monotonic()

    def cores(self) -> float:
        """Average cores used by others since this object was made."""
        wall = time.monotonic() - self._at
        others = (machine_busy_seconds() - self._busy) - (own_seconds() - self._own)
        return max(0.0, others / wall) if wall > 0 else 0.0


@dataclass(frozen=True)
class Sched:
    """What the scheduler and the kernel counted for a process tree, summed
    over its threads (``/proc/<pid>/task/*/schedstat``, ``status``, ``io``):
    seconds on a CPU, seconds runnable but waiting for one, context switches
    (voluntary: it blocked; involuntary: it was preempted) and read/write
    system calls (``syscr``/``syscw``: read(2), write(2) and their vector
    forms; not recvfrom/sendto)."""

    run: float = 0.0
    wait: float = 0.0
    voluntary: int = 0
    involuntary: int = 0
    reads: int = 0
    writes: int = 0

    def __sub__(self, other: Sched) -> Sched:
        return Sched(
            self.run - other.run,
            self.wait - other.wait,
            self.voluntary - other.voluntary,
            self.involuntary - other.involuntary,
            self.reads - other.reads,
            self.writes - other.writes,
        )


def _status_counts(pid: int) -> tuple[int, int]:
    voluntary = involuntary = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "voluntary_ctxt_switches":
            voluntary = int(value)
        elif key == "nonvoluntary_ctxt_switches":
            involuntary = int(value)
    return voluntary, involuntary


def sched(root: int) -> Sched:
    """The scheduler's and the kernel's counts for *root* and its descendants
    (processes gone in between count as nothing)."""
    run = wait = 0
    voluntary = involuntary = reads = writes = 0
    for pid in process_tree(root):
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    on_cpu, queued, _ = (task / "schedstat").read_text().split()
                    run += int(on_cpu)
                    wait += int(queued)
            v, n = _status_counts(pid)
            io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        except (OSError, ValueError):
            continue
        voluntary += v
        involuntary += n
        reads += int(io.get("syscr", 0))
        writes += int(io.get("syscw", 0))
    return Sched(run / 1e9, wait / 1e9, voluntary, involuntary, reads, writes)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of one process, in KiB (0 when it is gone)."""
    out = {"VmRSS": 0, "VmHWM": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in out:
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0; our own processes)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Child:
    """A started process with its log file."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __repr__(self) -> str:
        return f"<Child {self.name} pid={self.pid} rc={self.proc.returncode}>"

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then SIGKILL after *timeout*; returns the exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            return await self.proc.wait()


async def spawn(
    name: str,
    args: list[str],
    *,
    log: Path,
    env: dict[str, str] | None = None,
    stdout_pipe: bool = False,
) -> Child:
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout_pipe else out,
            stderr=out,
            start_new_session=True,
        )
    return Child(name, proc, log)


async def wait_until(
    what: str,
    check: Callable[[], Awaitable[bool]],
    *,
    timeout: float,
    interval: float = 0.05,
    child: Child | None = None,
) -> float:
    """Poll *check* until true; returns seconds taken. Raises naming *what*."""
    began = time.monotonic()
    deadline = began + timeout
    while True:
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            if await check():
                return time.monotonic() - began
        if child is not None and child.proc.returncode is not None:
            raise RuntimeError(
                f"{child.name} exited ({child.proc.returncode}) while waiting "
                f"for {what}:\n{child.tail()}"
            )
        if time.monotonic() > deadline:
            extra = f"\n{child.tail()}" if child else ""
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}{extra}")
        await asyncio.sleep(interval)


async def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def run_tool(
    args: list[str],
    timeout: float,
    env: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    """Run a command to completion (killed after *timeout*); (rc, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
