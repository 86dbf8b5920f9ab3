"""The shapes every task source produces: a multiple-choice example, a task, and the one
error type whose message is a single line for the user."""

from __future__ import annotations

from dataclasses import dataclass

METRICS = ("acc", "acc_norm")


class TaskError(ValueError):
    """A task that cannot be used as asked; the message is one line for the user."""


@dataclass(frozen=True)
class ChoiceExample:
    """One multiple-choice question: the prompt, the continuations scored after it, and the
    indices (into ``choices``) of the correct ones (never empty).

    ``contexts``, when given, holds one prompt per choice and replaces ``context`` (lm-eval's
    multiple-input tasks: WinoGrande scores one continuation after each option-filled
    sentence)."""

    context: str
    choices: tuple[str, ...]
    correct: frozenset[int]
    contexts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.contexts and len(self.contexts) != len(self.choices):
            raise ValueError("contexts must hold one prompt per choice")

    def context_of(self, choice: int) -> str:
        """The prompt that choice ``choice`` is scored after."""
        return self.contexts[choice] if self.contexts else self.context


@dataclass(frozen=True)
class ChoiceTask:
    """A named task: its examples in a fixed order, the metrics it reports (a subset of
    :data:`METRICS`, as lm-eval reports them for the same task) and the one a suite
    summarizes (``primary``)."""

    name: str
    examples: tuple[ChoiceExample, ...]
    metrics: tuple[str, ...] = METRICS
    primary: str = "acc"

    @property
    def chance(self) -> float:
        """Expected accuracy of a uniformly random pick (mean share of correct choices)."""
        shares = [len(e.correct) / len(e.choices) for e in self.examples]
        return sum(shares) / len(shares) if shares else 0.0
