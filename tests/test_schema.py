"""The Table objects in center/db.py mirror what the Alembic migrations create."""

from __future__ import annotations

from sqlalchemy import inspect

from center.storage.db import make_engine, metadata, migrate


def test_migrations_create_exactly_the_tables_and_columns_the_code_uses(db_url):
    engine = make_engine(db_url)
    migrate(engine)
    try:
        inspector = inspect(engine)
        migrated = set(inspector.get_table_names()) - {"alembic_version"}
        assert migrated == set(metadata.tables)
        for name, table in metadata.tables.items():
            columns = {c["name"]: c for c in inspector.get_columns(name)}
            assert set(columns) == {c.name for c in table.columns}, name
            for column in table.columns:
                assert columns[column.name]["nullable"] == column.nullable or column.primary_key, (
                    name,
                    column.name,
                )
    finally:
        engine.dispose()


def test_migrating_twice_changes_nothing(db_url):
    engine = make_engine(db_url)
    migrate(engine)
    before = sorted(inspect(engine).get_table_names())
    migrate(engine)
    assert sorted(inspect(engine).get_table_names()) == before
    engine.dispose()
