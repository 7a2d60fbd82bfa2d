"""The cluster: relays on one database acting as one system (change feed,
shared identity, presence, forwarding between relays)."""
