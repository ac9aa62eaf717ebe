"""Run the Alembic migrations programmatically (service start, tests, `neffcache-server migrate`)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from neffcache.db.session import normalise_url

# A package resource, so the migrations run the same from a checkout, an editable install or a wheel.
SCRIPT_LOCATION = "neffcache.migrations:"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    # Alembic reads this through ConfigParser: escape '%' in passwords.
    cfg.set_main_option("sqlalchemy.url", normalise_url(database_url).replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)
