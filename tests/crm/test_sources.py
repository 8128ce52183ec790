"""crm.sources: the column contract of include/sql files is enforced with errors naming file and column."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from crm.config import SQL_DIR
from crm.db import engine_from_url
from crm.sources import ContractError, iter_frames, load_query, read_frame


@pytest.fixture
def db(tmp_path: Path):
    eng = engine_from_url(f"sqlite:///{tmp_path}/src.db")
    with eng.begin() as conn:
        conn.exec_driver_sql(
            "create table t (code integer, d date, v numeric, name varchar, flag boolean, ts datetime)"
        )
        conn.exec_driver_sql(
            "insert into t values (1, '2026-01-02', 1.5, 'Łukasz', 1, '2026-01-02 03:04:05.000000'),"
            " (2, '2026-02-03', 2, 'Ștefan', 0, '2026-02-03 00:00:00.000000'),"
            " (3, null, null, null, 0, null)"
        )
    return eng


def write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / "sql" / f"{name}.sql"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
    load_query.cache_clear()
    return tmp_path / "sql"


HEADER = """-- @column code int
-- @column d date?
-- @column v float?
-- @column name str?
-- @column flag bool
-- @column ts datetime?
"""


def test_should_return_typed_columns_in_chunks(db, tmp_path):
    sql_dir = write(tmp_path, "x/ok", HEADER + "select code, d, v, name, flag, ts from t order by code")
    frames = list(iter_frames(db, "x/ok", chunk_rows=2, sql_dir=sql_dir))
    assert [len(f) for f in frames] == [2, 1]
    f = frames[0]
    assert f["code"].dtype == np.int64 and f["v"].dtype == np.float64 and f["flag"].dtype == bool
    assert f["d"].tolist()[0].date() == dt.date(2026, 1, 2)
    assert f["ts"].tolist()[0].to_pydatetime() == dt.datetime(2026, 1, 2, 3, 4, 5)
    assert f["name"].tolist() == ["Łukasz", "Ștefan"]


def test_should_name_the_file_and_column_that_is_missing(db, tmp_path):
    sql_dir = write(tmp_path, "x/missing", HEADER + "select code, d, v, flag, ts from t")
    with pytest.raises(ContractError, match=r"missing\.sql.*lacks column\(s\) \['name'\]"):
        read_frame(db, "x/missing", sql_dir=sql_dir)


def test_should_name_the_file_and_column_with_a_wrong_type(db, tmp_path):
    sql_dir = write(tmp_path, "x/wrong", "-- @column code int\nselect name as code from t where code = 1")
    with pytest.raises(ContractError, match=r"wrong\.sql: column 'code' \(int\): got str value 'Łukasz'"):
        read_frame(db, "x/wrong", sql_dir=sql_dir)


def test_should_reject_nulls_in_a_non_nullable_column(db, tmp_path):
    sql_dir = write(tmp_path, "x/nulls", "-- @column d date\nselect d from t")
    with pytest.raises(ContractError, match=r"column 'd' \(date\): null value"):
        read_frame(db, "x/nulls", sql_dir=sql_dir)


def test_should_reject_an_unparseable_date(db, tmp_path):
    sql_dir = write(tmp_path, "x/baddate", "-- @column d date\nselect 'yesterday' as d")
    with pytest.raises(ContractError, match=r"baddate\.sql: column 'd'"):
        read_frame(db, "x/baddate", sql_dir=sql_dir)


def test_should_require_declared_parameters_and_bind_lists(db, tmp_path):
    sql_dir = write(
        tmp_path,
        "x/params",
        "-- @column code int\n-- @param codes int[]\n-- @param since date\n"
        "select code from t where code in :codes and d >= :since order by code",
    )
    with pytest.raises(ContractError, match="missing \\['since'\\]"):
        read_frame(db, "x/params", {"codes": [1]}, sql_dir=sql_dir)
    got = read_frame(db, "x/params", {"codes": [1, 2, 3], "since": dt.date(2026, 1, 2)}, sql_dir=sql_dir)
    assert got["code"].tolist() == [1, 2]
    empty = read_frame(db, "x/params", {"codes": [], "since": dt.date(2026, 1, 2)}, sql_dir=sql_dir)
    assert list(empty.columns) == ["code"] and empty.empty


def test_should_fail_on_a_file_without_a_contract(tmp_path):
    sql_dir = write(tmp_path, "x/nocontract", "select 1")
    with pytest.raises(ContractError, match="contract is missing"):
        load_query("x/nocontract", sql_dir)


def test_should_parse_every_shipped_source_query():
    names = sorted(str(p.relative_to(SQL_DIR).with_suffix("")) for p in SQL_DIR.rglob("*.sql"))
    assert "erp/invoices" in names
    statements = [n for n in names if "-- @column" not in (SQL_DIR / f"{n}.sql").read_text(encoding="utf-8")]
    assert statements == ["erp/customer_upsert"], "only the ERP write contract may lack @column lines"
    for name in names:
        query = load_query(name, statement=name in statements)
        assert query.columns or query.params


def test_should_stream_from_postgresql(pg_engine, tmp_path):
    with pg_engine.begin() as conn:
        conn.execute(sa.text("create table t (code int, d date)"))
        conn.execute(sa.text("insert into t select g, date '2026-01-01' + g from generate_series(1, 25) g"))
    sql_dir = write(
        tmp_path,
        "x/pg",
        "-- @column code int\n-- @column d date\n-- @param codes int[]\n"
        "select code, d from t where code in :codes order by code",
    )
    frames = list(iter_frames(pg_engine, "x/pg", {"codes": list(range(1, 21))}, chunk_rows=8, sql_dir=sql_dir))
    assert [len(f) for f in frames] == [8, 8, 4]
    assert frames[0]["d"].tolist()[0].date() == dt.date(2026, 1, 2)


@pytest.mark.parametrize("chunk_rows", [1, 2, 500_000])
def test_should_read_the_same_frames_through_arrow_as_through_the_cursor(db, tmp_path, monkeypatch, chunk_rows):
    import crm.sources as sources

    sql_dir = write(tmp_path, "x/same", HEADER + "select code, d, v, name, flag, ts from t order by code")
    if sources.adbc_sqlite() is None:
        pytest.skip("adbc-driver-sqlite is not installed")
    assert sources._arrow_readable(db, load_query("x/same", sql_dir)) is not None
    fast = list(iter_frames(db, "x/same", chunk_rows=chunk_rows, sql_dir=sql_dir))
    monkeypatch.setenv("CRM_SOURCES_ARROW", "0")
    slow = list(iter_frames(db, "x/same", chunk_rows=chunk_rows, sql_dir=sql_dir))
    assert len(fast) == len(slow)
    for f, s in zip(fast, slow, strict=True):
        assert list(f.dtypes) == list(s.dtypes)
        assert f.equals(s)


def test_should_keep_text_as_arrow_strings_only_when_asked(db, tmp_path, monkeypatch):
    import crm.sources as sources

    sql_dir = write(tmp_path, "x/text", HEADER + "select code, d, v, name, flag, ts from t order by code")
    if sources.adbc_sqlite() is None:
        pytest.skip("adbc-driver-sqlite is not installed")
    (plain,) = iter_frames(db, "x/text", sql_dir=sql_dir)
    (arrow,) = iter_frames(db, "x/text", sql_dir=sql_dir, arrow_text=True)
    assert plain["name"].dtype == object and plain["name"].tolist() == ["Łukasz", "Ștefan", None]
    assert str(arrow["name"].dtype) == "string" and arrow["name"].dtype.storage == "pyarrow"
    assert arrow["name"].to_numpy(dtype=object, na_value=None).tolist() == ["Łukasz", "Ștefan", None]
    assert arrow.drop(columns="name").equals(plain.drop(columns="name"))
    monkeypatch.setenv("CRM_SOURCES_ARROW", "0")  # the cursor path has no Arrow strings to keep
    (cursor,) = iter_frames(db, "x/text", sql_dir=sql_dir, arrow_text=True)
    assert cursor["name"].dtype == object


def test_should_name_the_file_when_a_type_changes_after_the_first_chunk(db, tmp_path):
    with db.begin() as conn:
        conn.exec_driver_sql("insert into t (code, d, flag) values (4, '2026-03-04', 1), ('five', '2026-03-05', 0)")
    sql_dir = write(tmp_path, "x/later", "-- @column code int\n-- @column d date\nselect code, d from t order by rowid")
    with pytest.raises(ContractError, match=r"later\.sql"):
        list(iter_frames(db, "x/later", chunk_rows=2, sql_dir=sql_dir))
    sql_dir = write(tmp_path, "x/laternull", "-- @column d date\nselect d from t order by rowid")
    with pytest.raises(ContractError, match=r"laternull\.sql: column 'd' \(date\): null value"):
        list(iter_frames(db, "x/laternull", chunk_rows=2, sql_dir=sql_dir))


# A column without affinity keeps each value as written: what an ERP view or a CASE can hand back.
BAD_VALUES = [
    ("date", "'2026-01-02'", "5", r"got int value 5 at row 2"),
    ("date", "'2026-01-02'", "'2026'", r"not an ISO 8601 date: '2026' at row 2"),
    ("date", "'2026-01-02'", "''", r"not an ISO 8601 date: '' at row 2"),
    ("int", "1", "2.7", r"got float value 2\.7 at row 2"),
    ("float", "1.5", "'2.5'", r"got str value '2\.5' at row 2"),
    ("bool", "1", "2", r"not a boolean \(0/1\): 2 at row 2"),
    ("datetime", "'2026-01-02 03:04:05.000000'", "7", r"got int value 7 at row 2"),
    ("str", "'x'", "42", r"got int value 42 at row 2"),
]


@pytest.mark.parametrize("arrow", ["1", "0"])
@pytest.mark.parametrize("chunk_rows", [2, 500_000])
@pytest.mark.parametrize(("typ", "good", "bad", "message"), BAD_VALUES)
def test_should_check_every_value_and_name_the_bad_one_and_its_row(
    tmp_path, monkeypatch, arrow, chunk_rows, typ, good, bad, message
):
    monkeypatch.setenv("CRM_SOURCES_ARROW", arrow)
    eng = engine_from_url(f"sqlite:///{tmp_path}/untyped.db")
    with eng.begin() as conn:
        conn.exec_driver_sql("create table m (id integer primary key, v)")
        conn.exec_driver_sql(f"insert into m values (1, {good}), (2, {good}), (3, {bad}), (4, {good})")
    sql_dir = write(tmp_path, "x/bad", f"-- @column v {typ}\nselect v from m order by id")
    if typ == "str" and arrow == "1":  # the documented exception: the ADBC driver hands the number as text
        got = read_frame(eng, "x/bad", chunk_rows=chunk_rows, sql_dir=sql_dir)
        assert got["v"].tolist() == ["x", "x", "42", "x"]
        return
    with pytest.raises(ContractError, match=rf"bad\.sql: column 'v' \({typ}\): {message}"):
        list(iter_frames(eng, "x/bad", chunk_rows=chunk_rows, sql_dir=sql_dir))
    # the same column without the bad row goes through, typed
    sql_dir = write(tmp_path, "x/good", f"-- @column v {typ}\nselect v from m where id <> 3 order by id")
    assert len(read_frame(eng, "x/good", chunk_rows=chunk_rows, sql_dir=sql_dir)) == 3


def test_should_count_rows_across_list_parameter_batches(db, tmp_path, monkeypatch):
    import crm.sources as sources

    monkeypatch.setattr(sources, "_EXPANDING_BATCH", 2)
    sql_dir = write(
        tmp_path, "x/batches", "-- @column d date\n-- @param codes int[]\nselect d from t where code in :codes"
    )
    with pytest.raises(ContractError, match=r"column 'd' \(date\): null value at row 2"):
        read_frame(db, "x/batches", {"codes": [1, 2, 3]}, sql_dir=sql_dir)


def test_should_name_the_row_of_a_wrong_type_read_from_postgresql(pg_engine, tmp_path):
    with pg_engine.begin() as conn:
        conn.execute(sa.text("create table p (id int, label text)"))
        conn.execute(sa.text("insert into p values (1, null), (2, '2.5')"))
    sql_dir = write(tmp_path, "x/pgfloat", "-- @column label float?\nselect label from p order by id")
    with pytest.raises(ContractError, match=r"pgfloat\.sql: column 'label' \(float\?\): got str value '2\.5' at row 1"):
        read_frame(pg_engine, "x/pgfloat", sql_dir=sql_dir)
    sql_dir = write(tmp_path, "x/pgdate", "-- @column d date\nselect id + 4 as d from p order by id")
    with pytest.raises(ContractError, match=r"pgdate\.sql: column 'd' \(date\): got int value 5 at row 0"):
        read_frame(pg_engine, "x/pgdate", sql_dir=sql_dir)
