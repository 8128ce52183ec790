"""Audited account writes (crm.jobs.account_changes): the updated_at rule, on SQLite and PostgreSQL.

The rule: routine writes never lower `crm_account.updated_at`; owner and ERP-code changes move it
forward to the write's stamp, status/label/class changes leave it alone.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from crm.db.crm_schema import account, account_class, account_history, company, user
from crm.jobs import account_changes
from crm.jobs.account_changes import apply_changes, diff

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


# The set-wise write (distinct values in a temporary table, the accounts as one array parameter) and the
# row-by-row fallback must leave the same accounts and the same history, in the same order.
CHANGES = pd.DataFrame(
    [
        (1, "erp_status", None, "active", True),
        (1, "status_label", None, "Ativo ERP", False),  # follows its status: no history row of its own
        (2, "erp_status", None, "inactive", True),
        (2, "status_label", None, "Inativo ERP", False),
        (3, "status_label", "Ativo", "Ativo ERP", True),  # a label that moved alone
        (4, "class_id", 1, None, True),  # to null
        (5, "class_id", 1, 2, True),
        (2, "owner_id", 1, 2, True),  # a change of the record: moves updated_at
        (3, "owner_id", 1, 2, True),  # ... but never below a later edit (account 3: 09:30)
        (4, "erp_customer_code", None, 4711, True),
        (5, "erp_customer_code", None, 4712, True),
    ],
    columns=["account_id", "field", "old_value", "new_value", "audited"],
)


def snapshot(engine: sa.Engine) -> tuple[list[tuple], list[tuple]]:
    """Every account's writable fields and stamp, and the history rows in id order."""
    a, h = account.c, account_history.c
    with engine.connect() as conn:
        accounts = conn.execute(
            sa.select(
                a.id, a.erp_status, a.status_label, a.class_id, a.owner_id, a.erp_customer_code, a.updated_at
            ).order_by(a.id)
        ).all()
        history = conn.execute(
            sa.select(h.account_id, h.field, h.old_value, h.new_value, h.routine, h.run_id, h.business_date).order_by(
                h.id
            )
        ).all()
    return [tuple(r) for r in accounts], [tuple(r) for r in history]


@pytest.fixture(params=["setwise", "rowwise"])
def write_path(request, monkeypatch):
    """Run the test once through each write path (the row-by-row one forced)."""
    calls = {"setwise": 0, "rowwise": 0}
    for name in calls:
        original = getattr(account_changes, f"_write_{name}")

        def counted(*args, _f=original, _name=name, **kwargs):
            calls[_name] += 1
            return _f(*args, **kwargs)

        monkeypatch.setattr(account_changes, f"_write_{name}", counted)
    if request.param == "rowwise":
        monkeypatch.setattr(account_changes, "_setwise_supported", lambda *a: False)
    yield request.param
    assert calls[request.param] >= 1 and calls[{"setwise": "rowwise", "rowwise": "setwise"}[request.param]] == 0


def test_should_write_the_same_accounts_and_history_through_either_path(crm, write_path):
    counts = apply_changes(crm, CHANGES, routine="test", run_id="r1", business_date=WRITE.date(), changed_at=WRITE)
    assert counts == {"class_id": 2, "erp_customer_code": 2, "erp_status": 2, "owner_id": 2, "status_label": 3}
    accounts, history = snapshot(crm)
    stamps = [pd.Timestamp(r[6]).to_pydatetime() for r in accounts]
    assert [r[:6] for r in accounts] == [
        (1, "active", "Ativo ERP", 1, 1, None),
        (2, "inactive", "Inativo ERP", 1, 2, None),
        (3, None, "Ativo ERP", 1, 2, None),
        (4, None, None, None, 1, 4711),
        (5, None, None, 2, 1, 4712),
    ]
    assert stamps == [BEFORE, WRITE, EDIT, WRITE, WRITE]
    audited = CHANGES[CHANGES["audited"]]
    day = WRITE.date()
    want = [
        (a, f, None if o is None else str(o), None if pd.isna(n) else str(n), "test", "r1", day)
        for a, f, o, n in audited[["account_id", "field", "old_value", "new_value"]].itertuples(index=False)
    ]
    assert [(*r[:6], pd.Timestamp(r[6]).date()) for r in history] == want  # in the order of the changes


def test_should_write_a_large_set_in_chunks_alike(crm, monkeypatch):
    monkeypatch.setattr(account_changes, "_SETWISE_CHUNK", 2)
    apply_changes(crm, CHANGES, routine="test", run_id="r1", business_date=WRITE.date(), changed_at=WRITE)
    chunked = snapshot(crm)
    assert len(chunked[1]) == int(CHANGES["audited"].sum())
    assert [r[:6] for r in chunked[0]][3] == (4, None, None, None, 1, 4711)


def test_should_roll_back_with_the_callers_transaction_and_write_again_on_the_same_connection(crm):
    before = snapshot(crm)
    with crm.connect() as conn:
        trans = conn.begin()
        apply_changes(conn, CHANGES, routine="test", run_id="r1", business_date=WRITE.date(), changed_at=WRITE)
        trans.rollback()
        assert snapshot(crm) == before
        # the temporary tables went with the rollback (or were dropped): a second write on this connection works
        apply_changes(conn, CHANGES, routine="test", run_id="r2", business_date=WRITE.date(), changed_at=WRITE)
        conn.commit()
    accounts, history = snapshot(crm)
    assert accounts[0][1] == "active" and {r[5] for r in history} == {"r2"}


def test_should_fall_back_to_row_by_row_when_the_ids_cannot_be_packed(tmp_path, monkeypatch):
    from crm.db import engine_from_url
    from crm.db.crm_schema import metadata

    engine = engine_from_url(f"sqlite:///{tmp_path / 'big.db'}")
    metadata.create_all(engine)
    big = 1 << 62  # SQLite takes it; times three distinct values it would not fit in 64 bits
    with engine.begin() as conn:
        conn.execute(sa.insert(company), [{"id": 1, "code": "BR01", "name": "Aurora"}])
        conn.execute(sa.insert(account), [
            {"id": i, "company_id": 1, "person_type": "PF", "name": f"A{i}", "created_at": BEFORE,
             "updated_at": BEFORE} for i in (1, 2, big)
        ])  # fmt: skip
    used = []
    monkeypatch.setattr(
        account_changes, "_write_rowwise", lambda *a, _f=account_changes._write_rowwise: used.append(1) or _f(*a)
    )
    changes = pd.DataFrame(
        [(1, "erp_status", None, "active"), (2, "erp_status", None, "inactive"), (big, "erp_status", None, "x")],
        columns=["account_id", "field", "old_value", "new_value"],
    )
    apply_changes(engine, changes, routine="test", run_id="r1", business_date=WRITE.date(), changed_at=WRITE)
    with engine.connect() as conn:
        got = dict(conn.execute(sa.select(account.c.id, account.c.erp_status)).all())
        history = conn.execute(sa.select(sa.func.count()).select_from(account_history)).scalar()
    assert used and got == {1: "active", 2: "inactive", big: "x"} and history == 3
    engine.dispose()


def test_should_refuse_two_changes_of_one_field_and_unknown_fields(crm):
    twice = pd.DataFrame([(1, "class_id", 1, 2), (1, "class_id", 1, 3)], columns=CHANGES.columns[:4])
    with pytest.raises(ValueError, match="two changes"):
        apply_changes(crm, twice, routine="t", run_id="r", business_date=WRITE.date(), changed_at=WRITE)
    with pytest.raises(ValueError, match="not a field"):
        apply_changes(
            crm,
            pd.DataFrame([(1, "name", "A", "B")], columns=CHANGES.columns[:4]),
            routine="t",
            run_id="r",
            business_date=WRITE.date(),
            changed_at=WRITE,
        )
    assert snapshot(crm)[1] == []


def test_should_diff_by_position_or_by_label_alike_with_nulls_equal():
    index = pd.Index([1, 2, 3, 4], name="account_id")
    current = pd.DataFrame(
        {
            "erp_status": pd.array(["active", None, "inactive", None], dtype="str"),
            "class_id": pd.array([1, None, 2, 3], dtype="Int64"),
        },
        index=index,
    )
    wanted = pd.DataFrame(
        {
            "erp_status": pd.Series(["active", "inactive", None, None], index=index, dtype=object),
            "class_id": pd.array([1, 2, 2, None], dtype="Int64"),
        },
        index=index,
    )
    got = diff(current, wanted, ["erp_status", "class_id"])
    assert list(got.columns) == ["account_id", "field", "old_value", "new_value"]
    assert [str(t) for t in got.dtypes] == ["int64", "object", "object", "object"]
    rows = [(a, f, None if pd.isna(o) else o, None if pd.isna(n) else n) for a, f, o, n in got.itertuples(index=False)]
    assert rows == [
        (2, "erp_status", None, "inactive"),
        (3, "erp_status", "inactive", None),
        (2, "class_id", None, 2),
        (4, "class_id", 3, None),
    ]
    # another order and an account only one side has: compared by label, in the wanted frame's order
    shuffled = wanted.iloc[[3, 2, 1, 0]]
    extra = pd.concat([shuffled, pd.DataFrame({"erp_status": ["x"], "class_id": [9]}, index=pd.Index([99]))])
    by_label = diff(current, extra, ["erp_status", "class_id"])
    assert sorted(map(tuple, by_label[["account_id", "field"]].to_numpy().tolist())) == sorted(
        (a, f) for a, f, _, _ in rows
    )
    assert diff(current, current, ["erp_status", "class_id"]).empty


@pytest.mark.parametrize(("columns", "high"), [(3, 5), (2, 10**9), (3, 10**9), (6, 3)])
def test_should_number_combinations_in_order_of_appearance_whatever_their_range(columns, high):
    # few values: one mixed-radix key; ranges past 62 bits: column by column
    matrix = np.random.default_rng(columns).integers(-2, high, (500, columns))
    matrix[250:] = matrix[:250]  # every combination seen twice
    key, first = account_changes._combinations(matrix)
    seen: dict[tuple, int] = {}
    want = [seen.setdefault(tuple(r), len(seen)) for r in matrix.tolist()]
    assert key.tolist() == want
    assert first.tolist() == [want.index(i) for i in range(len(seen))]
