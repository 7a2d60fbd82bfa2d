"""Rate limits: an API's "too many requests" waited out instead of passed on.

An answer is a limit when it has the connection's ``http.rate_limit``
fail status, or is a 200 whose JSON body holds one of ``fail_values`` at
``fail_path``. The relay then waits what the retry header says (seconds or
an HTTP-date), or else backs off exponentially with full jitter (tenacity),
and sends the request again, as long as the request can be replayed (its
body was kept: up to REPLAY_LIMIT); otherwise the caller gets the limited
answer at once.

One limited answer closes the connection's :class:`LimitGate` until the
deadline: every other request of that connection waits for the same
deadline instead of hammering the API, and once it passes a single request
goes first (the probe); the others follow only when it was not limited.
In a cluster the deadline and the probe are shared through a
:class:`SharedLimits` (see docs/TRAFFIC.md).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from server.connections.model import RateLimit
from server.proxy.engine import Handle, _buffer_small
from server.proxy.headers import Fields
from server.proxy.limit_gate import LimitGate, SharedLimits
from server.proxy.limited_answer import is_limited, keep_if_checkable
from server.tunnel.http1 import Answer, Body

log = structlog.get_logger("sluice.relay.retry")

# Full-jitter backoff when the API names no wait: 0-0.5 s, 0-1 s, 0-2 s, ...
BACKOFF_MULTIPLIER = 0.5
RETRIES_HEADER = "Sluice-Retries"

Send = Callable[[Handle, str, str, Fields, Body], Awaitable[Answer]]


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After style value (delta-seconds or an
    HTTP-date); None when there is no usable value."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class Sent:
    """An answer and how many times the request was sent again for it."""

    answer: Answer
    retries: int


class RateLimits:
    """Every connection's limit gate on this relay, and the retrying send.

    A gate is kept only while it holds something (a deadline, a probe owed,
    a request using it), and dropped when its connection is deleted or its
    ``http.rate_limit`` changes (``forget``, or a request that brings other
    settings).
    """

    def __init__(
        self,
        count: Callable[[str, str], None] | None = None,
        shared: SharedLimits | None = None,
    ) -> None:
        self._gates: dict[str, LimitGate] = {}
        self._count = count
        self.shared = shared

    def __repr__(self) -> str:
        return f"<RateLimits gates={len(self._gates)}>"

    def __len__(self) -> int:
        return len(self._gates)

    def gate(self, key: str, rule: RateLimit | None = None) -> LimitGate:
        gate = self._gates.get(key)
        if gate is not None and rule is not None and gate.rule is not None and gate.rule != rule:
            # The settings changed (here or through another relay): the old
            # deadline was the old rule's, let its waiters go.
            gate.opened()
            gate = None
        if gate is None:
            gate = self._gates[key] = LimitGate(rule)
        elif gate.rule is None:
            gate.rule = rule
        return gate

    def forget(self, key: str) -> None:
        """The connection was deleted or its rate_limit edited: drop its gate
        here and, in a cluster, its shared deadline."""
        self.drop(key)
        if self.shared is not None:
            self.shared.reset(key)

    def limited_elsewhere(self, key: str, until_wall: float) -> None:
        """The cluster's deadline for *key* is *until_wall* (time.time())."""
        self.gate(key).limited(max(0.0, until_wall - time.time()), here=False)

    def open_elsewhere(self, key: str) -> None:
        """The cluster holds no limit for *key* (a probe passed, or it was reset)."""
        gate = self._gates.get(key)
        if gate is not None and gate.opened_elsewhere():
            self._drop_if_idle(key, gate)

    def drop(self, key: str) -> None:
        """The connection is gone: its gate too (its waiters go)."""
        gate = self._gates.pop(key, None)
        if gate is not None:
            gate.opened()

    def _drop_if_idle(self, key: str, gate: LimitGate) -> None:
        if gate.idle and self._gates.get(key) is gate:
            del self._gates[key]

    async def _through(self, key: str, gate: LimitGate) -> bool:
        """Pass the gate; in a cluster a probe also needs the cluster's lease."""
        while True:
            probe = await gate.pass_through()
            if not probe or self.shared is None:
                return probe
            try:
                again = await self.shared.take_probe(key)
            except BaseException:
                gate.end_probe()
                raise
            if again is None:
                return True
            gate.hold(max(0.0, again - time.time()))

    async def send(
        self,
        handle: Handle,
        method: str,
        relative: str,
        headers: Fields,
        body: Body,
        send: Send,
    ) -> Sent:
        """Send through *send*, waiting out rate limits as the connection says."""
        rule = handle.connection.http.rate_limit
        if rule is None:
            return Sent(await send(handle, method, relative, headers, body), 0)
        key = handle.id or f"unsaved:{id(handle)}"
        gate = self.gate(key, rule)
        gate.users += 1
        try:
            return await self._send(key, gate, rule, handle, method, relative, headers, body, send)
        finally:
            gate.users -= 1
            self._drop_if_idle(key, gate)

    async def _send(
        self,
        key: str,
        gate: LimitGate,
        rule: RateLimit,
        handle: Handle,
        method: str,
        relative: str,
        headers: Fields,
        body: Body,
        send: Send,
    ) -> Sent:
        replay: bytes | None = body if isinstance(body, bytes) else None
        if body is not None and replay is None:
            replay, body = await _buffer_small(body)
        attempts = 0
        waited = 0.0
        once = body is not None and replay is None  # streamed past REPLAY_LIMIT
        shared = self.shared

        async def attempt() -> Answer:
            nonlocal attempts, waited
            attempts += 1
            probe = await self._through(key, gate)
            try:
                sent = await send(handle, method, relative, headers, body if once else replay)
                answer = await keep_if_checkable(sent, rule)
            except BaseException:
                if probe:
                    gate.end_probe()
                    if shared is not None:
                        shared.released(key)
                raise
            if is_limited(answer, rule):
                # The gate closes before the probe ends, so no waiter slips out.
                state = RetryCallState(retrying, None, (), {})
                state.attempt_number = attempts
                waited = wait_for(answer, rule, state)
                gate.limited(min(waited, rule.max_wait_seconds))
                self._counted(key, "limited")
                if shared is not None:
                    shared.limited(key, time.time() + min(waited, rule.max_wait_seconds))
            elif probe:
                gate.probed()
                if shared is not None:
                    shared.cleared(key)
            if probe:
                gate.end_probe()
            return answer

        def give_back(state: RetryCallState) -> Answer:
            assert state.outcome is not None
            answer: Answer = state.outcome.result()
            return answer

        def before_sleep(state: RetryCallState) -> None:
            assert state.outcome is not None
            state.outcome.result().release()

        async def no_sleep(_seconds: float) -> None:
            """The gate does the waiting: it knows every caller's deadline."""

        retrying = AsyncRetrying(
            retry=retry_if_result(lambda answer: is_limited(answer, rule)),
            wait=lambda _state: waited,
            stop=stop_after_attempt(1 if once else rule.max_retries + 1)
            | _StopPast(rule.max_wait_seconds),
            retry_error_callback=give_back,
            before_sleep=before_sleep,
            sleep=no_sleep,
        )
        answer: Answer = await retrying(attempt)
        return Sent(answer, attempts - 1)

    def _counted(self, key: str, outcome: str) -> None:
        if self._count is not None:
            self._count(key, outcome)

    def collector(self) -> Collector:
        """``sluice_rate_limit_gates``: connections whose gate this relay holds."""
        limits = self

        class _Gates(Collector):
            def collect(self) -> Iterator[Any]:
                family = GaugeMetricFamily(
                    "sluice_rate_limit_gates",
                    "Connections with a rate-limit gate held on this relay "
                    "(limited, owing a probe, or in use).",
                )
                family.add_metric([], float(len(limits)))
                yield family

        return _Gates()


def wait_for(answer: Answer, rule: RateLimit, state: RetryCallState) -> float:
    """How long a limited answer says to wait: its retry header, else full
    jitter over an exponential backoff (attempt 1: 0-0.5 s, 2: 0-1 s, ...)."""
    if rule.retry_header is not None:
        seconds = retry_after_seconds(answer.headers.get(rule.retry_header))
        if seconds is not None:
            return seconds
    backoff = wait_random_exponential(multiplier=BACKOFF_MULTIPLIER, max=rule.max_wait_seconds)
    return float(backoff(state))


class _StopPast(stop_base):
    """Stop when the next wait would take the request past *limit* seconds of waiting."""

    def __init__(self, limit: float) -> None:
        self.limit = limit

    def __call__(self, retry_state: RetryCallState) -> bool:
        return retry_state.idle_for + (retry_state.upcoming_sleep or 0.0) > self.limit
