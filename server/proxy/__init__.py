"""The proxy: how a request through a connection is built, sent and answered."""
