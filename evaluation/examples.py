"""The shapes every task source produces: a multiple-choice example, a task, and the one
error type whose message is a single line for the user."""

from __future__ import annotations

from dataclasses import dataclass


class TaskError(ValueError):
    """A task that cannot be used as asked; the message is one line for the user."""


@dataclass(frozen=True)
class ChoiceExample:
    """One multiple-choice question: the prompt, the continuations scored after it, and the
    indices (into ``choices``) of the correct ones (never empty)."""

    context: str
    choices: tuple[str, ...]
    correct: frozenset[int]


@dataclass(frozen=True)
class ChoiceTask:
    name: str
    examples: tuple[ChoiceExample, ...]
