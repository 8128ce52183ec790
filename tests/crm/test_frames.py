"""select_frame reads a SQLite file through Arrow, and gives exactly the frame the driver's cursor gives."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest
import sqlalchemy as sa

from crm.db import engine_from_url
from crm.db.frames import adbc_sqlite, driver_sql, select_frame

pytestmark = pytest.mark.skipif(adbc_sqlite() is None, reason="adbc_driver_sqlite is pinned in requirements.txt")

T = sa.table("t", sa.column("id"), sa.column("code"), sa.column("name"), sa.column("day"), sa.column("empty"))


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "f.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, code INTEGER, name TEXT, day DATE, empty TEXT, mixed)")
        conn.executemany(
            "INSERT INTO t VALUES (?, ?, ?, ?, NULL, ?)",
            [
                (i, None if i % 3 == 0 else i * 10, None if i % 4 == 0 else f"Ș{i}", f"2026-11-{1 + i % 28:02d}", m)
                for i, m in zip(range(1, 2001), [1] * 1999 + ["text after numbers"], strict=True)
            ],
        )
    return engine_from_url(f"sqlite:///{path}")


def both(engine, monkeypatch, stmt, columns) -> tuple[pd.DataFrame, pd.DataFrame]:
    monkeypatch.setenv("CRM_SOURCES_ARROW", "1")
    arrow = select_frame(engine, stmt, columns)
    monkeypatch.setenv("CRM_SOURCES_ARROW", "0")
    cursor = select_frame(engine, stmt, columns)
    return arrow, cursor


@pytest.mark.parametrize(
    "where",
    [sa.true(), T.c.id > 10_000, T.c.id.in_([3, 4, 5]), T.c.code.is_(None)],
    ids=["all-rows", "no-rows", "bound-list", "only-nulls-in-code"],
)
def test_should_give_the_cursors_frame_through_arrow(engine, monkeypatch, where):
    stmt = sa.select(T.c.id, T.c.code, T.c.name, T.c.day, T.c.empty).where(where).order_by(T.c.id)
    arrow, cursor = both(engine, monkeypatch, stmt, ["id", "code", "name", "day", "empty"])
    pd.testing.assert_frame_equal(arrow, cursor)


def test_should_fall_back_to_the_cursor_when_a_column_changes_type(engine, monkeypatch):
    stmt = sa.select(sa.column("id"), sa.column("mixed")).select_from(sa.table("t")).order_by(sa.column("id"))
    arrow, cursor = both(engine, monkeypatch, stmt, ["id", "mixed"])
    pd.testing.assert_frame_equal(arrow, cursor)
    assert arrow["mixed"].iloc[-1] == "text after numbers" and arrow["mixed"].iloc[0] == 1


def test_should_expand_long_in_lists_itself_and_keep_the_other_parameters_in_place(crm_engine):
    from crm.db.crm_schema import company

    with crm_engine.begin() as conn:
        conn.execute(
            company.insert(),
            [{"id": i, "code": f"C{i}", "name": f"Company {i}", "locale": "pt_BR"} for i in range(1, 301)],
        )
    wanted = list(range(0, 400, 3))  # some ids absent
    stmt = (
        sa.select(company.c.id, company.c.code)
        .where(
            company.c.id > 5,
            company.c.id.in_(wanted),
            company.c.name != "Company 9",
            company.c.id.in_([12, 15, 21, 99]),
        )
        .order_by(company.c.id)
    )
    with crm_engine.connect() as conn:
        expected = [tuple(r) for r in conn.execute(stmt)]
    got = select_frame(crm_engine, stmt, ["id", "code"], arrow=False)
    sql, args = driver_sql(stmt, crm_engine.dialect)  # expanded here, not by render_postcompile
    assert "POSTCOMPILE" not in sql and len(args) == 2 + len(wanted) + 4
    assert (
        [tuple(r) for r in got.itertuples(index=False)]
        == expected
        == [(12, "C12"), (15, "C15"), (21, "C21"), (99, "C99")]
    )
