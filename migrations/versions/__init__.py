"""Alembic revisions (a package so that setuptools installs them as code, not data)."""
