"""The Sluice relay: stores connections and agents, serves the API, accepts tunnels."""

import sluice  # noqa: F401  (before asyncssh: sluice/__init__.py quiets its import warning)
