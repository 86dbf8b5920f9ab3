"""The README's cluster recipe, read from README.md so that the tests run what users read.

The recipe is the first ``bash`` block of the README's "On a cluster" section. Its comment
lines at the start of a line name the host that runs the commands below them:
``# on every node and the submitting machine`` (the shell set-up every host runs first),
``# the head node``, ``# every other node`` and ``# the submitting machine``. A command is
one line, or several joined by a trailing backslash, kept as written (trailing comments
included: bash ignores them). :meth:`Recipe.read` replaces the README's addresses,
resources and names with a cluster's own before it splits the block, and refuses a
replacement whose text the block does not hold, so the tests notice when the README moves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## On a cluster"
HOSTS = {
    "# on every node and the submitting machine": "every",
    "# the head node": "head",
    "# every other node": "worker",
    "# the submitting machine": "submit",
}
SETUP = (". ", "export ")  # the lines that only set up the shell


class RecipeError(ValueError):
    """The README's recipe is missing or no longer has the expected shape."""


def recipe_block(readme: Path = README) -> str:
    """The text of the first ``bash`` block of the README's "On a cluster" section."""
    text = readme.read_text()
    start = text.find(f"\n{SECTION}\n")
    if start < 0:
        raise RecipeError(f"{readme} has no section {SECTION!r}")
    found = re.search(r"\n```bash\n(.*?)\n```\n", text[start:], re.DOTALL)
    if found is None:
        raise RecipeError(f"the section {SECTION!r} of {readme} has no bash block")
    return found.group(1)


@dataclass(frozen=True)
class Recipe:
    """The recipe's commands by host: ``every``, ``head``, ``worker`` and ``submit``."""

    commands: dict[str, list[str]]

    @classmethod
    def read(cls, replacements: dict[str, str], readme: Path = README) -> "Recipe":
        """The README's recipe with each key of ``replacements`` replaced by its value."""
        block = recipe_block(readme)
        for old, new in replacements.items():
            if old not in block:
                raise RecipeError(f"the README's cluster recipe no longer holds {old!r}")
            block = block.replace(old, new)
        return cls(split(block))

    def setup(self, host: str) -> list[str]:
        """The lines that set up a shell on ``host``: every host's, then its own."""
        return [c for h in ("every", host) for c in self.commands[h] if c.startswith(SETUP)]

    def actions(self, host: str) -> list[str]:
        """``host``'s commands other than the set-up, in the README's order."""
        return [c for c in self.commands[host] if not c.startswith(SETUP)]

    def action(self, host: str, start: str) -> str:
        """The one command of ``host`` that starts with ``start``."""
        (found,) = [c for c in self.actions(host) if c.startswith(start)]
        return found

    def script(self, host: str, *actions: str) -> str:
        """A bash script that sets up the shell as the recipe does on ``host``, stops at the
        first failing command, and runs ``actions``."""
        return "\n".join(["set -e", *self.setup(host), *actions])


def split(block: str) -> dict[str, list[str]]:
    """The commands of a recipe block by host (see the module docstring)."""
    commands: dict[str, list[str]] = {host: [] for host in HOSTS.values()}
    host: str | None = None
    pending: list[str] = []
    for line in block.splitlines():
        if pending or not line.startswith("#"):
            if not line.strip():
                continue
            if host is None:
                raise RecipeError(f"a command before any host's comment: {line!r}")
            pending.append(line)
            if not line.endswith("\\"):
                commands[host].append("\n".join(pending))
                pending = []
            continue
        named = [h for prefix, h in HOSTS.items() if line.startswith(prefix)]
        if named:
            host = named[0]
    if pending:
        raise RecipeError(f"the recipe ends inside a command: {pending[-1]!r}")
    missing = [h for h, found in commands.items() if not found]
    if missing:
        raise RecipeError(f"the recipe has no commands for {missing}")
    return commands
