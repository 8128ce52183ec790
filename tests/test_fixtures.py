"""The shared fixtures do what the other tests rely on.

Why: a pg_engine that leaked tables between tests, or an AIRFLOW_HOME that pointed at the real
one, would make every other test's result meaningless.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

_SCHEMAS_SEEN: list[str] = []


def test_should_use_a_throwaway_airflow_home(airflow_home: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    assert Path(os.environ["AIRFLOW_HOME"]) == airflow_home
    assert root not in airflow_home.parents
    assert os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"


def test_should_give_each_test_an_empty_schema_of_its_own(pg_engine: Engine, pg_url: str) -> None:
    with pg_engine.begin() as conn:
        schema = conn.execute(sa.text("select current_schema()")).scalar_one()
        assert schema.startswith("test_")
        assert conn.execute(sa.text("select count(*) from pg_tables where schemaname = current_schema()")).scalar() == 0
        conn.execute(sa.text("create table probe (id integer primary key)"))
        conn.execute(sa.text("insert into probe values (1) on conflict (id) do nothing"))
    assert sa.inspect(pg_engine).get_table_names() == ["probe"]
    _SCHEMAS_SEEN.append(schema)


def test_should_drop_the_schema_after_the_test(pg_url: str) -> None:
    # runs after the test above (file order): its schema must be gone
    assert _SCHEMAS_SEEN, "the pg_engine test did not run first"
    admin = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        found = conn.execute(
            sa.text("select count(*) from information_schema.schemata where schema_name = :s"), {"s": _SCHEMAS_SEEN[-1]}
        ).scalar()
    admin.dispose()
    assert found == 0
