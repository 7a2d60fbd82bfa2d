"""Secrets: the master key, sealed values, the admin token and the SSH host key."""
