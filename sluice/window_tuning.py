"""Receive windows that grow to the link, within a per-agent budget.

A stream moves at most one receive window per round trip: 256 KiB at 50 ms
is 5 MB/s, whatever the link could carry. OpenSSH is bounded the same way by
its fixed 2 MiB; HPN-SSH lifts that bound with windows that grow, as Linux
grows a socket's receive buffer (tcp_rcv_space_adjust, "DRS") and QUIC
stacks grow their flow-control windows.

Here the receiver measures, once per round trip, how long the peer took to
use new credit: a top-up (window adjust) goes out when the peer may send up
to byte L, and the time until the first byte beyond L arrives is a sample of
the credit loop (``round``). The peer cannot send that byte before the
top-up reaches it, so a sample is at least the link's round trip; it is
*only* the round trip if the peer had used up its credit and sat waiting
for more — the stream is limited by its window. If the peer still had
credit (the window covers the round trip), or the data queued on its way
(at the slower end, ahead of every other stream's), the sample is longer by
that much.

So, per round, with the link's shortest sample as its round trip:

- slow start (a new stream): the window quadruples each round while the
  pace (bytes delivered in the round over its length) keeps rising by
  ``STARTUP_GAIN`` (grows sixteenfold while no other stream of the
  connection holds growth: nothing else queues behind the overshoot, which
  the round that shows it takes back); it ends when the pace stops rising or
  a sample shows data queuing. Its first step goes out at the stream's first
  top-up, a round trip before its first round ends, where the link is known
  to be long (by a round, or before any by the connection's setup round
  trip: ``WindowBudget.setup_rtt``) and nothing is learned: at 50 ms the
  first download waited two round trips at its starting 1 MiB, then one at
  4, before one at 16. A new stream on a connection that already carried a full
  stream skips it: at its first top-up it jumps to what that stream carried
  per round trip (``WindowBudget.learned``), so each download after the
  first needs no ramp at all;
- then the last three samples decide (a busy moment on the machine
  lengthens one sample, a burst of data that had queued shortens one, not
  three): most at the round trip, the peer waited for the top-ups, and the
  window grows by a quarter; all more than ``QUEUE_HIGH`` beyond it, data
  queues for good, and the window goes back to the best recent pace times
  the round trip plus ``HEADROOM`` — what may wait ahead of a small answer
  on the same connection;
- but a busy machine lengthens every sample (its wake-ups, the delay line's
  millisecond timers: 2-6 ms at 10 ms), and then the samples cannot tell a
  window that holds the stream back from one that covers the link, nor a
  queue from those delays. The pace tells, in the manner of BBR's probing:
  where the samples show neither, the window grows a little (``PROBE_*``)
  and keeps that only if the pace over the next few rounds rose with it;
  a shrink for a queue stays only if the pace did not fall with it (else
  the window goes back and the queue check rests a while). Without this the
  window held at 4-5 MiB at 10 ms (about 350 MB/s, a fixed 16 MiB moved
  487), or shrank each time to the pace times the shortest loop, the pace
  followed, and the window spiralled down.

A round after a shrink is not judged (the peer first uses up the credit it
holds, then waits, which looks like a window-limited round), nor one in
which the stream sat idle (between answers on a pooled stream); and after
such idleness the stream starts again: the next answer on it has a pace of
its own. A grown stream goes straight to what the connection learned, as a
new stream does (or keeps its window, with nothing learned), without a
second slow start.

Nothing grows on a short round trip (below ``LONG``: loopback, a LAN),
where a window of its starting size already fills the link; a connection
whose setup showed its link short (``short_link``) gives its streams a
``ShortWindow`` instead, which times nothing.

A reader that pauses its channel (a slow API or caller; call
``WindowTuner.pause_reading``) leaves what arrives meanwhile in the
channel's buffer, and a round that ends there is timed by the reader, not
the link: such a sample is only an upper bound of the credit loop. It is
judged like any other (one near the round trip still shows a stream held
back by its window; a long one shows data waiting at this end, and the
window shrinks to what the reader takes), but it never sets the link's
round trip: on a busy loopback, such samples made a short link look long,
and a stream whose API read slowly grew its window to 16 MiB. (Ignoring
those rounds altogether, e175c23, was worse: a fast reader pauses its
channel in most rounds too, whenever a burst outruns it, so a stream kept
whatever it had grown to, up to the whole budget, and the next download got
no growth at all.) What waits in the buffer counts against the window: while
any does, the tuner makes the top-ups (asyncssh's count none of it, so a
reader that takes a packet per resume let a window more in each time: the
agent held 42 MB). A reader that stops reading stops its stream's growth:
no delivery, no top-up, no round, and what the stream holds stays within
its window. Every growth
comes out of a per-agent ``WindowBudget`` (a setting, 64 MiB by default):
the most all of an agent's streams may have in flight beyond their starting
windows. A stream gives its growth back when it shrinks or closes, and
when the budget is spent and another stream needs growth while it sits idle
(``IDLE`` round trips without a delivery: a finished answer kept in the
relay's pool; not one whose reader holds it back, paused: what it was
granted waits in its buffer or may still come); it then starts again as a
new stream, jumping at its first top-up to what the connection learned.
"""

from __future__ import annotations

import collections
import math
import statistics
import time
import weakref
from collections.abc import Callable
from typing import Any

import structlog
from asyncssh.channel import SSHChannel

from sluice.ssh_send import send_window_adjust
from sluice.ssh_tuning import set_receive_window, windows_adjustable

log = structlog.get_logger("sluice.window_tuning")

# A round trip this long is a long link (a loopback or LAN hop answers a
# top-up well within it, even on a busy machine).
LONG = 0.004  # seconds
# Before any round is timed, a setup round trip this long tells a long link
# (it includes both ends' work: a busy loopback stretched a login past 2 ms).
SETUP_LONG = 0.008  # seconds
# Slow start ends once the pace has not risen by STARTUP_GAIN for
# STARTUP_FLAT rounds, or at once when a sample shows data queuing (longer
# than QUEUED round trips).
STARTUP_GAIN = 1.25
STARTUP_FACTOR = 4  # the window's growth per round in slow start
STARTUP_FACTOR_ALONE = 16  # the same, for a stream no other holds growth beside
STARTUP_FLAT = 2
QUEUED = 1.25
# Past slow start, the last QUEUE_ROUNDS samples decide. Most within LIMITED
# (at least LIMITED_MIN, else this share of the round trip) of the round
# trip: the peer used up its credit and waited for more, and the window
# grows by CRUISE_GAIN. All beyond QUEUE_HIGH: data queues at the slower
# end, and the window goes back to the pace times the round trip plus
# HEADROOM (at least HEADROOM_MIN, else this share of the round trip).
# Otherwise it holds.
QUEUE_ROUNDS = 3
LIMITED_MIN = 0.0015  # seconds
LIMITED_SHARE = 32
CRUISE_GAIN = 1.25
QUEUE_HIGH_MIN = 0.005  # seconds
QUEUE_HIGH_SHARE = 16
HEADROOM_MIN = 0.003  # seconds
HEADROOM_SHARE = 32
# Where the samples show neither (a busy machine's wake-ups and the delay
# line's millisecond timers lengthened every sample at 10 ms by 2-6 ms, so
# the window held at 4-5 MiB, about 350 MB/s, where 16 MiB moved 487), the
# window probes: it grows by CRUISE_GAIN, but by no more than the pace times
# what the queue check lets stand (what a probe that does not pay queues
# ahead of a small answer meanwhile), and keeps that if
# the pace over the PROBE_ROUNDS rounds after it rose by PROBE_SHARE of the
# growth over the PROBE_ROUNDS before (a window-limited stream speeds up by
# all of it), else goes back; after a probe that did not pay, the next one
# waits twice as many rounds (up to PROBE_WAIT_MAX). A shrink for a queue
# is on probation the same way: if the pace falls by PROBE_SHARE of it, it
# was no queue but the busy machine's delays in every sample (shrinking
# each time to the pace times the shortest loop, the window spiralled down).
PROBE_ROUNDS = 3
PROBE_SHARE = 0.5
PROBE_WAIT_MAX = 16
# The pace a window follows is the best of the last few rounds (a slow one,
# a busy moment on the machine, does not shrink it).
PACE_ROUNDS = 10
# What the connection learned is trusted this long: its round trip (the
# shortest sample), and the pace of its last stream that filled the link.
REMEMBER = 10.0  # seconds
REMEMBER_PACE = 600.0  # seconds
# What the link carried (arrivals over spans of at least half a round trip,
# and at least CARRIED_SPAN, whatever the rounds' top-ups timed): where an
# answer ended before a round showed its grown window, and this beat what
# its rounds showed by STARTUP_GAIN, the connection learns it (see
# WindowTuner._learn_carried).
CARRIED_SPAN = 0.05  # seconds
# A pause between deliveries longer than this many round trips is idleness
# (a window-limited stream pauses for less than one).
IDLE = 1.5
# A grown window is topped up once this share of it has been used (the
# peer's credit never falls far below the window, so the window is what it
# may have in flight).
TOP_UP_SHARE = 64


class WindowBudget:
    """Per agent connection (relay) or agent: how much all its streams'
    windows may grow beyond their start, and what the link has shown."""

    def __init__(self, cap: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.cap = cap
        self.granted = 0
        # A round trip the connection's setup took (its login, a request the
        # peer refused), seconds: at least the link's, more on a busy
        # machine; 0: not timed. Until a round is timed, it alone tells a
        # long link (see WindowTuner.received).
        self.setup_rtt = 0.0
        # The link was short at the setup (``short_link``): new streams get a
        # ShortWindow, not a WindowTuner (the relay's; the agent's budget is
        # shared by its connections, each of which knows its own).
        self.short = False
        # Every stream's tuner, so that one that needs growth can take it
        # back from streams that sit idle (see WindowTuner._reclaim).
        self.tuners: weakref.WeakSet[WindowTuner] = weakref.WeakSet()
        self.clock = clock
        self.rtt = 0.0  # the shortest credit round trip seen; 0: none yet
        # What WindowTuner.received's fast path compares with, kept with rtt:
        # the gap between deliveries that is idleness (IDLE round trips; none
        # while rtt is 0), and the shortest span of what the link carried.
        self.idle_gap = math.inf
        self.span = CARRIED_SPAN
        self._rtt_at = clock()
        self._next_rtt = math.inf  # the shortest since _rtt_at
        self.pace = 0.0  # bytes/s of the last stream that filled the link
        self._pace_at = -REMEMBER_PACE

    def __repr__(self) -> str:
        return f"<WindowBudget {self.granted}/{self.cap} rtt {self.rtt * 1000:.1f} ms>"

    def take(self, wanted: int) -> int:
        """Up to *wanted* bytes of growth, as much as the budget has left."""
        got = max(0, min(wanted, self.cap - self.granted))
        self.granted += got
        return got

    def give_back(self, amount: int) -> None:
        self.granted -= amount

    def looks_long(self) -> bool:
        """Whether the link is long by its shortest credit round trip, or,
        before any, by the setup's round trip (``SETUP_LONG``)."""
        return self.rtt >= LONG if self.rtt else self.setup_rtt >= SETUP_LONG

    def sampled(self, rtt: float, now: float) -> float:
        """A credit round trip of *rtt* seconds was seen: the link's round trip now.

        The connection's first sample is no longer than its setup's round
        trip (``setup_rtt``, when timed): each bounds the link's from above,
        but a sample also holds the time the peer took to send what credit
        it still had when the top-up went out (half a window), which on a
        busy loopback took 4-9 ms for 1-2 MiB. Taken alone, such a first
        sample made a short link look long: slow start granted the relay
        32 MiB at once, and when the next sample showed the link short the
        window went back, but not the credit: the agent buffered 16-39 MB of
        a 50 MiB upload whose API drained it slower (issue 28h, with a 2 MiB
        starting window)."""
        if not self.rtt and self.setup_rtt:
            rtt = min(rtt, self.setup_rtt)
        self._next_rtt = min(self._next_rtt, rtt)
        if not self.rtt or rtt <= self.rtt:
            self.rtt = rtt
        if now - self._rtt_at > REMEMBER:
            # A new period: the shortest of the last one (a route may have
            # changed), not one sample, which may have queued. (Tried and
            # dropped, issue i33a: the shortest of six periods; see the
            # tuning history in bench/document.py.)
            self.rtt = self._next_rtt
            self._next_rtt = math.inf
            self._rtt_at = now
        self.idle_gap = IDLE * self.rtt if self.rtt else math.inf
        self.span = max(CARRIED_SPAN, self.rtt / 2)
        return self.rtt

    def filled(self, pace: float, now: float) -> None:
        """A stream whose window covered the link moved *pace* bytes/s."""
        self.pace = pace
        self._pace_at = now

    def learned(self, now: float) -> int:
        """What the connection's last full stream carried per round trip (0: nothing recent)."""
        if now - self._pace_at > REMEMBER_PACE:
            return 0
        return int(self.pace * self.rtt)


class _Probe:
    __slots__ = ("delivered", "limit", "sent_at")

    def __init__(self, limit: int, sent_at: float, delivered: int) -> None:
        self.limit = limit  # the peer's limit before the top-up
        self.sent_at = sent_at
        self.delivered = delivered  # bytes delivered when it went out


class WindowTuner:
    """One stream's receive window: starts at *base*, follows the link (see
    the module docstring). Feed it every data delivery."""

    __slots__ = (
        "__weakref__",
        "_best",
        "_budget",
        "_carried",
        "_chan",
        "_clock",
        "_delivered",
        "_flat",
        "_held_back",
        "_last",
        "_last_at",
        "_limit",
        "_paces",
        "_probe",
        "_probe_from",
        "_probe_pace",
        "_probe_wait",
        "_queue_hold",
        "_queue_wait",
        "_samples",
        "_settling",
        "_span_at",
        "_span_from",
        "_starting",
        "_steady",
        "_steady_rounds",
        "_steady_timed",
        "base",
        "window",
    )

    def __init__(
        self, budget: WindowBudget, base: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._budget = budget
        budget.tuners.add(self)
        self._chan: SSHChannel[Any] | None = None  # known at the first delivery
        self._clock = clock
        self.base = base
        self.window = base
        self._delivered = 0  # bytes delivered so far
        self._last_at = clock()  # the last delivery
        self._limit = base  # the peer may send this many bytes in all
        # The best pace the link carried during this answer (bytes/s over a
        # span of at least half a round trip, see CARRIED_SPAN), and the span
        # under way: when it began and what had arrived by then.
        self._carried = 0.0
        self._span_at = self._last_at
        self._span_from = 0
        self._probe: _Probe | None = None
        # After a shrink the peer holds more credit than the new window: it
        # uses that up, then waits, and the first round after looks limited
        # by the window though it is not. That round is not judged.
        self._settling = False
        # The reader paused the channel, and data may have waited in its
        # buffer since: asyncssh's top-ups are off, and a round that ends
        # now was timed by the reader. Until a delivery leaves it empty.
        self._held_back = False
        # Slow start: the window doubles each round while the pace keeps
        # rising by STARTUP_GAIN (the best pace so far, and rounds since).
        self._starting = True
        self._best = 0.0
        self._last = 0.0
        self._flat = 0
        self._paces: collections.deque[float] = collections.deque(maxlen=PACE_ROUNDS)
        self._samples: collections.deque[float] = collections.deque(maxlen=QUEUE_ROUNDS)
        # Growth by probing (see PROBE_ROUNDS): the rounds (bytes moved,
        # seconds) since the window last changed, not counting the first,
        # which shows the window before; how many there were; how many a
        # probe waits for; and while one runs, the window before it (0: none
        # runs) and the pace before it.
        self._steady: collections.deque[tuple[int, float]] = collections.deque(maxlen=PROBE_ROUNDS)
        self._steady_rounds = -1
        self._steady_timed = True  # none of them timed by the reader
        self._probe_wait = PROBE_ROUNDS
        self._probe_from = 0
        self._probe_pace = 0.0
        # After a shrink that cost its pace, the queue check rests this many
        # rounds, and the next time twice as many.
        self._queue_hold = 0
        self._queue_wait = PROBE_ROUNDS

    # Owners call received() for every delivery when set (ShortWindow's
    # only while held back).
    feed = True

    def __repr__(self) -> str:
        return f"<WindowTuner {self.window} (base {self.base})>"

    @property
    def grown(self) -> bool:
        return self.window > self.base

    def received(self, chan: SSHChannel[Any], size: int) -> bool:
        """*size* bytes were delivered from *chan* (asyncssh has already topped
        the window up, if it was due). Returns whether the window may be
        shared now (``server.tunnel.window_share``): not grown, and not held
        back (what ``grown`` and ``held_back`` tell, without their two calls
        per packet)."""
        now = self._clock()
        self._chan = chan
        self._delivered = delivered = self._delivered + size
        # The fast paths, for a stream whose window is neither grown nor held
        # back (so no top-up of ours is due, and nothing waits in the
        # channel's buffer): each does exactly what the whole path below
        # would, without its tests and calls (issue 22: ~150 bytecodes a
        # packet in each process, for every small request and answer).
        budget = self._budget
        if self.window == self.base and not self._held_back and not chan._recv_buf:
            gap = now - self._last_at
            if gap <= budget.idle_gap:  # (not idle; never while no round trip is known)
                probe = self._probe
                if delivered + chan._recv_window <= self._limit and (
                    probe is None or delivered <= probe.limit
                ):
                    # No top-up since the last delivery (the peer's limit
                    # unchanged), and the round under way, if any, not over:
                    # the counts move on, and a span of what the link
                    # carried may end (_carry, inline).
                    self._last_at = now
                    if now - self._span_at >= budget.span:
                        carried = (delivered - self._span_from) / (now - self._span_at)
                        if carried > self._carried:
                            self._carried = carried
                        self._span_at, self._span_from = now, delivered
                    return True
            elif budget.rtt < LONG:
                # Idle on a short link (every small request or answer of a
                # stream that is not kept busy): the stream starts again, and
                # nothing is learned (_learn_carried forgets what the answer
                # before carried: only a long link learns it), no step is
                # taken at a top-up (the link is not long), and no round is
                # timed across the idleness.
                limit = delivered + chan._recv_window
                if limit > self._limit:
                    self._limit = limit
                self._last_at = now
                self._carried = 0.0
                self._span_at, self._span_from = now, delivered - size
                self._start_again()
                return True
        waiting = chan._recv_buf
        # What arrived while the reader had paused the channel and waits in
        # its buffer: it counts against the window.
        held = sum(len(item[0]) for item in waiting) if waiting else 0
        arrived = self._delivered + held
        credit = chan._recv_window
        # Top up in smaller steps than asyncssh's half window once grown: a
        # grown window then flows at the pace data is delivered, not in
        # bursts of half a window that queue up at the slower end.
        due = self.window // TOP_UP_SHARE if self.window > self.base else 0  # (grown, inline)
        late = self._held_back  # this data, or what follows it, may have waited
        if late:
            # asyncssh's top-ups are off (pause_reading) until the buffer is
            # empty: they count none of it.
            if not held:
                self._held_back = False
                set_receive_window(chan, self.window)
            due = due or self.window // 2
        if due and credit + held <= self.window - due:
            more = self.window - held - credit
            # The tuned top-up (sluice.ssh_send), not asyncssh's send_packet:
            # some 20 Python calls and a getrandom each, and a reader that
            # pauses its channel has the tuner make every top-up.
            send_window_adjust(chan, more)
            chan._recv_window = credit = credit + more
        limit = arrived + credit
        gap = now - self._last_at
        self._last_at = now
        # The stream sat idle (between answers, or its source was slow).
        rtt = self._budget.rtt
        idle = bool(rtt) and gap > IDLE * rtt
        span = max(CARRIED_SPAN, rtt / 2)
        if idle or late:
            if idle and now - gap - self._span_at >= span:
                # The answer before ended in a span of its own: up to its last arrival.
                self._carry(arrived - size, now - gap)
            # A span starts at an answer's first arrival, and again after a
            # pause for the reader (what waited then arrives in a burst).
            self._span_at, self._span_from = now, arrived - size
        elif now - self._span_at >= span:
            self._carry(arrived, now)
        if idle:
            # The rounds before tell nothing of the answer now: on a pooled
            # stream it has a pace of its own, so the stream starts again
            # (slow start from the window it has). With the paces of the
            # answer before, a window that queued went back to what that
            # answer carried, and queued 40-60 ms ahead of each GET beside a
            # slower download until they aged out, ten rounds later (p99 of
            # 260-330 ms at 100 ms in bench.long_link); forgetting them
            # without slow start left the next download to grow back by a
            # quarter every few rounds (64 MiB at 100 ms: 116 -> 80 MB/s).
            # Before the jump below, which records the connection's pace.
            # (The best pace slow start saw, if the answer before ended in it.)
            shown = max(self._best, self._last) if self._starting else 0.0
            self._learn_carried(now, shown)
            self._start_again()
            if self.grown:
                self._rejoin(chan, now, shown)
        if limit > self._limit and self._starting and not self.grown:
            # The stream's first top-up, on a connection known to be long:
            # straight to what its last full stream carried per round trip.
            learned = self._budget.learned(now)
            if learned > self.window and self._budget.rtt >= LONG:
                self._resize(chan, learned)
                if self.grown:
                    # No slow start then: past what is known it only queues.
                    # (Without growth, the budget spent by other streams for
                    # the moment, it stays in slow start: it ended here, and a
                    # download beside a slow stream that was giving its growth
                    # back grew by a quarter every few rounds, 12 MB/s at 100 ms.)
                    self._starting = False
                    self._paces.append(self._budget.pace)
            elif not learned and self._budget.looks_long():
                # Nothing learned yet (the connection's first stream): slow
                # start's first step now, not a round trip later when the
                # first round ends (the peer had used up half its credit at
                # once, as the jump above assumes too). On a 50 ms link the
                # first download waited two round trips at 1 MiB each.
                self._resize(chan, self._startup_factor() * self.window)
        if limit > self._limit:
            # A top-up went out just now (asyncssh's or ours): time the next
            # round, unless one is being timed already.
            if self._probe is None:
                self._probe = _Probe(self._limit, now, self._delivered)
            self._limit = limit
        if idle:
            # The round under way shows the idleness, not the window or the link.
            self._probe = None
        probe = self._probe
        if probe is not None and arrived > probe.limit:
            self._probe = None
            moved = self._delivered - probe.delivered
            self._round(chan, now - probe.sent_at, moved, now, exact=not late)
        return self.window <= self.base and not self._held_back

    def pause_reading(self, chan: SSHChannel[Any]) -> None:
        """Pause *chan* for its reader (asyncssh's ``pause_reading``): what
        arrives now waits in its buffer, so the top-ups are this tuner's
        until it is empty again (asyncssh's would count none of it), and a
        round that ends meanwhile was timed by the reader."""
        chan.pause_reading()
        self._held_back = True
        set_receive_window(chan, 0)  # asyncssh's top-ups off

    @property
    def held_back(self) -> bool:
        """The reader paused the channel, and what arrived since may still
        wait in its buffer (the tuner makes the top-ups meanwhile)."""
        return self._held_back

    def _round(
        self, chan: SSHChannel[Any], sample: float, moved: int, now: float, *, exact: bool
    ) -> None:
        """A round of *sample* seconds delivered *moved* bytes; not *exact*:
        its end may have waited in the channel's buffer for the reader, so
        the sample is only an upper bound of the credit loop."""
        if sample <= 0:
            # A clock too coarse to time it (it read the same at the top-up
            # and at the round's end: a VM's tick-based clock source): a round
            # of no time tells nothing, and its pace divided by zero inside
            # asyncssh's packet handling.
            return
        budget = self._budget
        # Only an exact sample tells the link's round trip: one timed by a
        # slow reader made a busy loopback look like a long link.
        rtt = budget.sampled(sample, now) if exact else budget.rtt
        if not rtt:
            return  # no exact sample yet: nothing known of the link
        if rtt < LONG:
            if self.grown:  # the link turned out short after all
                self._resize(chan, self.base)
            return
        if self._settling:
            self._settling = False
            return
        if self._starting and not self._last and moved <= self.base and sample > rtt * QUEUED:
            # Slow start's first round, long, having moved no more than a
            # starting window: the peer had not used the credit it started
            # with (its source was slow to start), which shows no queue of
            # the link; judged, it ended slow start at once at the pace of a
            # starting window (a first 64 MiB upload at 100 ms went back to
            # 1 MiB at its first round and took 3.3 s, in a quarter of the
            # bench.long_link runs). The next round judges the step taken.
            return
        pace = moved / sample
        self._paces.append(pace)
        if self._starting:
            queued = sample > rtt * QUEUED
            # A round shows the window of the round before (the top-up that
            # starts it releases what that window allowed), so the pace is
            # compared with the best before the last round.
            rising = pace >= self._best * STARTUP_GAIN
            self._best = max(self._best, self._last)
            self._last = pace
            if rising and not queued:
                # Still speeding up with each doubling: double again, or
                # jump to what the connection's last full stream carried.
                self._flat = 0
                self._resize(chan, max(self._startup_factor() * self.window, budget.learned(now)))
                return
            self._flat += 1
            if self._flat < STARTUP_FLAT and not queued:
                return  # (a round may show the window of two rounds ago)
            # The pace of the rounds that found the limit is the link's; the
            # faster ones before it may have been bursts into a queue.
            self._starting = False
            self._paces.clear()
            self._paces.append(pace)
            self._no_probation()
            ended = True
        else:
            ended = False
        best = max(self._paces)
        if exact:
            # (A round timed by the reader shows the reader's pace, not what
            # the link carries: a new stream would start from that.)
            budget.filled(best, now)
        self._samples.append(sample)
        if self._steady_rounds >= 0:  # (the first round after a change shows the window before)
            self._steady.append((moved, sample))
            self._steady_timed &= exact
        self._steady_rounds += 1
        # What queues for good (the shortest of the last few samples above
        # the round trip; a busy moment on the machine lengthens one sample,
        # not all of them).
        standing = min(self._samples) - rtt
        resting = self._queue_hold > 0
        self._queue_hold -= resting
        if len(self._samples) == QUEUE_ROUNDS and statistics.median(self._samples) - rtt < max(
            LIMITED_MIN, rtt / LIMITED_SHARE
        ):
            # The peer used up its credit and waited for the top-ups of most
            # of the last few rounds (not one: a burst of data that had
            # queued shortens a sample too): the window holds it back (and
            # a change on probation was no loss).
            self._resize(chan, int(self.window * CRUISE_GAIN))
            self._samples.clear()
            self._probe_wait = PROBE_ROUNDS
        elif self._probe_from:
            # A change on probation: the pace decides (a probe that made
            # data queue did not raise it).
            self._judge_probe(chan)
        elif (
            # Three samples, as the docstring says (one, after a change had
            # cleared them, was a busy moment as often as a queue: at 10 ms
            # the upload's window shrank every few rounds), or slow start's
            # last round (four times the window it found the limit with).
            (len(self._samples) == QUEUE_ROUNDS or ended)
            and standing > max(QUEUE_HIGH_MIN, rtt / QUEUE_HIGH_SHARE)
            and not resting
        ):
            # Data queues at the slower end, ahead of every small answer:
            # back to the pace times the round trip, plus the headroom. If
            # the pace falls by as much, it was not a queue but a busy
            # machine's delays, and the window goes back (see PROBE_ROUNDS).
            # (The pace of the rounds that queued: those before may have
            # been faster, before the reader or the source slowed down.)
            pace = statistics.fmean(list(self._paces)[-len(self._samples) :])
            was = self.window
            self._resize(chan, min(self.window, _window_for(best, rtt)))
            self._samples.clear()
            if self.window < was and pace:
                self._probe_from, self._probe_pace = was, pace
        elif self._steady_rounds >= self._probe_wait:
            # Neither: the samples cannot tell a window that holds the
            # stream back from one that covers the link on a machine whose
            # wake-ups lengthen every sample. More window tells: it pays
            # only if the peer waited for credit.
            pace = self._steady_pace()
            step = min(
                (CRUISE_GAIN - 1) * self.window, pace * max(QUEUE_HIGH_MIN, rtt / QUEUE_HIGH_SHARE)
            )
            was = self.window
            self._resize(chan, int(self.window + step))
            if self.window > was:
                self._probe_from, self._probe_pace = was, pace

    def _startup_factor(self) -> int:
        """Slow start's growth per round: by more for a stream alone on the
        connection (no other holds growth), as nothing queues behind its
        overshoot but what a queue check takes back a round later."""
        alone = self._budget.granted <= self.window - self.base
        return STARTUP_FACTOR_ALONE if alone else STARTUP_FACTOR

    def _steady_pace(self) -> float:
        """Bytes/s over the last few rounds at the window the stream has (0: none yet)."""
        took = sum(s for _, s in self._steady)
        return sum(m for m, _ in self._steady) / took if took else 0.0

    def _judge_probe(self, chan: SSHChannel[Any]) -> None:
        """A change of the window on probation (a probe's growth, a queue's
        shrink) has run for a few rounds: keep it if the pace followed as
        far as it would if the window alone set it (up: rose; down: did
        not fall), else go back, and wait longer before the next."""
        was = self._probe_from
        if self._steady_rounds < PROBE_ROUNDS:
            return
        # The pace the change must keep: a window-limited stream's moves by
        # as much as its window, one that fills the link not at all.
        needed = self._probe_pace * (1 + PROBE_SHARE * (self.window - was) / was)
        grew = self.window > was
        # A round timed by the reader shows the reader's pace, not the
        # window's: a shrink stays (the reader holds the stream back), a
        # growth goes.
        kept = self._steady_pace() >= needed if self._steady_timed else not grew
        if kept:
            self._probe_from = 0
            if grew:
                # The stream waited for credit: the rounds at this window
                # are the measure of the next probe, at once.
                self._probe_wait = PROBE_ROUNDS
            else:
                self._queue_wait = PROBE_ROUNDS
            log.debug("window_kept", window=self.window, was=was, pace=round(self._steady_pace()))
            return
        if grew:
            self._probe_wait = min(2 * self._probe_wait, PROBE_WAIT_MAX)
            self._resize(chan, was)
        else:
            # The pace fell with the window: no queue, but a busy machine's
            # delays in every sample. The queue check rests a while.
            self._resize(chan, was)
            self._queue_hold = self._queue_wait
            self._queue_wait = min(2 * self._queue_wait, PROBE_WAIT_MAX)

    def _resize(self, chan: SSHChannel[Any], wanted: int) -> None:
        wanted = max(self.base, wanted)
        if wanted > self.window:
            got = self._budget.take(wanted - self.window)
            if got < wanted - self.window and self._reclaim():
                got += self._budget.take(wanted - self.window - got)
            wanted = self.window + got
        else:
            self._budget.give_back(self.window - wanted)
            self._settling = wanted < self.window
        if wanted != self.window:
            # The rounds before a change tell nothing of the new window, and
            # a probe ends with any change but its own (which sets it again).
            self._probe_from = 0
            self._steady.clear()
            self._steady_rounds, self._steady_timed = -1, True
            log.debug(
                "receive_window",
                window=wanted,
                was=self.window,
                rtt_ms=round(self._budget.rtt * 1000, 1),
                budget=self._budget.granted,
            )
            self.window = wanted
            if not self._held_back:  # (else set once the buffer is empty)
                set_receive_window(chan, wanted)

    def _reclaim(self) -> bool:
        """The budget is spent: streams that sat idle (no delivery for
        ``IDLE`` round trips: a finished answer kept in the relay's pool)
        give their growth back, and start as a new stream when they carry
        data again (at their first top-up, the jump to what the connection
        learned). Without this, a download that grew to the whole budget and
        then sat idle in the pool kept a later download on another stream at
        its starting window (11 MB/s at 100 ms in `make bench`). Its peer may
        still hold credit from before: a burst of at most that much, once,
        beyond the budget.

        Not a stream whose reader holds it back now (a caller or API that
        reads slowly or stopped: its channel paused): no delivery for a
        while, but what arrived waits in its buffer, and its peer may send
        the rest of the credit it was granted. That growth is in use, in
        the receiver's memory. Taken back, it went to another stream, which
        grew, its reader slowed, and it was taken back in turn: 20 downloads
        whose callers took a piece every 0.1 s left 29-32 MB waiting in the
        relay, on a 4 MiB budget and 20 MiB of starting windows (CI, issue
        22). Such a stream keeps its growth until its reader drains it or
        the stream closes (the relay cuts a caller that reads nothing for
        its ``http_idle_timeout``); the agent's other streams move at their
        starting windows meanwhile. (Not one that paused and then read
        again with nothing waiting: ``held_back`` stays set until its next
        delivery, but the stream is idle; skipping on that flag alone would
        keep a finished download's growth in the pool.)
        """
        budget = self._budget
        if budget.rtt < LONG:
            return False
        now = self._clock()
        freed = False
        for tuner in list(budget.tuners):
            chan = tuner._chan
            if tuner is self or not tuner.grown or chan is None:
                continue
            if chan._recv_paused:
                continue  # its reader holds it back now (data waits only while paused)
            if now - tuner._last_at > IDLE * budget.rtt:
                tuner._resize(chan, tuner.base)
                tuner._start_again()
                freed = True
        return freed

    def _rejoin(self, chan: SSHChannel[Any], now: float, shown: float = 0.0) -> None:
        """A grown stream's next answer, after idleness: no slow start (past
        what is known it only queues); to what the connection's last full
        stream carried per round trip, as a new stream jumps at its first
        top-up, or, with nothing learned (no exact round yet), the window it
        has, but no more than the best pace *shown* (bytes/s) by the slow
        start that the answer before ended in, times the round trip (slow
        start then goes on). Slow start from the grown window took its first
        round as rising (against no pace yet) and quadrupled it, up to the whole budget:
        68 MB queued ahead of the GETs beside the download at 100 ms (GETs of
        3-5 round trips in bench.long_link). And a download that ended in
        slow start, just after its last step (to the whole budget, 16 times
        what its rounds had shown), left that window to the next answer: 68
        MB queued ahead of the GETs beside it at 100 ms (p99 344 ms)."""
        budget = self._budget
        rtt = budget.rtt
        if rtt < LONG:
            return
        self._starting = False
        self._no_probation()  # (a probe of the answer before judges nothing now)
        if budget.learned(now):
            # With the headroom a queue leaves it (without it, each restart
            # took a little off the pace, and a stall mid-download is one
            # too). Not the connection's pace among this answer's: a slower
            # answer's window would be sized by it for ten rounds.
            self._resize(chan, _window_for(budget.pace, rtt))
        elif shown:
            # And slow start goes on from there: a round must beat what was
            # shown to grow it again (a stream whose first rounds showed
            # little, before its window grew, needs the growth still).
            self._resize(chan, min(self.window, _window_for(shown, rtt)))
            self._starting = True
            self._best = shown

    def _carry(self, arrived: int, at: float) -> None:
        """The span under way ends with *arrived* bytes in at *at*; the next begins."""
        carried = (arrived - self._span_from) / (at - self._span_at)
        self._carried = max(self._carried, carried)
        self._span_at, self._span_from = at, arrived

    def _learn_carried(self, now: float, shown: float) -> None:
        """The answer before ended: if the link carried more than its rounds
        showed (the best of them, or what the connection learned) by
        ``STARTUP_GAIN``, over a span of at least half a round trip, that is what
        the connection learns. An answer that ends before a round has timed
        its grown window (a 64 MiB transfer at 100 ms: slow start's step to
        68 MiB, then the transfer is over) showed only the pace of the
        window before (16 MiB a round trip: 163 MB/s), so the next answer on
        the pooled stream rejoined at that, and the one after at 118-153
        MB/s where the link had carried 273-349 (``bench.long_link --rtt 100
        --points up,down``, repetitions 3 and 4 against 2). Unlike the
        window a slow start stepped to, this pace was seen to pass the link
        (28a's rejoin rule)."""
        carried, self._carried = self._carried, 0.0
        budget = self._budget
        known = max(shown, budget.pace) if budget.learned(now) else shown
        if budget.rtt < LONG:
            return
        # Nor less than a starting window per round trip, which any stream
        # may move: a stream that carried only request heads (a few KB/s)
        # taught an agent with nothing learned 2-3 KB/s, and its next upload
        # neither jumped (to 300 bytes) nor took slow start's first step at
        # its first top-up (something was learned): 104 MB/s at 100 ms,
        # against 150-210.
        known = max(known, self.base / budget.rtt)
        if carried > known * STARTUP_GAIN:
            log.debug("pace_carried", pace=round(carried), shown=round(known))
            budget.filled(carried, now)

    def _no_probation(self) -> None:
        """Slow start ended (or was skipped): no change on probation, no
        queue check resting, and no rounds yet at the window it found."""
        self._probe_from, self._probe_wait = 0, PROBE_ROUNDS
        self._queue_hold, self._queue_wait = 0, PROBE_ROUNDS
        self._steady.clear()  # (rounds of slow start, or of an answer before)
        self._steady_rounds, self._steady_timed = 0, True

    def _start_again(self) -> None:
        self._starting = True
        self._best = self._last = 0.0
        self._flat = 0
        self._paces.clear()
        self._samples.clear()
        self._probe = None

    def release(self) -> None:
        """The stream closed: its growth goes back to the budget."""
        self._budget.tuners.discard(self)
        self._budget.give_back(self.window - self.base)
        self.window = self.base


class ShortWindow:
    """A stream's receive window on a link known short when its connection
    was set up (``short_link``: loopback, a LAN): its starting size for good,
    as a ``WindowTuner`` keeps it there (nothing grows below ``LONG``), but
    without timing a round or a span per delivery. Its owner feeds it only
    while ``feed`` is set, which is only while the reader holds the stream
    back: what waits in the channel's buffer then counts against the window,
    and the top-ups are this object's (as a ``WindowTuner``'s not grown) until
    the buffer is empty. (issue 22: the tuner's ``received`` was about 90
    bytecodes and a call a packet in each process, for every small request
    and answer, on a link where none of it could change the window.)

    Unlike a ``WindowTuner``, it does not notice a link that turns long
    later (a route that changes under a kept connection; the tuner renews its
    round trip every ``REMEMBER`` seconds): the stream keeps its starting
    window, as asyncssh's would."""

    __slots__ = ("base", "feed", "window")

    grown = False

    def __init__(self, base: int) -> None:
        self.base = self.window = base
        # Feed me received(): the reader paused the channel, and data may
        # wait in its buffer (asyncssh's top-ups are off until it is empty).
        self.feed = False

    def __repr__(self) -> str:
        return f"<ShortWindow {self.window}{' held back' if self.feed else ''}>"

    @property
    def held_back(self) -> bool:
        return self.feed

    def received(self, chan: SSHChannel[Any], size: int) -> bool:
        """*size* bytes were delivered from *chan* while held back: top up
        what the window allows, counting what still waits in the buffer, and
        hand the top-ups back to asyncssh once it is empty (``WindowTuner``'s
        own, for a window not grown). Returns whether the window may be
        shared now (not held back)."""
        if not self.feed:
            return True
        waiting = chan._recv_buf
        held = sum(len(item[0]) for item in waiting) if waiting else 0
        credit = chan._recv_window
        window = self.window
        if not held:
            self.feed = False
            set_receive_window(chan, window)
        if credit + held <= window - window // 2:
            more = window - held - credit
            send_window_adjust(chan, more)
            chan._recv_window = credit + more
        return not self.feed

    def pause_reading(self, chan: SSHChannel[Any]) -> None:
        """Pause *chan* for its reader: the top-ups are this object's until
        its buffer is empty again (``WindowTuner.pause_reading``)."""
        chan.pause_reading()
        self.feed = True
        set_receive_window(chan, 0)  # asyncssh's top-ups off

    def release(self) -> None:
        """Nothing was taken from a budget."""


def short_link(setup_rtt: float | None, kernel_rtt: float | None, limit: float = LONG) -> bool:
    """Whether a connection whose setup took *setup_rtt* seconds (a login,
    a request the peer refused: one round trip plus both ends' work, never
    shorter than the link's) over a socket whose kernel's smoothed round
    trip is *kernel_rtt* (never longer than the link's, but only to the
    next TCP hop: behind a TCP proxy it looks near) runs over a link shorter
    than *limit* seconds: both below it. By default, ``LONG``: a link where
    no window would grow. None or 0: not timed (not short). The one rule
    for a short link (also ``server.tunnel.link_window``'s, with its own
    limit)."""
    return (
        setup_rtt is not None
        and kernel_rtt is not None
        and 0 < setup_rtt < limit
        and kernel_rtt < limit
    )


class FixedWindow:
    """asyncssh's own fixed window, where Sluice may not touch a channel's
    window (the asyncssh tweaks are off or did not pass their shape check):
    a ``WindowTuner`` that only pauses."""

    grown = False
    held_back = False
    feed = False  # received() does nothing: owners need not call it

    def received(self, chan: SSHChannel[Any], size: int) -> bool:
        """Nothing to do: asyncssh tops the window up. (Shareable, as a
        ``WindowTuner`` neither grown nor held back.)"""
        return True

    def pause_reading(self, chan: SSHChannel[Any]) -> None:
        """Pause *chan* for its reader (asyncssh's ``pause_reading``)."""
        chan.pause_reading()

    def release(self) -> None:
        """Nothing was taken from a budget."""


def window_tuner(
    budget: WindowBudget, base: int, short: bool = False
) -> WindowTuner | ShortWindow | FixedWindow:
    """A stream's receive window: one that follows the link, from *base*
    bytes up to what *budget* allows, where ``windows_adjustable`` (of
    *base* for good where the link is *short*: ``short_link``); else
    asyncssh's fixed one."""
    if not windows_adjustable():
        return FixedWindow()
    return ShortWindow(base) if short else WindowTuner(budget, base)


def _window_for(pace: float, rtt: float) -> int:
    """The window that carries *pace* bytes/s over a round trip of *rtt*
    seconds, with the headroom a queue may leave (``HEADROOM_*``), counted
    at the credit left just before a top-up (``TOP_UP_SHARE``)."""
    headroom = max(HEADROOM_MIN, rtt / HEADROOM_SHARE)
    low = 1 - 1 / TOP_UP_SHARE
    return int(pace * (rtt + headroom) / low)
