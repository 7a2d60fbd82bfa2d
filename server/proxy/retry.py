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
In a cluster the deadline is shared through ``on_limited`` (see
docs/TRAFFIC.md).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from multidict import CIMultiDictProxy
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from server.connections.model import RateLimit
from server.proxy.engine import REPLAY_LIMIT, Handle, _buffer_small
from server.proxy.headers import Fields
from server.proxy.success_path import as_comparable, lookup
from server.tunnel.http1 import Answer, Body

log = structlog.get_logger("sluice.relay.retry")

# Full-jitter backoff when the API names no wait: 0-1 s, 0-2 s, 0-4 s, ...
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


class _Bytes:
    """A kept body, read like an answer's stream."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self, n: int = -1) -> bytes:
        if n < 0 or n >= len(self._data):
            data, self._data = self._data, b""
        else:
            data, self._data = self._data[:n], self._data[n:]
        return data

    async def iter_any(self) -> AsyncIterator[bytes]:
        if self._data:
            data, self._data = self._data, b""
            yield data


class KeptAnswer:
    """An answer whose body the relay read (to look at its fail path)."""

    def __init__(self, answer: Answer, body: bytes) -> None:
        self.status = answer.status
        self.reason = answer.reason
        self.headers: CIMultiDictProxy[str] = answer.headers
        self.raw_headers: Sequence[tuple[bytes, bytes]] = answer.raw_headers
        self.content_length: int | None = len(body)
        self.content = _Bytes(body)
        self.body = body

    async def read(self) -> bytes:
        return await self.content.read()

    def release(self) -> None:
        return None

    async def __aenter__(self) -> KeptAnswer:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None


async def keep_if_checkable(answer: Answer, rule: RateLimit) -> Answer:
    """The answer with its body read when the fail path must be checked: a
    200 of known length up to REPLAY_LIMIT. Anything else passes untouched."""
    if rule.fail_path is None or answer.status != 200:
        return answer
    length = answer.content_length
    if length is None or length > REPLAY_LIMIT:
        return answer
    try:
        body = await answer.read()
    finally:
        answer.release()
    return KeptAnswer(answer, body)


def is_limited(answer: Answer, rule: RateLimit) -> bool:
    """Whether *answer* means "too many requests" under *rule*."""
    if rule.fail_status is not None and answer.status == rule.fail_status:
        return True
    if rule.fail_path is None or not isinstance(answer, KeptAnswer):
        return False
    try:
        found, value = lookup(json.loads(answer.body), rule.fail_path)
    except (ValueError, RecursionError):
        return False
    return found and as_comparable(value) in rule.fail_values


@dataclass
class LimitGate:
    """One connection's "limited until" deadline and its probe.

    Transitions never await; :meth:`pass_through` is the only waiting part.
    """

    until: float = 0.0  # time.monotonic()
    needs_probe: bool = False
    probing: asyncio.Future[None] | None = None
    waiting: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def limited(self, seconds: float) -> None:
        """An answer said "limited": nobody goes before now + *seconds*."""
        self.until = max(self.until, time.monotonic() + seconds)
        self.needs_probe = True
        self._wake()

    def probed(self) -> None:
        """The probe came back not limited: everyone may go."""
        self.needs_probe = False
        self._wake()

    def end_probe(self) -> None:
        if self.probing is not None and not self.probing.done():
            self.probing.set_result(None)
        self.probing = None
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def pass_through(self) -> bool:
        """Wait until a request may go to the API; True when it goes as the probe
        (it must then call :meth:`probed` or :meth:`limited`, and :meth:`end_probe`)."""
        self.waiting += 1
        try:
            while True:
                now = time.monotonic()
                changed = self._changed
                if self.until > now:
                    # A deadline is a time, not an event: wait for it, or for
                    # a new one (another relay of the cluster, a later limit).
                    try:
                        async with asyncio.timeout(self.until - now):
                            await changed.wait()
                    except TimeoutError:
                        pass
                    continue
                if not self.needs_probe:
                    return False
                if self.probing is None:
                    self.probing = asyncio.get_running_loop().create_future()
                    return True
                await changed.wait()
        finally:
            self.waiting -= 1


@dataclass
class Sent:
    """An answer and how many times the request was sent again for it."""

    answer: Answer
    retries: int


class RateLimits:
    """Every connection's limit gate on this relay, and the retrying send."""

    def __init__(
        self,
        on_limited: Callable[[str, float], None] | None = None,
        count: Callable[[str, str], None] | None = None,
    ) -> None:
        self._gates: dict[str, LimitGate] = {}
        self._on_limited = on_limited
        self._count = count

    def __repr__(self) -> str:
        return f"<RateLimits gates={len(self._gates)}>"

    def gate(self, key: str) -> LimitGate:
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = LimitGate()
        return gate

    def limited_elsewhere(self, key: str, until_wall: float) -> None:
        """Another relay of the cluster saw a limit until *until_wall* (time.time())."""
        self.gate(key).limited(max(0.0, until_wall - time.time()))

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
        gate = self.gate(key)
        replay: bytes | None = body if isinstance(body, bytes) else None
        if body is not None and replay is None:
            replay, body = await _buffer_small(body)
        attempts = 0
        waited = 0.0
        once = body is not None and replay is None  # streamed past REPLAY_LIMIT

        async def attempt() -> Answer:
            nonlocal attempts, waited
            attempts += 1
            probe = await gate.pass_through()
            try:
                sent = await send(handle, method, relative, headers, body if once else replay)
                answer = await keep_if_checkable(sent, rule)
            except BaseException:
                if probe:
                    gate.end_probe()
                raise
            if is_limited(answer, rule):
                # The gate closes before the probe ends, so no waiter slips out.
                state = RetryCallState(retrying, None, (), {})
                state.attempt_number = attempts
                waited = wait_for(answer, rule, state)
                gate.limited(min(waited, rule.max_wait_seconds))
                self._counted(key, "limited")
                if self._on_limited is not None:
                    self._on_limited(key, time.time() + waited)
            elif probe:
                gate.probed()
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
