"""Network namespaces made by a test: private hosts on this machine only.

Topology (addresses exist only inside the namespaces this module creates):

    test process (root ns) ──veth── agent ns ──veth── api ns
         10.77.N.1/30         10.77.N.2 | 10.78.N.1     10.78.N.2/30

The root namespace gets an 'unreachable' route for the API's subnet, so a
direct attempt from the relay fails at once and no packet ever leaves the
machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def netns_available() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"slcprobe{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ok


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True)


@dataclass(frozen=True)
class Topology:
    agent_ns: str
    api_ns: str
    relay_ip: str
    agent_uplink_ip: str
    api_ip: str

    def exec_prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]


@contextmanager
def relay_agent_api() -> Iterator[Topology]:
    n = os.getpid() % 200 + 20
    tag = f"s{os.getpid() % 100000}"
    agent_ns, api_ns = f"{tag}agent", f"{tag}api"
    root_veth, agent_up = f"{tag}r", f"{tag}au"
    agent_down, api_veth = f"{tag}ad", f"{tag}p"
    topo = Topology(agent_ns, api_ns, f"10.77.{n}.1", f"10.77.{n}.2", f"10.78.{n}.2")
    unreachable = f"10.78.{n}.0/30"
    try:
        _ip("netns", "add", agent_ns)
        _ip("netns", "add", api_ns)
        for ns in (agent_ns, api_ns):
            _ip("link", "set", "lo", "up", ns=ns)
        _ip("link", "add", root_veth, "type", "veth", "peer", "name", agent_up)
        _ip("link", "set", agent_up, "netns", agent_ns)
        _ip("addr", "add", f"{topo.relay_ip}/30", "dev", root_veth)
        _ip("link", "set", root_veth, "up")
        _ip("addr", "add", f"{topo.agent_uplink_ip}/30", "dev", agent_up, ns=agent_ns)
        _ip("link", "set", agent_up, "up", ns=agent_ns)
        _ip("link", "add", agent_down, "type", "veth", "peer", "name", api_veth)
        _ip("link", "set", agent_down, "netns", agent_ns)
        _ip("link", "set", api_veth, "netns", api_ns)
        _ip("addr", "add", f"10.78.{n}.1/30", "dev", agent_down, ns=agent_ns)
        _ip("link", "set", agent_down, "up", ns=agent_ns)
        _ip("addr", "add", f"{topo.api_ip}/30", "dev", api_veth, ns=api_ns)
        _ip("link", "set", api_veth, "up", ns=api_ns)
        _ip("route", "add", "unreachable", unreachable)
        yield topo
    finally:
        subprocess.run(["ip", "route", "del", "unreachable", unreachable], capture_output=True)
        subprocess.run(["ip", "link", "del", root_veth], capture_output=True)
        for ns in (agent_ns, api_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
