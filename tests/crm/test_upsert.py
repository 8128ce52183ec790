"""upsert(): inserted/updated counts, idempotence, and all-or-nothing chunks, on SQLite and PostgreSQL."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from crm.db import engine_from_url, upsert
from crm.db.crm_schema import account, account_profile, company, metadata

FIELDS = ["first_purchase_date", "accumulated_value", "purchase_count", "last_invoice_number"]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        eng = engine_from_url(f"sqlite:///{tmp_path}/crm.db")
    else:
        eng = request.getfixturevalue("pg_engine")
    metadata.create_all(eng)
    with eng.begin() as conn:
        conn.execute(company.insert(), [{"id": 1, "code": "C1", "name": "Acme"}])
        conn.execute(
            account.insert(), [{"id": i, "company_id": 1, "person_type": "PJ", "name": f"A{i}"} for i in range(1, 101)]
        )
    return eng


def profiles(n: int, run_id: str = "r1") -> pd.DataFrame:
    ids = np.arange(1, n + 1)
    return pd.DataFrame(
        {
            "account_id": ids,
            "erp_customer_code": ids + 1000,
            "first_purchase_date": pd.to_datetime(np.where(ids % 3 == 0, None, "2026-01-02")),
            "accumulated_value": ids * 1.5,
            "purchase_count": ids % 7,
            "last_invoice_number": [None if i % 4 == 0 else f"NF-{i}" for i in ids],
            "business_date": pd.Timestamp("2026-11-22"),
            "run_id": run_id,
            "updated_at": pd.Timestamp("2026-11-22 05:30:00"),
        }
    )


def table_rows(eng) -> list[tuple]:
    with eng.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(account_profile).order_by(account_profile.c.account_id))]


def test_should_insert_then_report_everything_unchanged_on_a_second_identical_run(engine):
    first = upsert(engine, account_profile, profiles(100), ["account_id"], compare_columns=FIELDS, chunk_rows=7)
    snapshot = table_rows(engine)
    second = upsert(engine, account_profile, profiles(100, "r2"), ["account_id"], compare_columns=FIELDS, chunk_rows=7)
    assert (first.inserted, first.updated, first.unchanged) == (100, 0, 0)
    assert (second.inserted, second.updated, second.unchanged) == (0, 0, 100)
    assert table_rows(engine) == snapshot  # run_id stays r1: nothing compared changed


def test_should_count_only_really_changed_rows_as_updated(engine):
    upsert(engine, account_profile, profiles(60), ["account_id"], compare_columns=FIELDS)
    frame = profiles(100, "r2")
    frame.loc[frame["account_id"].isin([5, 6]), "purchase_count"] = 99
    frame.loc[frame["account_id"] == 3, "first_purchase_date"] = pd.Timestamp("2025-05-05")  # null -> value
    res = upsert(engine, account_profile, frame, ["account_id"], compare_columns=FIELDS, chunk_rows=9)
    assert (res.inserted, res.updated, res.unchanged) == (40, 3, 57)
    rows = {r[0]: r for r in table_rows(engine)}
    col = {c.name: i for i, c in enumerate(account_profile.columns)}
    assert rows[5][col["purchase_count"]] == 99 and rows[5][col["run_id"]] == "r2"
    assert rows[7][col["run_id"]] == "r1"
    assert str(rows[3][col["first_purchase_date"]]) == "2025-05-05"


@pytest.mark.parametrize("precount_max_rows", [0, 10_000], ids=["row-count", "key-precount"])
def test_should_count_inserts_and_updates_exactly_whichever_way_the_table_is_counted(
    engine, monkeypatch, precount_max_rows
):
    from crm.db.upsert import _InsertCounter

    monkeypatch.setattr(_InsertCounter, "PRECOUNT_MAX_ROWS", precount_max_rows)
    upsert(engine, account_profile, profiles(30)[::2], ["account_id"], compare_columns=FIELDS)  # odd ids 1..29
    frame = profiles(40, "r2")
    frame.loc[frame["account_id"].isin([1, 3, 4]), "purchase_count"] = 99  # 1, 3 exist; 4 is new
    res = upsert(engine, account_profile, frame, ["account_id"], compare_columns=FIELDS, chunk_rows=6)
    assert (res.inserted, res.updated, res.unchanged) == (25, 2, 13)


def test_should_write_the_same_rows_whatever_the_conversion_blocks(engine, monkeypatch):
    import sys

    upsert_module = sys.modules["crm.db.upsert"]  # the package re-exports the function under the same name
    frame = profiles(45)
    upsert(engine, account_profile, frame, ["account_id"], compare_columns=FIELDS)
    whole = table_rows(engine)
    with engine.begin() as conn:
        conn.execute(account_profile.delete())
    monkeypatch.setattr(upsert_module, "_CONVERT_ROWS", 7)  # blocks of 6 rows, chunks of 3: 45 = 7 x 6 + 3
    upsert(engine, account_profile, frame.iloc[:20], ["account_id"], compare_columns=FIELDS, chunk_rows=3)
    res = upsert(engine, account_profile, frame, ["account_id"], compare_columns=FIELDS, chunk_rows=3)
    assert (res.inserted, res.updated, res.unchanged) == (25, 0, 20)
    assert table_rows(engine) == whole


def test_should_leave_the_table_exactly_as_before_when_a_late_chunk_violates_a_constraint(engine):
    upsert(engine, account_profile, profiles(50), ["account_id"])
    before = table_rows(engine)
    frame = profiles(100, "r2")
    frame["purchase_count"] = frame["purchase_count"] + 1
    frame.loc[frame["account_id"] == 97, "purchase_count"] = -1  # CHECK purchase_count >= 0, in the last chunk
    with pytest.raises(sa.exc.IntegrityError):
        upsert(engine, account_profile, frame, ["account_id"], chunk_rows=10)
    assert table_rows(engine) == before


def test_should_leave_the_table_as_before_when_a_chunk_of_existing_rows_violates_a_constraint(engine):
    upsert(engine, account_profile, profiles(50), ["account_id"])
    before = table_rows(engine)
    frame = profiles(50, "r2")
    frame["purchase_count"] = frame["purchase_count"] + 1
    frame.loc[frame["account_id"] == 45, "purchase_count"] = -1  # every key of every chunk exists already
    with pytest.raises(sa.exc.IntegrityError):
        upsert(engine, account_profile, frame, ["account_id"], chunk_rows=10)
    assert table_rows(engine) == before


def test_should_update_existing_rows_in_place_with_the_same_counts_as_the_upsert(engine):
    upsert(engine, account_profile, profiles(40), ["account_id"], compare_columns=FIELDS)
    frame = profiles(40, "r2")
    frame.loc[frame["account_id"].isin([2, 31]), "accumulated_value"] = 7.25
    frame.loc[frame["account_id"] == 9, "last_invoice_number"] = None  # value -> null is a change
    res = upsert(engine, account_profile, frame, ["account_id"], compare_columns=FIELDS, chunk_rows=8)
    assert (res.inserted, res.updated, res.unchanged) == (0, 3, 37)
    rows = {r[0]: r for r in table_rows(engine)}
    col = {c.name: i for i, c in enumerate(account_profile.columns)}
    assert float(rows[31][col["accumulated_value"]]) == 7.25 and rows[31][col["run_id"]] == "r2"
    assert rows[9][col["last_invoice_number"]] is None and rows[9][col["run_id"]] == "r2"
    assert rows[10][col["run_id"]] == "r1"


def test_should_roll_back_to_a_savepoint_inside_the_callers_transaction(engine):
    frame = profiles(30)
    frame.loc[frame["account_id"] == 29, "purchase_count"] = -1
    with engine.begin() as conn:
        conn.execute(account.update().where(account.c.id == 1).values(name="renamed"))
        with pytest.raises(sa.exc.IntegrityError):
            upsert(conn, account_profile, frame, ["account_id"], chunk_rows=4)
    assert table_rows(engine) == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(account.c.name).where(account.c.id == 1)).scalar() == "renamed"


def test_should_reject_duplicate_and_null_keys_and_unknown_columns(engine):
    dup = pd.concat([profiles(3), profiles(1)])
    with pytest.raises(ValueError, match="duplicate keys"):
        upsert(engine, account_profile, dup, ["account_id"])
    nulls = profiles(3).astype({"account_id": "Int64"})
    nulls.loc[1, "account_id"] = pd.NA
    with pytest.raises(ValueError, match="null values in key"):
        upsert(engine, account_profile, nulls, ["account_id"])
    with pytest.raises(ValueError, match="not in the table"):
        upsert(engine, account_profile, profiles(3).assign(bogus=1), ["account_id"])
    with pytest.raises(ValueError, match="not the primary key or a unique constraint"):
        upsert(engine, account_profile, profiles(3), ["purchase_count"])
    assert table_rows(engine) == []


def test_should_store_hostile_text_as_data(engine):
    frame = profiles(2)
    frame["last_invoice_number"] = ["x'); DROP TABLE crm_account; --", "Ș ț ł ż ç ã"]
    upsert(engine, account_profile, frame, ["account_id"])
    assert [r[10] for r in table_rows(engine)] == ["x'); DROP TABLE crm_account; --", "Ș ț ł ż ç ã"]


@pytest.mark.parametrize("via", ["upsert", "finish_run"])
def test_should_queue_a_read_then_write_transaction_behind_another_sqlite_writer(tmp_path, via):
    """Concurrent DAG runs on the embedded demo: a transaction that reads before it writes must wait for
    the other writer (busy timeout), not fail at once with "database is locked" on a stale snapshot."""
    import datetime as dt
    import threading
    import time

    from crm.db.crm_schema import routine_run
    from crm.runs import finish_run

    eng = engine_from_url(f"sqlite:///{tmp_path}/busy.db")
    metadata.create_all(eng)
    with eng.begin() as conn:
        conn.execute(company.insert(), [{"id": 1, "code": "C1", "name": "Acme"}])
        rows = [{"id": i, "company_id": 1, "person_type": "PJ", "name": f"A{i}"} for i in (1, 2)]
        conn.execute(account.insert(), rows)
    outcome: dict = {}

    def second_writer() -> None:
        try:
            if via == "upsert":
                outcome["result"] = upsert(eng, account_profile, profiles(2), ["account_id"])
            else:
                outcome["result"] = finish_run(eng, dag_id="d", run_id="r", business_date=dt.date(2026, 11, 22),
                                               status="success", started_at=dt.datetime(2026, 11, 22, 10),
                                               finished_at=dt.datetime(2026, 11, 22, 11), summary={"k": 1})  # fmt: skip
        except Exception as exc:  # the failure this test is about
            outcome["error"] = exc

    with eng.begin() as first:  # holds SQLite's write lock until the block ends
        first.execute(account.update().where(account.c.id == 1).values(name="busy"))
        thread = threading.Thread(target=second_writer)
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive(), f"the second writer did not wait: {outcome}"
    thread.join(30)
    assert "error" not in outcome, outcome
    with eng.connect() as conn:
        if via == "upsert":
            assert outcome["result"].inserted == 2
            assert conn.execute(sa.select(sa.func.count()).select_from(account_profile)).scalar() == 2
        else:
            status = conn.execute(sa.select(routine_run.c.status).where(routine_run.c.run_id == "r")).scalar()
            assert status == "success"
        assert conn.execute(sa.select(account.c.name).where(account.c.id == 1)).scalar() == "busy"
