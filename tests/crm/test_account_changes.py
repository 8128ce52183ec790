"""Audited account writes (crm.jobs.account_changes): the updated_at rule, on SQLite and PostgreSQL.

The rule: routine writes never lower `crm_account.updated_at`; owner and ERP-code changes move it
forward to the write's stamp, status/label/class changes leave it alone.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
import sqlalchemy as sa

from crm.db.crm_schema import account, account_class, account_history, company, user
from crm.jobs.account_changes import apply_changes

BEFORE = dt.datetime(2026, 11, 22, 8, 0)  # the accounts' last save before the run
WRITE = dt.datetime(2026, 11, 22, 9, 0)  # the routine's write-back
EDIT = dt.datetime(2026, 11, 22, 9, 30)  # a person saved account 3 while the routine was running


@pytest.fixture
def crm(crm_engine):
    engine = crm_engine
    with engine.begin() as conn:
        conn.execute(sa.insert(company), [{"id": 1, "code": "BR01", "name": "Aurora"}])
        conn.execute(sa.insert(user), [{"id": u, "login": f"u{u}", "name": f"U{u}"} for u in (1, 2)])
        conn.execute(sa.insert(account_class), [{"id": c, "code": f"C{c}", "name": f"C{c}"} for c in (1, 2)])
        conn.execute(sa.insert(account), [
            {"id": a, "company_id": 1, "person_type": "PF", "name": f"A{a}", "owner_id": 1, "class_id": 1,
             "created_at": BEFORE, "updated_at": EDIT if a == 3 else BEFORE} for a in (1, 2, 3, 4, 5)
        ])  # fmt: skip
    return engine


def stamps(engine: sa.Engine) -> dict[int, dt.datetime]:
    with engine.connect() as conn:
        return {
            i: pd.Timestamp(t).to_pydatetime() for i, t in conn.execute(sa.select(account.c.id, account.c.updated_at))
        }


def test_should_move_updated_at_forward_only_for_owner_and_erp_code_changes_and_never_lower_it(crm):
    changes = pd.DataFrame(
        [
            (1, "erp_status", None, "active"),  # informational: the stamp stays
            (1, "status_label", None, "Ativo ERP"),
            (2, "owner_id", 1, 2),  # a change of the record: the stamp moves to the write
            (3, "owner_id", 1, 2),  # saved by a person at 09:30, written by the routine at 09:00: stays 09:30
            (4, "class_id", 1, 2),  # class and ERP code at once: the ERP code moves it
            (4, "erp_customer_code", None, 4711),
            (5, "class_id", 1, 2),
        ],
        columns=["account_id", "field", "old_value", "new_value"],
    )
    counts = apply_changes(crm, changes, routine="test", run_id="r1", business_date=WRITE.date(), changed_at=WRITE)
    assert counts == {"erp_status": 1, "status_label": 1, "owner_id": 2, "class_id": 2, "erp_customer_code": 1}
    assert stamps(crm) == {1: BEFORE, 2: WRITE, 3: EDIT, 4: WRITE, 5: BEFORE}
    with crm.connect() as conn:
        owners = dict(conn.execute(sa.select(account.c.id, account.c.owner_id)).all())
        history = conn.execute(sa.select(sa.func.count()).select_from(account_history)).scalar()
    assert owners == {1: 1, 2: 2, 3: 2, 4: 1, 5: 1} and history == len(changes)


def test_should_take_an_aware_stamp_as_utc(crm):
    changes = pd.DataFrame([(2, "owner_id", 1, 2)], columns=["account_id", "field", "old_value", "new_value"])
    sao_paulo = dt.timezone(dt.timedelta(hours=-3))
    aware = dt.datetime(2026, 11, 22, 7, 0, tzinfo=sao_paulo)  # 10:00 UTC
    apply_changes(crm, changes, routine="test", run_id="r1", business_date=WRITE.date(), changed_at=aware)
    assert stamps(crm)[2] == dt.datetime(2026, 11, 22, 10, 0)
