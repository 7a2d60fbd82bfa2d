"""The asyncssh tweaks are safe to ship: nothing is patched on import, an
environment variable turns them off, and an asyncssh that differs from the
one they were written for runs stock, with one warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from typing import Any

import pytest

from sluice import send_coalescing, send_scheduler, ssh_shape
from sluice.ssh_tuning import SWITCH, tuning_enabled

# Runs in a fresh interpreter (this one has the tweaks applied by other tests):
# prints which asyncssh methods are stock after the given steps.
_PROBE = """
import json, sys
import structlog
from asyncssh.channel import SSHChannel
from asyncssh.connection import SSHConnection
from asyncssh.crypto.cipher import GCMCipher
from asyncssh.encryption import GCMEncryption
%s
stock = {
    "send_packet": SSHConnection.send_packet,
    "data_received": SSHConnection.data_received,
    "_send": SSHConnection._send,
    "_flush_send_buf": SSHChannel._flush_send_buf,
    "encrypt_and_sign": GCMCipher.encrypt_and_sign,
    "decrypt_packet": GCMEncryption.decrypt_packet,
    "pause_writing": SSHConnection.pause_writing,
    "resume_writing": SSHConnection.resume_writing,
    "write": SSHChannel.write,
    "_reset_keepalive_timer": SSHConnection._reset_keepalive_timer,
    "_set_keepalive_timer": SSHConnection._set_keepalive_timer,
    "_keepalive_timer_callback": SSHConnection._keepalive_timer_callback,
}
with structlog.testing.capture_logs() as logs:
    import sluice.ssh_tuning as tuning
    result = %s
still = {
    "send_packet": SSHConnection.send_packet is stock["send_packet"],
    "data_received": SSHConnection.data_received is stock["data_received"],
    "_send": SSHConnection._send is stock["_send"],
    "_flush_send_buf": SSHChannel._flush_send_buf is stock["_flush_send_buf"],
    "encrypt_and_sign": GCMCipher.encrypt_and_sign is stock["encrypt_and_sign"],
    "decrypt_packet": GCMEncryption.decrypt_packet is stock["decrypt_packet"],
    "pause_writing": SSHConnection.pause_writing is stock["pause_writing"],
    "resume_writing": SSHConnection.resume_writing is stock["resume_writing"],
    "write": SSHChannel.write is stock["write"],
    "_reset_keepalive_timer": (
        SSHConnection._reset_keepalive_timer is stock["_reset_keepalive_timer"]),
    "_set_keepalive_timer": SSHConnection._set_keepalive_timer is stock["_set_keepalive_timer"],
    "_keepalive_timer_callback": (
        SSHConnection._keepalive_timer_callback is stock["_keepalive_timer_callback"]),
}
json.dump({
    "result": result,
    "stock": still,
    "scheduler": sys.modules["sluice.send_scheduler"].installed(),
    "coalescing": sys.modules["sluice.send_coalescing"].installed(),
    "extra": [n for n in ("_sluice_batch", "_sluice_pending", "_sluice_aead",
                          "_sluice_seen", "_sluice_keepalive", "_sluice_state")
              if hasattr(SSHConnection, n) or hasattr(GCMCipher, n)],
    "warnings": [e for e in logs if e["log_level"] == "warning"],
}, sys.stdout, default=str)
"""


def _probe(call: str, before: str = "", **env: str) -> dict[str, Any]:
    switches = (SWITCH, send_scheduler.SWITCH, send_coalescing.SWITCH)
    environ = {k: v for k, v in os.environ.items() if k not in switches} | env
    out = subprocess.run(
        [sys.executable, "-c", _PROBE % (textwrap.dedent(before), call)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return dict(json.loads(out.stdout))


def test_importing_the_module_patches_nothing() -> None:
    seen = _probe("None")
    assert seen["stock"] == dict.fromkeys(seen["stock"], True)
    assert seen["extra"] == []


def test_the_explicit_call_patches() -> None:
    seen = _probe("tuning.tune_asyncssh()")
    assert seen["result"] is True
    assert seen["stock"] == dict.fromkeys(seen["stock"], False)
    assert seen["scheduler"] is True  # on by default
    assert seen["coalescing"] is True  # on by default
    assert seen["warnings"] == []


@pytest.mark.parametrize("value", ["off", "OFF", "0", "false", "no"])
def test_the_schedulers_own_switch_leaves_it_out(value: str) -> None:
    seen = _probe("tuning.tune_asyncssh()", **{send_scheduler.SWITCH: value})
    assert seen["result"] is True  # the other tweaks are in place
    assert seen["scheduler"] is False
    stock = seen["stock"]
    assert (stock["pause_writing"], stock["resume_writing"]) == (True, True)
    assert (stock["send_packet"], stock["_flush_send_buf"]) == (False, False)


def test_the_tuning_switch_leaves_the_scheduler_out_too() -> None:
    seen = _probe("tuning.tune_asyncssh()", **{SWITCH: "off", send_scheduler.SWITCH: "on"})
    assert seen["scheduler"] is False
    assert seen["stock"] == dict.fromkeys(seen["stock"], True)


def test_a_bad_scheduler_value_names_the_variable() -> None:
    name = send_scheduler.SWITCH
    assert send_scheduler.high_water({}) == send_scheduler.HIGH_WATER
    assert send_scheduler.high_water({name: "off"}) == 0
    assert send_scheduler.high_water({name: str(1 << 20)}) == 1 << 20
    for bad in ("maybe", "1000"):
        with pytest.raises(ValueError, match=f"{name}='{bad}': must be 'on', 'off' or a high"):
            send_scheduler.high_water({name: bad})


@pytest.mark.parametrize("value", ["off", "OFF", "0", "false", "no"])
def test_the_switch_leaves_asyncssh_stock(value: str) -> None:
    seen = _probe("tuning.tune_asyncssh()", **{SWITCH: value})
    assert seen["result"] is False
    assert seen["stock"] == dict.fromkeys(seen["stock"], True)
    assert (seen["scheduler"], seen["coalescing"]) == (False, False)


def test_the_coalescings_own_switch_leaves_it_out() -> None:
    seen = _probe("tuning.tune_asyncssh()", **{send_coalescing.SWITCH: "off"})
    assert seen["result"] is True  # the other tweaks are in place
    assert (seen["scheduler"], seen["coalescing"]) == (True, False)


def test_a_bad_coalescing_value_names_the_variable() -> None:
    name = send_coalescing.SWITCH
    assert send_coalescing.enabled({}) is True
    assert send_coalescing.enabled({name: "off"}) is False
    with pytest.raises(ValueError, match=f"{name}='maybe': must be 'on' or 'off'"):
        send_coalescing.enabled({name: "maybe"})


def test_a_bad_switch_value_names_the_variable() -> None:
    assert tuning_enabled({}) is True
    assert tuning_enabled({SWITCH: "on"}) is True
    with pytest.raises(ValueError, match=f"{SWITCH}='maybe': must be 'on' or 'off'"):
        tuning_enabled({SWITCH: "maybe"})


@pytest.mark.parametrize(
    ("change", "difference"),
    [
        # a method the tweaks replace takes other parameters
        (
            "SSHChannel._accept_data = lambda self, data, datatype=None, extra=0: None",
            "SSHChannel._accept_data",
        ),
        # a method the tweaks call is gone
        ("del GCMCipher._update_iv", "GCMCipher._update_iv is missing"),
        # the nonce counts otherwise than the inline copies of _update_iv
        (
            "GCMCipher._update_iv = lambda self: setattr(\n"
            "    self, '_iv', self._iv[:8] + (int.from_bytes(self._iv[8:], 'big') + 1)"
            "    .to_bytes(4, 'big'))",
            "GCMCipher._update_iv counts the nonce otherwise",
        ),
        # the send scheduler's: the channel's backpressure is gone
        (
            "del SSHChannel._pause_resume_writing",
            "SSHChannel._pause_resume_writing is missing",
        ),
        # the send scheduler's: the transport's pause takes other parameters
        (
            "SSHConnection.pause_writing = lambda self, why: None",
            "SSHConnection.pause_writing",
        ),
        # an attribute the tweaks read was renamed
        (
            "import asyncssh.channel as c\n"
            "src = c.SSHChannel.__init__.__code__\n"
            "names = tuple('_recv_wnd' if n == '_recv_window' else n for n in src.co_names)\n"
            "c.SSHChannel.__init__.__code__ = src.replace(co_names=names)\n"
            "for name, f in list(vars(c.SSHChannel).items()):\n"
            "    code = getattr(f, '__code__', None)\n"
            "    if code is not None and '_recv_window' in code.co_names:\n"
            "        delattr(c.SSHChannel, name)\n",
            "SSHChannel._recv_window is never set",
        ),
        # write() keeps what it is given instead of copying it (the agent
        # reuses its read buffer only because it copies)
        (
            "SSHChannel.write = lambda self, data, datatype=None: self._send_buf.append(data)",
            "SSHChannel.write no longer copies its data",
        ),
    ],
)
def test_an_asyncssh_of_another_shape_runs_stock_with_one_warning(
    change: str, difference: str
) -> None:
    seen = _probe("tuning.tune_asyncssh()", before=change)
    assert seen["result"] is False
    assert seen["stock"] == dict.fromkeys(seen["stock"], True)
    assert (seen["scheduler"], seen["coalescing"]) == (False, False)
    warnings = seen["warnings"]
    assert len(warnings) == 1
    assert difference in str(warnings[0]["differences"])


def test_a_reused_read_buffer_is_written_only_where_asyncssh_copies_it() -> None:
    call = "(tuning.tune_asyncssh(), tuning.channel_write_copies())"
    assert _probe(call)["result"] == [True, True]
    assert _probe(call, **{SWITCH: "off"})["result"] == [False, False]
    keeps = "SSHChannel.write = lambda self, data, datatype=None: None"
    assert _probe(call, before=keeps)["result"] == [False, False]


def test_the_installed_asyncssh_is_the_one_the_tweaks_were_written_for() -> None:
    assert metadata.version("asyncssh") == ssh_shape.TUNED_FOR
    assert ssh_shape.mismatches() == []
    requires = metadata.requires("sluice") or []
    assert f"asyncssh=={ssh_shape.TUNED_FOR}" in [r.split(";")[0].strip() for r in requires]


def test_windows_are_asyncssh_fixed_ones_without_the_tweaks() -> None:
    # The window tuner and the relay's window sharing read and write
    # asyncssh's private window fields: only once the shape check passed.
    call = (
        "(tuning.tune_asyncssh(), tuning.windows_adjustable(), type(__import__("
        "'sluice.window_tuning', fromlist=['x']).window_tuner("
        "sys.modules['sluice.window_tuning'].WindowBudget(1 << 26), 1 << 20)).__name__)"
    )
    assert _probe(call)["result"] == [True, True, "WindowTuner"]
    assert _probe(call, **{SWITCH: "off"})["result"] == [False, False, "FixedWindow"]
    other_shape = "SSHChannel.write = lambda self, data, datatype=None: None"
    assert _probe(call, before=other_shape)["result"] == [False, False, "FixedWindow"]
