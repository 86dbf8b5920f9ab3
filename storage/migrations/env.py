"""Alembic environment: migrates ftprune's tables on the connection :mod:`storage.migrate`
passes in (no URL, no ``alembic.ini``), inside that connection's transaction."""

from alembic import context

from storage.migrate import context_options

context.configure(connection=context.config.attributes["connection"], **context_options())
with context.begin_transaction():
    context.run_migrations()
