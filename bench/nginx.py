"""The neutral internal API: Debian's nginx on loopback, one worker.

Serves ``/small.json`` (a ~100-byte JSON document), ``/files/64m.bin`` and
``/files/1g.bin`` (sparse files: SSH compression is off on every path, so
zeros cost what any bytes cost on the wire; ``/files/64m-real.bin`` holds
random bytes), all with ``sendfile on; tcp_nopush on``, and the same files
under ``/plain/`` with nginx's own defaults (both off); takes uploads with
WebDAV ``PUT /upload/…`` (nginx answers only after the whole body is in),
and answers ``/slow`` after one second (``echo_sleep`` from
libnginx-mod-http-echo).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bench.proc import Child, free_port, port_open, spawn, wait_until

ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
SMALL_JSON = b'{"id": 42, "name": "widget", "tags": ["a", "b", "c"], "price": 12.5, "ok": true}\n'
MiB = 1024 * 1024
GiB = 1024 * MiB


def _config(root: Path, port: int) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    tmp = root / "tmp"
    return f"""{user}daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
load_module {ECHO_MODULE};
events {{ worker_connections 16384; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root}/www;
        location = /small.json {{ default_type application/json; }}
        location /files/ {{ }}
        # The same files with nginx's own defaults: no sendfile, no tcp_nopush
        # (the file goes through nginx's userspace buffers).
        location /plain/ {{
            alias {root}/www/files/;
            sendfile off;
            tcp_nopush off;
        }}
        location /upload/ {{
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 0;
            client_body_buffer_size 1m;
        }}
        location = /slow {{
            default_type application/json;
            echo_sleep 1;
            echo '{{"slow": true}}';
        }}
    }}
}}
"""


def _read_once(path: Path) -> None:
    """Read *path* once, so that its pages are in the page cache before any
    measurement: the first read of a sparse file's holes makes the kernel
    fill the cache with zeroed pages, and at 10 ms through bench.long_link
    that cost nginx 40-90% of a core (kernel time) during the first
    repetition only, which stole the relay's and agent's CPU (GETs beside the
    download: p50 30-50 ms in the first repetition against ~20 ms after)."""
    buf = bytearray(8 * MiB)
    with path.open("rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def _write_random(f: BinaryIO, size: int) -> None:
    block = os.urandom(8 * MiB)  # repeated: as costly to move as any bytes, quick to write
    left = size
    while left > 0:
        left -= f.write(block[: min(left, len(block))])


@dataclass
class Nginx:
    root: Path
    port: int
    child: Child

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def upload_source(self) -> Path:
        return self.root / "upload.bin"

    @classmethod
    async def start(
        cls,
        root: Path,
        sizes: dict[str, int],
        upload_size: int,
        real: dict[str, int] | None = None,
    ) -> Nginx:
        """Lay out files (name -> size: *sizes* sparse, *real* of random bytes)
        and start nginx on a free port."""
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        (root / "www" / "files").mkdir(parents=True)
        (root / "www" / "upload").mkdir()
        (root / "tmp").mkdir()
        (root / "www" / "small.json").write_bytes(SMALL_JSON)
        for name, size in sizes.items():
            with (root / "www" / "files" / name).open("wb") as f:
                f.truncate(size)
            _read_once(root / "www" / "files" / name)
        for name, size in (real or {}).items():
            with (root / "www" / "files" / name).open("wb") as f:
                _write_random(f, size)
        with (root / "upload.bin").open("wb") as f:
            f.truncate(upload_size)
        port = free_port()
        conf = root / "nginx.conf"
        conf.write_text(_config(root, port))
        child = await spawn(
            "nginx",
            [nginx, "-e", str(root / "error.log"), "-p", str(root), "-c", str(conf)],
            log=root / "nginx.log",
        )
        try:
            await wait_until("nginx", lambda: port_open(port), timeout=10, child=child)
        except BaseException:
            await child.stop()
            raise
        return cls(root, port, child)

    async def stop(self) -> None:
        await self.child.stop()
