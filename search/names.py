"""Names a user gives to what ftprune stores: runs and routers. A name also becomes a
directory (``artifacts_dir/<run>/<router label>``), and a run is addressed by its id or its
name, so a name must be a plain directory name and must not look like an id or like the
names ftprune generates."""

from __future__ import annotations

import re

from search.errors import ConfigError

NAME_MAX = 100
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@=-]*")
_RESERVED_NAMES = (
    (re.compile(r"\d+"), "looks like a run id (runs are named by id or name)"),
    (re.compile(r"run-\d+"), "is the form of the names given to runs without one"),
    (re.compile(r".*-finetune-\d+"), "is the form of the pipeline's fine-tuning runs"),
)


def check_name(name: object, what: str) -> str:
    """``name`` if it can name something stored and a directory of its own: 1 to
    :data:`NAME_MAX` characters, letters, digits and ``._+@=-``, starting with a letter or
    digit; ConfigError (one line) otherwise."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{what} must be a non-empty string")
    if len(name) > NAME_MAX:
        raise ConfigError(f"{what} is {len(name)} characters long; at most {NAME_MAX}")
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"{what} {name!r} may hold only letters, digits and ._+@=- and must "
            "start with a letter or digit"
        )
    return name


def check_run_name(name: object) -> str:
    """:func:`check_name` for a run name a user gives, also refusing the forms that stored
    runs' ids and generated names take (a name like ``12`` would shadow run id 12)."""
    name = check_name(name, "run_name")
    for pattern, reason in _RESERVED_NAMES:
        if pattern.fullmatch(name):
            raise ConfigError(f"run_name {name!r} {reason}: choose another")
    return name
