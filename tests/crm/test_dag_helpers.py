"""crm.dag_helpers: the business date of a run."""

import datetime as dt
import sqlite3
from types import SimpleNamespace

import pendulum

from crm.dag_helpers import business_date


def test_should_give_a_plain_date_a_db_driver_can_bind():
    ctx = {"logical_date": pendulum.datetime(2026, 11, 22, 2, tz="UTC"), "dag_run": None}
    day = business_date(ctx, "America/Sao_Paulo")
    assert type(day) is dt.date and day == dt.date(2026, 11, 21)  # 02:00 UTC is 23:00 the day before in São Paulo
    assert sqlite3.connect(":memory:").execute("select ?", (day,)).fetchone() == ("2026-11-21",)


def test_should_use_run_after_when_a_manual_run_has_no_logical_date():
    run = SimpleNamespace(run_after=pendulum.datetime(2026, 2, 28, 12, tz="UTC"))
    assert business_date({"logical_date": None, "dag_run": run}, "Europe/Warsaw") == dt.date(2026, 2, 28)


def test_should_judge_a_mapped_upstream_by_every_map_index():
    from crm.dag_helpers import upstream_failures

    class TI:
        def __init__(self, states):
            self.states = states

        def get_task_states(self, dag_id, task_ids, run_ids):
            return {"r1": self.states}

    def ctx(states):
        return {"ti": TI(states), "dag_run": SimpleNamespace(run_id="r1"), "dag": SimpleNamespace(dag_id="d")}

    ok = {"plan_0": "success", "plan_1": "success", "send": "skipped", "plan_10x": "failed"}
    assert upstream_failures(ctx(ok), ["plan", "send"]) == []
    bad = {"plan_0": "success", "plan_1": "failed", "send": "success"}
    assert upstream_failures(ctx(bad), ["plan", "send"]) == ["plan"]
    assert upstream_failures(ctx({"send": "success"}), ["plan", "send"]) == ["plan"]  # never ran: not a success
