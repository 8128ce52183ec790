"""Airflow connections to SQLAlchemy URLs (crm.db.engines), and `python -m crm.db create-schema`.

Connections are built in memory (airflow.sdk.Connection), as a task receives them: no metadata DB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from airflow.sdk import Connection

from crm.db import crm_schema, engine_from_url, erp_schema
from crm.db.__main__ import main as db_main
from crm.db.engines import url_from_connection

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def test_should_take_the_sqlite_file_from_the_schema_of_a_uri():
    conn = Connection.from_uri("sqlite:////srv/crm/var/crm.db", conn_id="crm_db")
    assert (conn.host, conn.schema) == ("", "/srv/crm/var/crm.db")
    assert url_from_connection(conn) == "sqlite:////srv/crm/var/crm.db"


def test_should_take_the_sqlite_file_from_the_host_when_given_there():
    conn = Connection(conn_id="crm_db", conn_type="sqlite", host="/srv/crm/var/crm.db")
    assert url_from_connection(conn) == "sqlite:////srv/crm/var/crm.db"


def test_should_refuse_a_sqlite_connection_without_a_file():
    conn = Connection(conn_id="erp_db", conn_type="sqlite")
    with pytest.raises(ValueError, match=r"connection 'erp_db': a sqlite connection needs the database file in schema"):
        url_from_connection(conn)


@pytest.mark.parametrize("conn_type", ["postgres", "postgresql", "POSTGRES"])
def test_should_build_a_psycopg2_url_from_the_postgres_fields(conn_type):
    conn = Connection(
        conn_id="crm_db",
        conn_type=conn_type,
        host="db.example",
        port=5433,
        schema="crm",
        login="batch",
        password="p@ss:w/rd",
    )
    url = url_from_connection(conn)
    assert url == "postgresql+psycopg2://batch:p%40ss%3Aw%2Frd@db.example:5433/crm"
    parsed = sa.make_url(url)  # the password survives the escaping
    assert (parsed.password, parsed.host, parsed.port, parsed.database) == ("p@ss:w/rd", "db.example", 5433, "crm")


def test_should_keep_the_driver_of_a_postgresql_plus_driver_type_and_omit_empty_fields():
    conn = Connection.from_uri("postgresql+psycopg://db.example/crm", conn_id="crm_db")
    assert url_from_connection(conn) == "postgresql+psycopg://db.example/crm"


def test_should_prefer_the_sqlalchemy_url_of_the_extra_over_every_field():
    conn = Connection(
        conn_id="erp_db",
        conn_type="mysql",  # unsupported by itself: the extra makes it work
        host="ignored.example",
        extra=json.dumps({"sqlalchemy_url": "mysql+pymysql://erp:secret@erp.example/totvs"}),
    )
    assert url_from_connection(conn) == "mysql+pymysql://erp:secret@erp.example/totvs"


def test_should_name_the_connection_and_type_it_does_not_support():
    conn = Connection(conn_id="erp_db", conn_type="mssql", host="erp.example")
    with pytest.raises(ValueError, match=r"connection 'erp_db': unsupported type 'mssql'.*'sqlalchemy_url'"):
        url_from_connection(conn)


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_should_create_every_crm_table_from_the_command_line_and_leave_existing_ones_alone(tmp_path):
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    env = {**os.environ, "PYTHONPATH": str(PLUGINS)}
    cmd = [sys.executable, "-m", "crm.db", "create-schema", "--url", url]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "crm schema ready" in first.stdout
    assert tables(url) == set(crm_schema.metadata.tables)

    with sa.create_engine(url).begin() as conn:
        conn.execute(crm_schema.company.insert().values(id=1, code="C1", name="Kept"))
        conn.execute(sa.text("DROP TABLE crm_notification"))
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=120)
    assert second.returncode == 0, second.stderr
    assert tables(url) == set(crm_schema.metadata.tables)  # the missing table is back
    with sa.create_engine(url).connect() as conn:
        assert conn.execute(sa.select(crm_schema.company.c.name)).scalars().all() == ["Kept"]


def test_should_add_the_indexes_an_upgrade_defines_to_existing_tables(tmp_path):
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    db_main(["create-schema", "--url", url])
    with sa.create_engine(url).begin() as conn:  # a CRM database created before the index existed
        conn.execute(sa.text("DROP INDEX ix_crm_account_updated_at_code"))
        conn.execute(crm_schema.company.insert().values(id=1, code="C1", name="Kept"))
    db_main(["create-schema", "--url", url])
    engine = sa.create_engine(url)
    indexes = {ix["name"]: ix["column_names"] for ix in sa.inspect(engine).get_indexes("crm_account")}
    assert indexes["ix_crm_account_updated_at_code"] == ["updated_at", "erp_customer_code"]
    with engine.connect() as conn:
        assert conn.execute(sa.select(crm_schema.company.c.name)).scalars().all() == ["Kept"]
    engine.dispose()


def test_should_create_the_reference_erp_schema_on_request(tmp_path):
    url = f"sqlite:///{tmp_path / 'erp.db'}"
    db_main(["create-schema", "--url", url, "--which", "erp"])
    engine_from_url(url).dispose()
    assert tables(url) == set(erp_schema.metadata.tables)


def test_should_create_every_crm_table_in_postgresql_and_leave_existing_ones_alone(pg_url, pg_engine, capsys):
    with pg_engine.connect() as conn:
        schema = conn.execute(sa.text("select current_schema()")).scalar_one()
    # libpq options in the URL: the command line takes nothing but a URL
    url = f"{pg_url}?options=-csearch_path%3D{schema}"
    try:
        db_main(["create-schema", "--url", url])
        assert "crm schema ready" in capsys.readouterr().out
        assert set(sa.inspect(pg_engine).get_table_names()) == set(crm_schema.metadata.tables)

        with pg_engine.begin() as conn:
            conn.execute(crm_schema.company.insert().values(id=1, code="C1", name="Kept"))
        db_main(["create-schema", "--url", url])
        with pg_engine.connect() as conn:
            assert conn.execute(sa.select(crm_schema.company.c.name)).scalars().all() == ["Kept"]
    finally:
        engine_from_url(url).dispose()
