"""The Sluice relay: stores connections and agents, serves the API, accepts tunnels."""
