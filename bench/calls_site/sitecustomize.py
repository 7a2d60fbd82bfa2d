"""Loaded by ``bench.calls`` into a relay or agent (first on PYTHONPATH).

With SLUICE_BENCH_CALLS set (the role's name): SIGUSR1 starts counting the
main thread's function calls (``sys.setprofile``: Python functions by name,
file and line, C functions by qualified name); SIGUSR2 stops and writes the
counts, most first, to SLUICE_BENCH_CALLS_DIR/calls-ROLE.txt. Nothing
happens without the variable. (Not imported by Sluice itself.)

The same file also gets the process's own counts between the two signals,
as lines named ``proc ...``: its threads' CPU time (``run_us``, from
``/proc/self/task/*/schedstat``), its read and write system calls and its
context switches. With SLUICE_BENCH_CALLS_PROFILE=off only those: no
``sys.setprofile``, so the process runs at its own speed (``bench.calls
--mixed --proc``).
"""

from __future__ import annotations

import collections
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

_ROLE = os.environ.get("SLUICE_BENCH_CALLS")
_PROFILE = os.environ.get("SLUICE_BENCH_CALLS_PROFILE", "on") != "off"


def proc_counts() -> dict[str, int]:
    """This process's CPU µs, read/write system calls and context switches so far."""
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    status = dict(
        line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines()
    )
    run_ns = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            run_ns += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            continue  # a thread gone meanwhile
    return {
        "proc run_us": run_ns // 1000,
        "proc reads": int(io["syscr"]),
        "proc writes": int(io["syscw"]),
        "proc context_switches": int(status["voluntary_ctxt_switches"])
        + int(status["nonvoluntary_ctxt_switches"]),
    }


def _install(role: str, out: Path) -> None:
    counts: collections.Counter[str] = collections.Counter()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            where = "/".join(code.co_filename.split("/")[-2:])
            counts[f"{code.co_name} ({where}:{code.co_firstlineno})"] += 1
        elif event == "c_call":
            counts[f"C {getattr(arg, '__qualname__', arg)}"] += 1

    base: dict[str, int] = {}

    def start(signum: int, frame: object) -> None:
        counts.clear()
        base.clear()
        base.update(proc_counts())
        if _PROFILE:
            sys.setprofile(profile)
        # For whoever waits to send what is to be counted (the handler runs
        # at the process's next bytecode, not when the signal is sent).
        (out / f"calls-{role}.started").touch()

    def stop(signum: int, frame: object) -> None:
        sys.setprofile(None)
        for name, n in proc_counts().items():
            counts[name] = n - base.get(name, 0)
        lines = [f"{n} {name}\n" for name, n in counts.most_common()]
        # Whole or not at all, for a reader that waits for the file.
        part = out / f"calls-{role}.txt.part"
        part.write_text("".join(lines))
        part.replace(out / f"calls-{role}.txt")

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


if _ROLE:
    _install(_ROLE, Path(os.environ.get("SLUICE_BENCH_CALLS_DIR", ".")))
