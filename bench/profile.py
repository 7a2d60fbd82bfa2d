"""Optional py-spy profiles of relay and agent during chosen points (``--profile DIR``).

py-spy (``pip install py-spy``) samples the processes from outside while a
point runs and writes collapsed stacks; ``summarise`` turns them into the
functions that hold the most samples, by self time and inclusive time.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from bench.proc import Child, spawn

PROFILED = {
    ("sluice-onprem", "get_c32"),
    ("sluice-onprem", "down_medium"),
    ("sluice-onprem", "down_large"),
    ("sluice-cloud", "get_c32"),
}


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, directory: Path, rate: int = 250) -> None:
        self.directory = directory
        self.rate = rate
        self.binary = py_spy()
        if self.binary is None:
            raise RuntimeError("--profile needs py-spy: pip install py-spy")
        directory.mkdir(parents=True, exist_ok=True)

    @contextlib.asynccontextmanager
    async def around(
        self,
        path: str,
        point: str,
        rep: int,
        pids: dict[str, int],
    ) -> AsyncIterator[None]:
        """Sample *pids* while the block runs, if this point is one we profile."""
        if (path, point) not in PROFILED or rep != 1:
            yield
            return
        children: list[tuple[Child, Path]] = []
        assert self.binary is not None
        for role, pid in pids.items():
            out = self.directory / f"{path}-{point}-{role}.txt"
            child = await spawn(
                f"py-spy {role}",
                [
                    self.binary,
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--rate",
                    str(self.rate),
                    "--nonblocking",
                    "--output",
                    str(out),
                ],
                log=self.directory / "py-spy.log",
            )
            children.append((child, out))
        async with sampling(children):
            yield


@contextlib.asynccontextmanager
async def sampling(
    children: list[tuple[Child, Path]], summarise_output: bool = True
) -> AsyncIterator[None]:
    """Run the block while the profilers in *children* (just spawned, each with
    its output file) sample; then stop them and, for py-spy's raw output,
    write its summary beside it."""
    await asyncio.sleep(0.5)  # the profilers attach before the load starts
    try:
        yield
    finally:
        for child, out in children:
            # SIGINT makes py-spy and perf write what they have.
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.proc.wait(), 30)
            await child.stop(timeout=5)
            if summarise_output and out.exists():
                out.with_suffix(".summary.txt").write_text(summarise(out))


def _frame(name: str) -> str:
    # "function (module/path.py:123)" -> "function (path.py)"
    func, _, where = name.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    parts = where.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else where
    return f"{func} ({short})"


def summarise(raw: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's raw output."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        return "no samples\n"
    lines = [f"{raw.name}: {total} samples", "", "self %  function"]
    lines += [f"{100 * n / total:6.1f}  {name}" for name, n in self_time.most_common(top)]
    lines += ["", "incl %  function"]
    lines += [f"{100 * n / total:6.1f}  {name}" for name, n in inclusive.most_common(top * 2)]
    return "\n".join(lines) + "\n"
