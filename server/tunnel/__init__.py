"""The tunnel: agents' SSH sessions, the channels opened through them, and
HTTP/1.1 over those channels."""
