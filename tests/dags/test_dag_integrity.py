"""DAG integrity tests (Astronomer template style): every file in dags/ imports and follows the house rules.

Why: a DAG that fails to import, has no owner or retries, catches up years of runs, or opens a
connection while being parsed breaks the scheduler for everyone. These checks need no metadata
DB and run in a few seconds.
"""

from __future__ import annotations

import ast
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import DAG
from airflow.utils.file import find_dag_file_paths

from crm.demo.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
# conftest.py sets the DAGs folder (dags/, or CRM_TEST_DAGS_DIR) before this module is imported.
DAGS_DIR = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
SETTINGS_FILE = ROOT / "airflow_settings.yaml"
DEFAULT_OWNER = "airflow"  # [operators] default_owner: what a task gets when nobody set an owner
MIN_RETRIES = 2
MAX_PARSE_SECONDS_PER_FILE = 1.0

DAG_FILES = sorted(Path(p) for p in find_dag_file_paths(DAGS_DIR, safe_mode=False) if not Path(p).name.startswith("_"))
FILE_IDS = [str(p.relative_to(DAGS_DIR)) for p in DAG_FILES]

# What parsing must never call: connections, variables, database engines.
PARSE_TIME_FORBIDDEN = (
    "airflow.sdk.BaseHook.get_connection",
    "airflow.models.connection.Connection.get_connection_from_secrets",
    "airflow.sdk.Variable.get",
    "airflow.models.variable.Variable.get",
    "sqlalchemy.create_engine",
    "sqlalchemy.engine.create_engine",
)


def _is_project_module(name: str) -> bool:
    return name == "crm" or name.startswith("crm.")


@contextmanager
def cold_project_imports() -> Iterator[None]:
    """Parse as a fresh DAG processor would: crm.* imported anew (and patches bound), then put back."""
    saved = {name: mod for name, mod in sys.modules.items() if _is_project_module(name)}
    for name in saved:
        del sys.modules[name]
    try:
        yield
    finally:
        for name in [n for n in sys.modules if _is_project_module(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


def dags_in(dagbag: DagBag, path: Path) -> list[DAG]:
    """The DAGs defined by one file."""
    return [dag for dag in dagbag.dags.values() if Path(dag.fileloc).resolve() == path.resolve()]


def import_errors_of(dagbag: DagBag, path: Path) -> dict[str, str]:
    """The import errors DagBag recorded for one file (keys may be absolute or relative to the DAGs folder)."""
    return {
        key: err
        for key, err in dagbag.import_errors.items()
        if (Path(key) if Path(key).is_absolute() else DAGS_DIR / key).resolve() == path.resolve()
    }


def dag_calls(tree: ast.AST) -> list[ast.Call]:
    """Calls of ``dag(...)`` / ``DAG(...)`` (decorator or constructor, bare or as ``airflow.sdk.dag``)."""
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name in {"dag", "DAG"}:
                calls.append(node)
    return calls


def passes_schedule(call: ast.Call) -> bool:
    """True if the call names ``schedule=`` (or forwards ``**kwargs``, which we cannot see into)."""
    return any(kw.arg in {"schedule", None} for kw in call.keywords)


def test_should_find_at_least_one_dag(dagbag: DagBag) -> None:
    assert dagbag.dags, f"no DAG found in {DAGS_DIR}"


def test_should_import_the_dags_folder_without_errors(dagbag: DagBag) -> None:
    assert not dagbag.import_errors, "\n\n".join(f"{f}:\n{e}" for f, e in dagbag.import_errors.items())


@pytest.mark.parametrize("path", DAG_FILES, ids=FILE_IDS)
def test_should_import_each_file_and_define_a_dag(dagbag: DagBag, path: Path) -> None:
    errors = import_errors_of(dagbag, path)
    assert not errors, f"{path} failed to import:\n{next(iter(errors.values()))}"
    assert dags_in(dagbag, path), f"{path} defines no DAG (is it in dags/ by mistake?)"


@pytest.mark.parametrize("path", DAG_FILES, ids=FILE_IDS)
def test_should_have_tags(dagbag: DagBag, path: Path) -> None:
    for dag in dags_in(dagbag, path):
        assert dag.tags, f"{dag.dag_id} has no tags"


@pytest.mark.parametrize("path", DAG_FILES, ids=FILE_IDS)
def test_should_have_an_owner_other_than_the_airflow_default(dagbag: DagBag, path: Path) -> None:
    for dag in dags_in(dagbag, path):
        unowned = [t.task_id for t in dag.tasks if not t.owner or t.owner == DEFAULT_OWNER]
        assert not unowned, f"{dag.dag_id}: tasks with the default owner {DEFAULT_OWNER!r}: {unowned}"


@pytest.mark.parametrize("path", DAG_FILES, ids=FILE_IDS)
def test_should_retry_every_task_at_least_twice(dagbag: DagBag, path: Path) -> None:
    for dag in dags_in(dagbag, path):
        few = {t.task_id: t.retries for t in dag.tasks if (t.retries or 0) < MIN_RETRIES}
        assert not few, f"{dag.dag_id}: tasks with retries < {MIN_RETRIES}: {few}"


@pytest.mark.parametrize("path", DAG_FILES, ids=FILE_IDS)
def test_should_have_doc_md(dagbag: DagBag, path: Path) -> None:
    for dag in dags_in(dagbag, path):
        assert dag.doc_md and dag.doc_md.strip(), f"{dag.dag_id} has no doc_md"


@pytest.mark.parametrize("path", DAG_FILES, ids=FILE_IDS)
def test_should_not_catch_up(dagbag: DagBag, path: Path) -> None:
    for dag in dags_in(dagbag, path):
        assert dag.catchup is False, f"{dag.dag_id} has catchup={dag.catchup!r}"


@pytest.mark.parametrize("path", DAG_FILES, ids=FILE_IDS)
def test_should_pass_the_schedule_explicitly(path: Path) -> None:
    # schedule=None and "no schedule argument" give the same DAG object: only the source tells them apart.
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    calls = dag_calls(tree)
    if calls:
        missing = [f"line {c.lineno}" for c in calls if not passes_schedule(c)]
        assert not missing, f"{path.name}: dag()/DAG() without schedule= at {', '.join(missing)}"
    else:  # built by a factory: the file must still state the schedule
        assert any(kw.arg == "schedule" for n in ast.walk(tree) if isinstance(n, ast.Call) for kw in n.keywords), (
            f"{path.name}: no call passes schedule="
        )


@pytest.mark.parametrize("path", DAG_FILES, ids=FILE_IDS)
def test_should_use_only_pools_declared_in_airflow_settings(dagbag: DagBag, path: Path) -> None:
    # airflow standalone never runs a task whose pool does not exist (dag.test() ignores pools).
    declared = {p["pool_name"] for p in load_settings(SETTINGS_FILE)["pools"]} | {"default_pool"}
    for dag in dags_in(dagbag, path):
        unknown = {t.task_id: t.pool for t in dag.tasks if t.pool not in declared}
        assert not unknown, f"{dag.dag_id}: pools not in airflow_settings.yaml: {unknown}"


def test_should_not_touch_connections_variables_or_databases_while_parsing() -> None:
    # Cold imports, so that a module-level `from sqlalchemy import create_engine` in crm.* binds
    # the mock during this parse instead of the already-imported original.
    with cold_project_imports():
        patches = {target: mock.patch(target) for target in PARSE_TIME_FORBIDDEN}
        mocks = {target: p.start() for target, p in patches.items()}
        try:
            fresh = DagBag(dag_folder=str(DAGS_DIR))
        finally:
            for p in patches.values():
                p.stop()
    assert fresh.dags or not DAG_FILES
    called = {target: m.call_args_list for target, m in mocks.items() if m.called}
    assert not called, f"parsing {DAGS_DIR} called: {called}"


def test_should_parse_each_file_in_well_under_a_second() -> None:
    with cold_project_imports():  # a fresh DAG processor pays the crm.* imports too
        started = time.perf_counter()
        fresh = DagBag(dag_folder=str(DAGS_DIR))
        total = time.perf_counter() - started
    slow = {s.file: round(s.duration.total_seconds(), 3) for s in fresh.dagbag_stats}
    slow = {f: d for f, d in slow.items() if d >= MAX_PARSE_SECONDS_PER_FILE}
    assert not slow, f"files taking >= {MAX_PARSE_SECONDS_PER_FILE}s to parse (heavy imports at module level?): {slow}"
    assert total < MAX_PARSE_SECONDS_PER_FILE * max(1, len(DAG_FILES)), f"parsing {DAGS_DIR} took {total:.2f}s"
