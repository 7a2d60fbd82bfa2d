"""Which relays of a cluster an agent keeps tunnels to."""

from __future__ import annotations

from agent.relay_set import stable_subset

RELAYS = [f"relay{i}.example:2222" for i in range(10)]


def test_the_subset_is_capped_and_does_not_depend_on_the_order_relays_are_listed() -> None:
    chosen = stable_subset(RELAYS, 4, "agt_a")
    assert len(chosen) == 4
    assert set(chosen) <= set(RELAYS)
    assert stable_subset(list(reversed(RELAYS)), 4, "agt_a") == chosen
    assert stable_subset(RELAYS + RELAYS[:3], 4, "agt_a") == chosen  # repeats count once


def test_agents_spread_over_a_large_cluster_and_a_small_one_is_taken_whole() -> None:
    picks = {tuple(sorted(stable_subset(RELAYS, 4, f"agt_{n}"))) for n in range(50)}
    assert len(picks) > 10  # not every agent on the same four relays
    assert sorted(stable_subset(RELAYS[:3], 4, "agt_a")) == sorted(RELAYS[:3])


def test_a_relay_joining_moves_an_agent_off_at_most_one_of_its_relays() -> None:
    before = set(stable_subset(RELAYS, 4, "agt_z"))
    after = set(stable_subset([*RELAYS, "relay-new.example:2222"], 4, "agt_z"))
    assert len(before - after) <= 1
