"""Typed labels of the rows a run stores for its routers and held-out measurements.

The database keeps a label as text (``to_json``); ``from_json`` is the only place that
reads one back, and refuses text that is no label of its kind.

- :class:`HeldoutLabel`: ``uniform`` and ``best`` (step 1: the uniform and the searched
  schedule, static router), ``dynamic-<r>`` (round r's start schedule with the router
  trained in that round), ``finetuned-<r>`` (round r's fine-tuned schedule with it).
- :class:`RouterLabel`: ``round-<r>`` (the pipeline's round r, or ``router train``'s
  default) or any other name a user gave ``router train --label``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast

Step = Literal["uniform", "best", "dynamic", "finetuned"]
_ROUND = re.compile(r"(dynamic|finetuned|round)-([1-9][0-9]*)")


@dataclass(frozen=True)
class HeldoutLabel:
    """Which held-out row: ``step``, and for the pipeline's rows its ``round``."""

    step: Step
    round: int | None = None

    def __post_init__(self) -> None:
        if (self.round is None) != (self.step in ("uniform", "best")):
            raise ValueError(f"held-out step {self.step!r} with round {self.round!r}")

    def to_json(self) -> str:
        return self.step if self.round is None else f"{self.step}-{self.round}"

    @classmethod
    def from_json(cls, text: str) -> HeldoutLabel:
        if text in ("uniform", "best"):
            return cls(cast(Step, text))
        match = _ROUND.fullmatch(text)
        if match is None or match[1] == "round":
            raise ValueError(f"not a held-out label: {text!r}")
        return cls(cast(Step, match[1]), int(match[2]))


UNIFORM, BEST = HeldoutLabel("uniform"), HeldoutLabel("best")


@dataclass(frozen=True)
class RouterLabel:
    """A router's name within its run: round ``round``, or a user's ``name``."""

    round: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if (self.round is None) == (self.name is None):
            raise ValueError("a router label is a round or a name, not both or neither")
        if self.name is not None and (not self.name or _ROUND.fullmatch(self.name)):
            raise ValueError(f"router name {self.name!r} is empty or reads as a label")

    def to_json(self) -> str:
        return f"round-{self.round}" if self.round is not None else str(self.name)

    @classmethod
    def from_json(cls, text: str) -> RouterLabel:
        match = _ROUND.fullmatch(text)
        if match is not None and match[1] == "round":
            return cls(round=int(match[2]))
        return cls(name=text)

    @property
    def finetuned(self) -> HeldoutLabel | None:
        """The held-out row of the schedule fine-tuned with this router (rounds only)."""
        return None if self.round is None else HeldoutLabel("finetuned", self.round)
