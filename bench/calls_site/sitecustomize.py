"""Loaded by ``bench.calls`` into a relay or agent (first on PYTHONPATH).

With SLUICE_BENCH_CALLS set (the role's name): SIGUSR1 starts counting the
main thread's function calls (``sys.setprofile``: Python functions by name,
file and line, C functions by qualified name); SIGUSR2 stops and writes the
counts, most first, to SLUICE_BENCH_CALLS_DIR/calls-ROLE.txt. Nothing
happens without the variable. (Not imported by Sluice itself.)
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


def _install(role: str, out: Path) -> None:
    counts: collections.Counter[str] = collections.Counter()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            where = "/".join(code.co_filename.split("/")[-2:])
            counts[f"{code.co_name} ({where}:{code.co_firstlineno})"] += 1
        elif event == "c_call":
            counts[f"C {getattr(arg, '__qualname__', arg)}"] += 1

    def start(signum: int, frame: object) -> None:
        counts.clear()
        sys.setprofile(profile)
        # For whoever waits to send what is to be counted (the handler runs
        # at the process's next bytecode, not when the signal is sent).
        (out / f"calls-{role}.started").touch()

    def stop(signum: int, frame: object) -> None:
        sys.setprofile(None)
        lines = [f"{n} {name}\n" for name, n in counts.most_common()]
        # Whole or not at all, for a reader that waits for the file.
        part = out / f"calls-{role}.txt.part"
        part.write_text("".join(lines))
        part.replace(out / f"calls-{role}.txt")

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


if _ROLE:
    _install(_ROLE, Path(os.environ.get("SLUICE_BENCH_CALLS_DIR", ".")))
