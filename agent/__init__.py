"""The Sluice agent: dials out to the relay and keeps its reverse tunnel open."""

import sluice  # noqa: F401  (before asyncssh: sluice/__init__.py quiets its import warning)
