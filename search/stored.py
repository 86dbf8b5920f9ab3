"""Stored run configs: what a run records of its config, and the one way a stored config
becomes a :class:`~search.config.RunConfig` again (older versions migrated, or refused in
one line)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

from pydantic import ValidationError

from search.config import ConfigError, RunConfig, one_line

if TYPE_CHECKING:
    from storage.records import StoredRun

CONFIG_VERSION = 2  # of a stored run config; see load_config


def _from_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 (stored before versions were recorded) has version 2's fields; version 2
    bounds what a user can mean, so a version-1 value past a bound is refused on load."""
    return data


# _MIGRATIONS[i] turns a stored config of version i + 1 into one of version i + 2.
_MIGRATIONS: tuple[Callable[[dict[str, Any]], dict[str, Any]], ...] = (_from_version_1,)


def stored_config(config: RunConfig) -> dict[str, Any]:
    """What a run records of its config: its fields and :data:`CONFIG_VERSION`."""
    return {**config.model_dump(), "config_version": CONFIG_VERSION}


def load_config(data: Mapping[str, Any], owner: str) -> RunConfig:
    """The one way a stored config (:func:`stored_config`, or an older version) becomes a
    :class:`RunConfig` again: older versions are migrated step by step; ConfigError, one
    line naming ``owner``, for a version this code does not know or values that no longer
    validate."""
    fields = dict(data)
    version = fields.pop("config_version", 1)
    if type(version) is not int or version < 1:
        raise ConfigError(f"{owner}: stored config has no valid config_version ({version!r})")
    if version > CONFIG_VERSION:
        raise ConfigError(
            f"{owner} was stored by a newer ftprune (config version {version}; this one "
            f"reads versions 1 to {CONFIG_VERSION}): upgrade ftprune"
        )
    for migrate in _MIGRATIONS[version - 1 :]:
        fields = migrate(fields)
    try:
        return RunConfig(**fields)
    except ValidationError as exc:
        raise ConfigError(
            f"{owner}: its stored config (version {version}) cannot be used: {one_line(exc)}"
        ) from None


def load_run_config(row: StoredRun) -> RunConfig:
    """The config of a stored run (a ``storage`` run row): :func:`load_config`."""
    return load_config(row.config, f"run {row.name!r}")
