"""The relay's HTTP API, its OpenAPI document, problems, metrics and the console."""
