"""Real web servers from Debian for auth tests: nginx, Apache httpd, lighttpd.

Each runs in the foreground on 127.0.0.1 with a config written into the
test's directory, on a port picked free (retried if another process takes it
first), and stops on exit. A test whose server is not installed is skipped
(``.ci/run`` installs them).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ports import free_port

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
APACHE = shutil.which("apache2") or (
    "/usr/sbin/apache2" if Path("/usr/sbin/apache2").exists() else None
)
LIGHTTPD = shutil.which("lighttpd") or (
    "/usr/sbin/lighttpd" if Path("/usr/sbin/lighttpd").exists() else None
)
HTPASSWD = shutil.which("htpasswd")
HTDIGEST = shutil.which("htdigest")
_ATTEMPTS = 5


def need(binary: str | None, package: str) -> str:
    """The binary's path, or skip the test naming the Debian package."""
    if binary is None:
        pytest.skip(f"{package} is not installed (apt-get install {package}; .ci/run does)")
    return binary


@dataclass
class Daemon:
    host: str
    port: int
    process: asyncio.subprocess.Process
    workdir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def base(self, scheme: str = "http") -> str:
        return f"{scheme}://{self.host}:{self.port}"


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            async with asyncio.timeout(5):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


async def _listening(daemon: Daemon, deadline: float) -> bool:
    """True once the port accepts a connection; False if the server exited first."""
    while True:
        if daemon.process.returncode is not None:
            return False
        try:
            _, writer = await asyncio.open_connection(daemon.host, daemon.port)
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not listen in time:\n{daemon.log()}") from None
            await asyncio.sleep(0.02)  # polling with a deadline
        else:
            writer.close()
            await writer.wait_closed()
            return True


@asynccontextmanager
async def run_daemon(
    workdir: Path, command: Callable[[int], list[str]], *, timeout: float = 10.0
) -> AsyncIterator[Daemon]:
    """Run ``command(port)`` (it writes its config) until the block ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "daemon.log"
    deadline = time.monotonic() + timeout
    for attempt in range(_ATTEMPTS):
        port = free_port()
        argv = command(port)
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
            )
        daemon = Daemon("127.0.0.1", port, process, workdir, log_path)
        try:
            up = await _listening(daemon, deadline)
        except BaseException:
            await _stop(process)
            raise
        if not up:
            await _stop(process)
            if "in use" not in daemon.log().lower() or attempt == _ATTEMPTS - 1:
                raise AssertionError(f"{argv[0]} exited at start:\n{daemon.log()}")
            continue
        try:
            yield daemon
        finally:
            await _stop(process)
        return


def htpasswd(path: Path, user: str, password: str) -> None:
    """An htpasswd file (bcrypt) made by Apache's own tool."""
    tool = need(HTPASSWD, "apache2-utils")
    subprocess.run(
        [tool, "-B", "-b", "-c", str(path), user, password], check=True, capture_output=True
    )


def nginx_command(workdir: Path, server_block: str) -> Callable[[int], list[str]]:
    """nginx in one foreground process; *server_block* may use {port} and {dir}."""
    binary = need(NGINX, "nginx")

    def command(port: int) -> list[str]:
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (workdir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        conf = workdir / "nginx.conf"
        conf.write_text(
            f"""
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log stderr info;
events {{ worker_connections 64; }}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {workdir}/tmp/body;
    proxy_temp_path {workdir}/tmp/proxy;
    fastcgi_temp_path {workdir}/tmp/fastcgi;
    uwsgi_temp_path {workdir}/tmp/uwsgi;
    scgi_temp_path {workdir}/tmp/scgi;
    default_type application/json;
    server {{
        listen 127.0.0.1:{port}{{ssl}};
        {server_block.replace("{port}", str(port)).replace("{dir}", str(workdir))}
    }}
}}
""".replace("{ssl}", " ssl" if "ssl_certificate" in server_block else "")
        )
        return [binary, "-p", str(workdir), "-c", str(conf), "-e", "stderr"]

    return command


def access_lines(daemon: Daemon, name: str = "access.log") -> list[str]:
    path = daemon.workdir / name
    return path.read_text().splitlines() if path.exists() else []


def shared_dir(base: Path, name: str) -> Path:
    """A directory servers that drop root (Apache's children run as nobody)
    can read, under /tmp instead of the test's private tmp_path."""
    path = Path(tempfile.mkdtemp(prefix=f"sluice-{name}-"))
    path.chmod(0o755)
    (base / f"{name}.path").write_text(str(path))  # where it went, for a failing test
    return path


def htdigest_line(user: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """One line of an htdigest file (``user:realm:H(user:realm:password)``)."""
    data = f"{user}:{realm}:{password}".encode()
    digest = (
        hashlib.sha256(data).hexdigest()
        if algorithm == "SHA-256"
        else hashlib.md5(data, usedforsecurity=False).hexdigest()
    )
    return f"{user}:{realm}:{digest}\n"


def apache_command(workdir: Path, directory_block: str) -> Callable[[int], list[str]]:
    """Apache httpd in one foreground process (-X) serving {dir}/www."""
    binary = need(APACHE, "apache2")
    modules = "/usr/lib/apache2/modules"

    def command(port: int) -> list[str]:
        user = "User nobody\nGroup nogroup\n" if os.geteuid() == 0 else ""
        loads = "\n".join(
            f"LoadModule {name}_module {modules}/mod_{name}.so"
            for name in (
                "mpm_event",
                "authz_core",
                "authn_core",
                "authn_file",
                "authz_user",
                "auth_digest",
                "mime",
            )
        )
        conf = workdir / "httpd.conf"
        conf.write_text(
            f"""{loads}
ServerRoot "{workdir}"
ServerName localhost
TypesConfig /dev/null
AddType application/json .json
Listen 127.0.0.1:{port}
PidFile {workdir}/httpd.pid
ErrorLog /dev/stderr
LogFormat "%r %>s" line
CustomLog {workdir}/access.log line
{user}DocumentRoot "{workdir}/www"
<Directory "{workdir}/www">
{directory_block.replace("{dir}", str(workdir))}
</Directory>
"""
        )
        return [binary, "-X", "-f", str(conf), "-d", str(workdir)]

    return command


def lighttpd_command(workdir: Path, auth_block: str) -> Callable[[int], list[str]]:
    """lighttpd in the foreground (-D) serving {dir}/www."""
    binary = need(LIGHTTPD, "lighttpd")

    def command(port: int) -> list[str]:
        conf = workdir / "lighttpd.conf"
        conf.write_text(
            f"""
server.modules = ("mod_auth", "mod_authn_file", "mod_accesslog")
server.document-root = "{workdir}/www"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "/dev/stderr"
accesslog.filename = "{workdir}/access.log"
accesslog.format = "%r %>s"
mimetype.assign = (".json" => "application/json")
{auth_block.replace("{dir}", str(workdir))}
"""
        )
        return [binary, "-D", "-f", str(conf)]

    return command
