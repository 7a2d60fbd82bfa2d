"""The images the deploy tests run: no registry image can be pulled here.

The Dockerfiles start `FROM python:3.11-slim`. In its place, a Debian 12
root file system from debootstrap with python3, pip and venv, imported as a
local image and tagged with that name (unless a real one is present). It is
built once per machine and recognised by its label afterwards; the project's
images are built from the Dockerfiles as they are, once per test session.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.deploy.podman import (
    drop_superseded,
    image_id,
    image_label,
    machine_lock,
    podman,
    retag,
)

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

BASE_TAG = "localhost/sluice-test-base:bookworm"
DOCKERFILE_FROM = "docker.io/library/python:3.11-slim"
SYSTEMD_TAG = "localhost/sluice-test-systemd:bookworm"
POSTGRES_TAG = "localhost/sluice-test-postgres:15"
POSTGRES_FROM = "docker.io/library/postgres:15"
RECIPE_LABEL = "org.sluice.test-recipe"
# Change this when the base image's recipe below changes: cached images with
# another value are rebuilt.
BASE_RECIPE = "bookworm-minbase-python3-1"
PACKAGES = "python3,python3-pip,python3-venv,ca-certificates"
MIRROR = os.environ.get("SLUICE_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")

BUILD_TIMEOUT = 900.0  # seconds; a cold debootstrap or pip install on a slow mirror


def base_image() -> str:
    """The debootstrap'ed bookworm image, tagged as the Dockerfiles' FROM."""
    with machine_lock():
        if image_label(BASE_TAG, RECIPE_LABEL) != BASE_RECIPE:
            _build_base()
        from_label = image_label(DOCKERFILE_FROM, RECIPE_LABEL)
        # A real python:3.11-slim (no label) is left alone and used as it is.
        if from_label is None or (from_label and from_label != BASE_RECIPE):
            retag(BASE_TAG, DOCKERFILE_FROM)
    return BASE_TAG


def _build_base() -> None:
    if shutil.which("debootstrap") is None:
        raise AssertionError("debootstrap is needed to build the base image (apt-get install)")
    with tempfile.TemporaryDirectory(prefix="sluice-rootfs-", dir="/var/tmp") as tmp:
        root = Path(tmp) / "rootfs"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={PACKAGES}",
                "bookworm",
                str(root),
                MIRROR,
            ],
            check=True,
            capture_output=True,
            timeout=BUILD_TIMEOUT,
        )
        # As python:3.11-slim: pip may install system-wide, `python` and
        # `pip` exist. The machine's CA bundle and pip settings come along:
        # the package registries may be reached through them.
        (root / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
        for name, target in (("python", "python3"), ("pip", "pip3")):
            link = root / "usr/bin" / name
            link.unlink(missing_ok=True)
            link.symlink_to(target)
        for path in ("etc/ssl/certs/ca-certificates.crt", "etc/pip.conf"):
            if Path("/", path).is_file():
                shutil.copyfile(Path("/", path), root / path)
        for deb in (root / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            imported = subprocess.run(
                [
                    "podman",
                    "import",
                    "--change",
                    f"LABEL {RECIPE_LABEL}={BASE_RECIPE}",
                    "-",
                    BASE_TAG,
                ],
                stdin=tar.stdout,
                capture_output=True,
                timeout=BUILD_TIMEOUT,
                check=False,
            )
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait(timeout=60)
        if imported.returncode != 0:
            raise AssertionError(f"podman import failed: {imported.stderr.decode()[-2000:]}")


def _build(dockerfile: Path, tag: str, context: Path, *args: str) -> str:
    old = image_id(tag)
    podman(
        "build",
        "--pull=never",
        "--network",
        "host",
        "--format",
        "docker",  # keeps HEALTHCHECK
        # A build reusing cached layers lost the RUN --mount=from=builder
        # contents (podman 4.3): no layer cache.
        "--layers=false",
        *args,
        "-f",
        str(dockerfile),
        "-t",
        tag,
        str(context),
        timeout=BUILD_TIMEOUT,
    )
    drop_superseded(old, tag)
    return tag


def project_image(which: str) -> str:
    """Build Dockerfile.<which> (server or agent) from the repository, unchanged."""
    return _build(REPO / f"Dockerfile.{which}", f"localhost/sluice-{which}:deploy-test", REPO)


def _recipe(containerfile: Path) -> str:
    text = containerfile.read_bytes() + BASE_RECIPE.encode()
    return hashlib.sha256(text).hexdigest()[:16]


def _cached_build(containerfile: Path, tag: str, *args: str) -> str:
    recipe = _recipe(containerfile)
    with machine_lock():
        if image_label(tag, RECIPE_LABEL) != recipe:
            _build(containerfile, tag, HERE, "--label", f"{RECIPE_LABEL}={recipe}", *args)
    return tag


def systemd_image() -> str:
    """The base image with systemd 252, to boot as PID 1."""
    return _cached_build(
        HERE / "systemd.Containerfile", SYSTEMD_TAG, "--build-arg", f"BASE={BASE_TAG}"
    )


def postgres_image() -> str:
    """Debian's PostgreSQL 15 behind the official image's variables, tagged postgres:15."""
    tag = _cached_build(
        HERE / "postgres.Containerfile", POSTGRES_TAG, "--build-arg", f"BASE={BASE_TAG}"
    )
    with machine_lock():
        label = image_label(POSTGRES_FROM, RECIPE_LABEL)
        if label is None or (label and label != _recipe(HERE / "postgres.Containerfile")):
            retag(tag, POSTGRES_FROM)
    return tag


def wheel(out_dir: Path) -> Path:
    """The project's wheel, built as docs/DEPLOY.md says."""
    import sys

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out_dir), "."],
        cwd=REPO,
        env={
            **os.environ,
            "PIP_BUILD_CONSTRAINT": str(REPO / "build-constraints.txt"),
            "PIP_CONSTRAINT": str(REPO / "build-constraints.txt"),
        },
        check=True,
        capture_output=True,
        timeout=BUILD_TIMEOUT,
    )
    (found,) = out_dir.glob("sluice-*.whl")
    return found
