"""What the engine puts on the wire, for whoever listens in this task.

The debug log records the request as the API got it (the URL with its
token parameter, the headers with the connection's credentials), which only
the engine knows. The engine calls :func:`sent` before each send; a
listener set with :func:`listen` (in the exchange, for a connection whose
debug window is open) hears it. Nobody listening costs one ContextVar read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from yarl import URL

from server.proxy.headers import Fields

Listener = Callable[[str, URL, str, Fields], None]

_LISTENER: ContextVar[Listener | None] = ContextVar("sluice_wiretap", default=None)


def sent(method: str, origin: URL, target: str, fields: Fields) -> None:
    """Called by the engine before a request goes to the API."""
    listener = _LISTENER.get()
    if listener is not None:
        listener(method, origin, target, fields)


@contextlib.contextmanager
def listen(listener: Listener) -> Iterator[None]:
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)
