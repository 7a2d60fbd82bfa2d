"""Settings loading shared by relay and agent: env, optional TOML file, clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings import SettingsError as PydanticSettingsError

from sluice.addresses import HostPort

S = TypeVar("S", bound=BaseSettings)


class SettingsError(Exception):
    """Invalid configuration: every line names a setting and says what is wrong."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n" + "\n".join(f"  - {p}" for p in problems))


def load_settings(cls: type[S], config_file: Path | None = None, **overrides: Any) -> S:
    """Build *cls* from (highest first) overrides, environment, TOML file, defaults.

    Raises SettingsError naming each bad setting (and its environment variable)
    with the reason; the offending values are never echoed, since some are secrets.
    """
    if config_file is not None and not config_file.is_file():
        raise SettingsError([f"config file {str(config_file)!r}: no such file"])

    class _FromFile(cls):  # type: ignore[valid-type,misc]
        model_config = SettingsConfigDict(toml_file=config_file)

        @classmethod
        def settings_customise_sources(
            cls_,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls))
            return tuple(sources)

    _FromFile.__name__ = cls.__name__
    _FromFile.__qualname__ = cls.__qualname__
    prefix = str(cls.model_config.get("env_prefix", ""))
    try:
        return _FromFile(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc, env_prefix=prefix)) from None
    except PydanticSettingsError as exc:
        # A value the source itself could not decode (bad JSON, bad TOML).
        raise SettingsError([str(exc)]) from None


def describe_errors(exc: ValidationError, *, env_prefix: str = "") -> list[str]:
    """One line per problem: 'setting (ENV_VAR): reason' — never the input value."""
    problems = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = [str(p) for p in err["loc"]]
        reason = err["msg"].removeprefix("Value error, ")
        if not loc:  # a check across settings; its message names them
            problems.append(reason)
            continue
        env = f" ({env_prefix}{loc[0]})".upper() if env_prefix else ""
        problems.append(f"{'.'.join(loc)}{env}: {reason}")
    return problems


# -- 'before' validators both programs' settings use ------------------------------
def split_list(value: Any) -> Any:
    """A list setting as JSON or as "a, b, c" (how the environment gives it)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part for part in text.replace("\n", ",").split(",") if part.strip()]
    return value


def address(value: Any, *, default_port: int | None = None, off: bool = False) -> Any:
    """A host:port setting given as text; with *off*, the word 'off' is None."""
    if not isinstance(value, str):
        return value
    if off and value.strip().lower() == "off":
        return None
    return HostPort.parse(value, default_port=default_port)


def addresses(value: Any, *, default_port: int | None = None) -> Any:
    """A list of host:port settings, at least one."""
    value = split_list(value)
    if not isinstance(value, list):
        return value
    if not value:
        raise ValueError("at least one address is required")
    return [address(item, default_port=default_port) for item in value]
