"""Shared test fixtures: a throwaway Airflow home, the DagBag, the SMTP sink and PostgreSQL.

Why this shape:
- AIRFLOW_HOME is a fresh temp dir set before anything imports airflow, so tests can never touch
  a real metadata DB (e.g. var/airflow-home of `make run`).
- `airflow db migrate` costs seconds: only tests that ask for the `airflow_db` fixture pay it,
  once per session; pure unit tests stay fast.
- PostgreSQL tests skip where no server is reachable, but under CI=true an unreachable server
  is a failure: CI must not go green by skipping the DB layer.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

ROOT = Path(__file__).resolve().parents[1]
# CRM_TEST_DAGS_DIR points the DAG tests at another folder (e.g. a scratch DAG while dags/ is empty).
DAGS_DIR = Path(os.environ.get("CRM_TEST_DAGS_DIR", ROOT / "dags")).resolve()
PLUGINS_DIR = ROOT / "plugins"
SETTINGS_FILE = ROOT / "airflow_settings.yaml"
DEFAULT_PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"

if str(PLUGINS_DIR) not in sys.path:
    sys.path.insert(0, str(PLUGINS_DIR))

_AIRFLOW_HOME = tempfile.mkdtemp(prefix="crm-airflow-home-")
atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)
os.environ.update(
    AIRFLOW_HOME=_AIRFLOW_HOME,
    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{_AIRFLOW_HOME}/airflow.db",
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__CORE__DAGS_FOLDER=str(DAGS_DIR),
    AIRFLOW__CORE__PLUGINS_FOLDER=str(PLUGINS_DIR),
)
os.environ.setdefault("CRM_HOME", str(ROOT))

if TYPE_CHECKING:
    from airflow.dag_processing.dagbag import DagBag
    from sqlalchemy.engine import Engine

    from crm.demo.smtp_sink import MailSink


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses PostgreSQL, so `-m "not postgres"` deselects them."""
    for item in items:
        if "pg_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


def running_in_ci() -> bool:
    """CI sets CI=true; there, missing services are failures, not skips."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    """The session's throwaway AIRFLOW_HOME."""
    return Path(_AIRFLOW_HOME)


@pytest.fixture(scope="session")
def airflow_db(airflow_home: Path) -> Path:
    """A migrated Airflow metadata DB (SQLite in the throwaway home), for dag.test() and settings tests."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"airflow db migrate failed:\n{result.stdout}\n{result.stderr}")
    return airflow_home / "airflow.db"


@pytest.fixture(scope="session")
def dagbag() -> DagBag:
    """Every DAG in dags/, parsed once per session."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[MailSink]:
    """A real SMTP server on 127.0.0.1:<free port> storing into tmp_path/mail; `.messages()` parses them."""
    from crm.demo.smtp_sink import MailSink

    with MailSink(tmp_path / "mail") as sink:
        yield sink


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of a reachable PostgreSQL (CRM_TEST_POSTGRES_URL); skip if unreachable, fail under CI=true."""
    import sqlalchemy as sa

    url = os.environ.get("CRM_TEST_POSTGRES_URL", DEFAULT_PG_URL)
    engine = sa.create_engine(url, connect_args={"connect_timeout": 5}, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        message = f"PostgreSQL not reachable at {engine.url!r}: {type(exc).__name__}: {first_line}"
        if running_in_ci():
            pytest.fail(f"{message} (CI=true: PostgreSQL tests must run)", pytrace=False)
        pytest.skip(message)
    finally:
        engine.dispose()
    return url


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """An engine whose connections live in a fresh, empty schema (search_path), dropped afterwards."""
    import sqlalchemy as sa

    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    engine = sa.create_engine(pg_url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'drop schema if exists "{schema}" cascade'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def crm_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty CRM (every table of the schema), once on a SQLite file and once on PostgreSQL."""
    from crm.db import engine_from_url
    from crm.db.crm_schema import metadata

    if request.param == "sqlite":
        engine = engine_from_url(f"sqlite:///{tmp_path / 'crm.db'}")
    else:
        engine = request.getfixturevalue("pg_engine")  # disposed, schema dropped, by pg_engine
    metadata.create_all(engine)
    yield engine
    if request.param == "sqlite":
        engine.dispose()
