"""crm_erp_account_sync job level: the write contract, and recovery when the CRM write-back never happened."""

from __future__ import annotations

import datetime as dt
import sqlite3

import pytest
import sqlalchemy as sa

from crm.db import engine_from_url
from crm.jobs import erp_account_sync as job
from crm.sources import ContractError, execute

BD = dt.date(2026, 11, 22)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    from crm.demo.generate import generate

    var = tmp_path_factory.mktemp("demo")
    generate(var, accounts=300, seed=21, business_date=BD, log=None)
    return var


@pytest.fixture
def dbs(seeded, tmp_path):
    import shutil

    shutil.copytree(seeded, tmp_path / "var")
    engine_from_url.cache_clear()
    crm = engine_from_url(f"sqlite:///{tmp_path / 'var' / 'crm.db'}")
    erp = engine_from_url(f"sqlite:///{tmp_path / 'var' / 'erp.db'}")
    yield crm, erp, tmp_path / "var"
    crm.dispose()
    erp.dispose()


def test_should_refuse_rows_that_break_the_write_contract(dbs):
    _, erp, _ = dbs
    plan = job.plan_sync(*dbs[:2], BD)
    assert plan.rows, "the demo has valid accounts to push"
    row = {**plan.rows[0], "written_at": dt.datetime(2026, 11, 22, 12)}
    with erp.begin() as conn:
        with pytest.raises(ContractError, match="missing \\['written_at'\\]"):
            execute(conn, "erp/customer_upsert", [{k: v for k, v in row.items() if k != "written_at"}])
        with pytest.raises(ContractError, match="'name' \\(str\\) is null"):
            execute(conn, "erp/customer_upsert", [{**row, "name": None}])
        with pytest.raises(ContractError, match="'group_id' \\(int\\) got str"):
            execute(conn, "erp/customer_upsert", [{**row, "group_id": "1"}])
        assert execute(conn, "erp/customer_upsert", [{**row, "phone1": None}]) == 1


def test_should_adopt_customers_created_by_a_run_whose_write_back_failed(dbs):
    crm, erp, var = dbs
    plan = job.plan_sync(crm, erp, BD)
    new = plan.pushed[plan.pushed["action"] == "inserted"]
    assert len(new) >= 1
    with erp.begin() as conn:  # the ERP step committed, then the worker died before the CRM step
        execute(conn, "erp/customer_upsert", [{**r, "written_at": dt.datetime(2026, 11, 22, 12)} for r in plan.rows])
    again = job.plan_sync(crm, erp, BD)
    assert again.summary()["codes_adopted"] == len(new)
    assert again.summary()["erp_inserted"] == 0 and again.rows == []
    assert sorted(again.writebacks["new_value"].tolist()) == sorted(new["erp_customer_code"].tolist())
    job.apply_sync(
        crm,
        erp,
        again,
        run_id="r2",
        written_at=dt.datetime(2026, 11, 22, 13, tzinfo=dt.UTC),
        started_at=dt.datetime(2026, 11, 22, 13, tzinfo=dt.UTC),
    )
    with sqlite3.connect(var / "erp.db") as conn:
        n_before = conn.execute("select count(*) from customer").fetchone()[0]
    third = job.plan_sync(crm, erp, BD)
    assert third.mode == "incremental" and third.rows == [] and third.writebacks.empty
    with crm.connect() as conn:
        from crm.db.crm_schema import account

        codes = [int(c) for c in new["erp_customer_code"]]
        linked = conn.execute(sa.select(sa.func.count()).where(account.c.erp_customer_code.in_(codes))).scalar()
    assert linked == len(new)
    with sqlite3.connect(var / "erp.db") as conn:
        assert conn.execute("select count(*) from customer").fetchone()[0] == n_before


def test_should_check_in_the_next_run_an_account_edited_between_plan_and_write_back(dbs):
    crm, erp, var = dbs
    plan = job.plan_sync(crm, erp, BD)
    assert plan.mode == "full" and not plan.writebacks.empty
    edited = int(plan.writebacks["account_id"].iloc[0])
    edit_at = plan.watermark + dt.timedelta(minutes=1)  # saved by a person after the plan read the watermark
    with sqlite3.connect(var / "crm.db") as conn:
        conn.execute(
            "UPDATE crm_account SET name = 'Nome Corrigido Ltda.', updated_at = ? WHERE id = ?",
            (edit_at.strftime("%Y-%m-%d %H:%M:%S.%f"), edited),
        )
    # the write-back's stamp is older than the edit (the run's run_after, or a slow worker's clock)
    stamp = plan.watermark - dt.timedelta(hours=2)
    stamp = stamp.replace(tzinfo=dt.UTC)
    job.apply_sync(crm, erp, plan, run_id="r1", written_at=stamp, started_at=stamp)
    with sqlite3.connect(var / "crm.db") as conn:
        (kept,) = conn.execute("SELECT updated_at FROM crm_account WHERE id = ?", (edited,)).fetchone()
    assert kept == edit_at.strftime("%Y-%m-%d %H:%M:%S.%f")  # the write-back did not lower the edit's stamp

    nxt = job.plan_sync(crm, erp, BD)
    assert nxt.mode == "incremental" and edited in set(nxt.checked["account_id"])
    (row,) = [r for r in nxt.rows if r["name"] == "Nome Corrigido Ltda."]
    assert nxt.pushed.set_index("account_id").loc[edited, "action"] == "updated" and row["code"] > 0


def test_should_leave_out_accounts_whose_customer_type_does_not_integrate(dbs):
    crm, erp, var = dbs
    plan = job.plan_sync(crm, erp, BD)
    inserted = plan.pushed[plan.pushed["action"] == "inserted"]["account_id"].astype(int).tolist()
    invalid = plan.violations["account_id"].astype(int).tolist()
    assert inserted and invalid
    moved = [inserted[0], invalid[0]]  # a valid account and an invalid one become final consumers (type 3)
    with sqlite3.connect(var / "crm.db") as conn:
        assert conn.execute("SELECT integrates_erp FROM crm_customer_type WHERE id = 3").fetchone() == (0,)
        conn.executemany("UPDATE crm_account SET customer_type_id = 3 WHERE id = ?", [(a,) for a in moved])
    again = job.plan_sync(crm, erp, BD, full_check=True)
    assert not set(moved) & set(again.checked["account_id"].astype(int))
    assert not set(moved) & set(again.pushed["account_id"].astype(int))
    assert not set(moved) & set(again.violations["account_id"].astype(int))
    assert len(again.checked) == len(plan.checked) - 2
