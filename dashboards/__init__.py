"""Dashboards: read-only views over the storage query functions (built by a later milestone)."""
