"""The lanes' instance ids (sluice.lanes): a relay of any version takes them,
and one of this version tells which process a lane belongs to."""

from __future__ import annotations

import secrets

import pytest

from sluice.lanes import family, lane_instance


def test_a_lanes_instance_names_its_process_and_is_one_a_relay_takes() -> None:
    process = secrets.token_hex(8)
    ids = [lane_instance(process, lane) for lane in range(4)]
    assert ids[0] == process  # the first lane logs in as the process always did
    assert len(set(ids)) == 4  # a reconnect replaces its own lane's stale session only
    assert {family(i) for i in ids} == {process}
    # server.tunnel.ssh keeps an instance id only if it is letters and digits.
    assert all(i.isalnum() and len(i) <= 64 for i in ids)
    assert family(secrets.token_hex(8)) != process


def test_no_instance_is_no_process() -> None:
    assert family("") == ""


def test_lanes_are_numbered_from_zero() -> None:
    with pytest.raises(ValueError, match="numbered from 0"):
        lane_instance("ab12", -1)
