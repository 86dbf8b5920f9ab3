"""Revisions, oldest first; 0001 is the schema ftprune had before migrations existed.
Migrations only go forward: a revision defines ``upgrade`` and no ``downgrade``."""
