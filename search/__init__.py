"""Search: decides which schedules to try next and records what happened (the coordinator,
the genetic algorithm, the command line)."""

__version__ = "0.1.0"
