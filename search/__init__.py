"""Search: decides which schedules to try next and records what happened (the genetic
algorithm, the coordinator, run configs)."""
