"""podman as these machines run it: rootful, runc, cgroupfs, host network.

crun refuses the hybrid cgroup layout of the CI machines, so runc with the
cgroupfs manager; the hard limits are given explicitly because podman's
defaults exceed them there. `--network host` keeps every test on loopback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

GLOBAL_FLAGS = ("--cgroup-manager", "cgroupfs", "--runtime", "runc")
RUN_FLAGS = (
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=4096:4096",
    "--network",
    "host",
)
# One build or image change at a time on a machine, across pytest sessions.
LOCK_FILE = Path("/var/tmp/sluice-deploy-tests.lock")


class PodmanError(AssertionError):
    """A podman command failed; the message has its output."""


def skip_reason() -> str | None:
    """Why the deploy tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "deploy tests run podman as root (CI runs as root)"
    for tool, package in (("podman", "podman"), ("runc", "runc")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package}; .ci/run does)"
    return None


def podman(
    *args: str, timeout: float, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one podman command; raise PodmanError with its output when *check* and it fails."""
    argv = ["podman", *GLOBAL_FLAGS, *args]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise PodmanError(f"timed out after {timeout:g} s: {' '.join(argv)}") from exc
    if check and done.returncode != 0:
        raise PodmanError(
            f"exit {done.returncode}: {' '.join(argv)}\n"
            f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
        )
    return done


def image_label(tag: str, label: str) -> str | None:
    """The value of *label* on image *tag*; None when there is no such image."""
    if podman("image", "exists", tag, timeout=30, check=False).returncode != 0:
        return None
    fmt = '{{index .Labels "' + label + '"}}'
    value = podman("image", "inspect", "--format", fmt, tag, timeout=30).stdout.strip()
    return "" if value == "<no value>" else value


@contextmanager
def machine_lock() -> Iterator[None]:
    """Held while images are built or retagged (another session may be at it)."""
    import fcntl

    with LOCK_FILE.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_container(name: str) -> None:
    """Remove a test's container and its anonymous volumes, whatever its state."""
    podman("rm", "--force", "--volumes", "--time", "0", name, timeout=60, check=False)


def image_id(tag: str) -> str | None:
    """The id of image *tag*, or None when there is none."""
    done = podman("image", "inspect", "--format", "{{.Id}}", tag, timeout=30, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def drop_superseded(old_id: str | None, tag: str) -> None:
    """Remove the image *tag* named before it was rebuilt or retagged, so that
    repeated sessions leave no untagged images behind. Never forced: an image
    still tagged otherwise, or used by a container, stays."""
    if old_id is not None and old_id != image_id(tag):
        podman("rmi", old_id, timeout=120, check=False)


def retag(source: str, tag: str) -> None:
    """Point *tag* at *source*, dropping what it named before."""
    old = image_id(tag)
    podman("tag", source, tag, timeout=60)
    drop_superseded(old, tag)
