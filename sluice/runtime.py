"""Process-level setup shared by both programs."""

from __future__ import annotations

import asyncio
import gc
import os


def install_uvloop() -> bool:
    """Use uvloop when available (5-10% less CPU per request); SLUICE_NO_UVLOOP=1 opts out."""
    if os.environ.get("SLUICE_NO_UVLOOP"):
        return False
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def settle_gc() -> None:
    """Exempt everything built during startup from the garbage collector.

    Imports, settings and the store leave a few hundred thousand long-lived
    objects. Every full collection walked all of them: 40-90 ms with the
    event loop stopped, which showed as a ~35 ms p99 on short requests.
    Frozen, they are never scanned again; a full collection then walks only
    what was made since. Call once, when the process is up.
    """
    gc.collect()
    gc.freeze()
