"""Loaded by ``bench.calls`` into a relay or agent (first on PYTHONPATH).

With SLUICE_BENCH_CALLS set (the role's name): SIGUSR1 starts counting the
main thread's function calls (``sys.setprofile``: Python functions by name,
file and line, C functions by qualified name); SIGUSR2 stops and writes the
counts, most first, to SLUICE_BENCH_CALLS_DIR/calls-ROLE.txt. Nothing
happens without the variable. (Not imported by Sluice itself.) With
SLUICE_BENCH_CALLS_OPCODES set as well, the bytecodes the interpreter runs
are counted too (``sys.settrace`` with ``f_trace_opcodes``), per function
(``op NAME (FILE:LINE)``) and per source line (``opline FILE:LINE``): where
the eval loop's time goes once calls are few and their bodies long.
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
_OPCODES = bool(os.environ.get("SLUICE_BENCH_CALLS_OPCODES"))


def _install(role: str, out: Path) -> None:
    counts: collections.Counter[str] = collections.Counter()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            where = "/".join(code.co_filename.split("/")[-2:])
            counts[f"{code.co_name} ({where}:{code.co_firstlineno})"] += 1
        elif event == "c_call":
            counts[f"C {getattr(arg, '__qualname__', arg)}"] += 1

    names: dict[Any, str] = {}

    def name_of(code: Any) -> str:
        where = "/".join(code.co_filename.split("/")[-2:])
        name = names[code] = f"{code.co_name} ({where}:{code.co_firstlineno})"
        return name

    def opcode(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            name = names.get(code) or name_of(code)
            counts["op " + name] += 1
            where = "/".join(code.co_filename.split("/")[-2:])
            counts[f"opline {where}:{frame.f_lineno}"] += 1
        return opcode

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call":
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
            return opcode
        return None

    def start(signum: int, frame: object) -> None:
        counts.clear()
        sys.setprofile(profile)
        if _OPCODES:
            sys.settrace(trace)
        # For whoever waits to send what is to be counted (the handler runs
        # at the process's next bytecode, not when the signal is sent).
        (out / f"calls-{role}.started").touch()

    def stop(signum: int, frame: object) -> None:
        sys.setprofile(None)
        sys.settrace(None)
        lines = [f"{n} {name}\n" for name, n in counts.most_common()]
        # Whole or not at all, for a reader that waits for the file.
        part = out / f"calls-{role}.txt.part"
        part.write_text("".join(lines))
        part.replace(out / f"calls-{role}.txt")

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


if _ROLE:
    _install(_ROLE, Path(os.environ.get("SLUICE_BENCH_CALLS_DIR", ".")))
