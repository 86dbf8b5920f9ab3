"""The error of invalid run input, shared by the config and the name rules."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid config file, override or name; the message is one line for the user."""
