"""airflow_settings.yaml: what the routines will get from Airflow is what the file says.

Why: the routines build engines from ``Connection.get_uri()`` and the SMTP channel reads SmtpHook's
extras; a setting that does not round-trip through Airflow would only show up in a live run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from crm.demo.settings import (
    SettingsError,
    apply_settings,
    connection_env,
    expand,
    load_settings,
    variable_env,
)

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_FILE = ROOT / "airflow_settings.yaml"


def test_should_expand_crm_home_defaulting_to_the_project_root() -> None:
    settings = load_settings(SETTINGS_FILE, env={})
    crm = next(c for c in settings["connections"] if c["conn_id"] == "crm_db")
    assert crm["conn_schema"] == f"{ROOT}/var/crm.db"
    assert load_settings(SETTINGS_FILE, env={"CRM_HOME": "/srv/crm"})["connections"][0]["conn_schema"] == (
        "/srv/crm/var/crm.db"
    )


def test_should_refuse_an_unset_placeholder_rather_than_blank_it() -> None:
    with pytest.raises(SettingsError, match="NOPE"):
        expand("${NOPE}/x", env={})


def test_should_declare_the_sandbox_connections_and_pool_and_no_variable() -> None:
    settings = load_settings(SETTINGS_FILE)
    assert {c["conn_id"] for c in settings["connections"]} == {
        "crm_db",
        "erp_db",
        "gp_db",
        "smtp_default",
        "sms_gateway",
        "rd_conversas",
    }
    assert settings["pools"] == [
        {"pool_name": "crm_rpw", "pool_slot": 4, "pool_description": "the RPW server (CRM routines share these slots)"}
    ]
    # nothing reads a Variable: recipients come from Params and include/config/routines.yaml
    assert variable_env(SETTINGS_FILE) == {}


@pytest.mark.parametrize("conn_id", ["crm_db", "erp_db", "gp_db"])
def test_should_give_sqlalchemy_a_usable_sqlite_url_through_get_uri(
    conn_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "a dir with spaces"  # percent-encoding must round-trip
    (home / "var").mkdir(parents=True)
    for key, value in connection_env(SETTINGS_FILE, env={"CRM_HOME": str(home)}).items():
        monkeypatch.setenv(key, value)
    from airflow.models.connection import Connection
    from airflow.sdk import BaseHook

    for conn in (BaseHook.get_connection(conn_id), Connection.get_connection_from_secrets(conn_id)):
        engine = sa.create_engine(conn.get_uri())
        with engine.begin() as cx:
            cx.execute(sa.text("create table if not exists probe (x integer)"))
        engine.dispose()
        assert engine.url.database == str(home / "var" / f"{conn_id.removesuffix('_db')}.db")
    assert (home / "var" / f"{conn_id.removesuffix('_db')}.db").exists()


def test_should_give_smtphook_the_sandbox_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in connection_env(SETTINGS_FILE).items():
        monkeypatch.setenv(key, value)
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    hook = SmtpHook()
    hook.smtp_connection = hook.get_connection("smtp_default")
    assert (hook.host, hook.port) == ("127.0.0.1", 8025)
    assert hook.use_ssl is False
    assert hook.smtp_starttls is False
    assert hook.from_email == "crm-batch@example.com"
    assert hook.timeout == 30
    assert hook.smtp_user == ""  # no login: SmtpHook skips AUTH


def test_should_give_the_http_connections_a_base_url_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in connection_env(SETTINGS_FILE).items():
        monkeypatch.setenv(key, value)
    from airflow.providers.http.hooks.http import HttpHook

    for conn_id, port in (("sms_gateway", 8026), ("rd_conversas", 8027)):
        hook = HttpHook(http_conn_id=conn_id)
        hook.get_conn()
        assert hook.base_url == f"http://127.0.0.1:{port}"
    assert HttpHook.get_connection("rd_conversas").password == "sandbox-token"


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_should_upsert_into_the_metadata_db_idempotently(airflow_db: Path, tmp_path: Path) -> None:
    from airflow.models.connection import Connection
    from airflow.models.pool import Pool
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    data = yaml.safe_load(SETTINGS_FILE.read_text(encoding="utf-8"))
    assert data["airflow"]["variables"] == []  # the shipped file defines none: bring one of our own
    data["airflow"]["variables"] = [{"variable_name": "crm_settings_test", "variable_value": "crm-ops@example.com"}]
    path = _write(tmp_path / "settings.yaml", data)
    first = apply_settings(path)
    assert set(first.values()) <= {"created", "unchanged"}
    assert first["connection crm_db"] in {"created", "unchanged"}
    assert set(apply_settings(path).values()) == {"unchanged"}

    # change a value of each kind: the row is updated, the rest untouched
    data["airflow"]["pools"][0]["pool_slot"] = 7
    data["airflow"]["variables"][0]["variable_value"] = "ops@example.org"
    smtp = next(c for c in data["airflow"]["connections"] if c["conn_id"] == "smtp_default")
    smtp["conn_extra"]["timeout"] = 5
    outcome = apply_settings(_write(path, data))
    assert outcome["pool crm_rpw"] == "updated"
    assert outcome["variable crm_settings_test"] == "updated"
    assert outcome["connection smtp_default"] == "updated"
    assert outcome["connection crm_db"] == "unchanged"

    with create_session() as session:
        pool = session.scalar(select(Pool).where(Pool.pool == "crm_rpw"))
        assert pool.slots == 7
        conn = session.scalar(select(Connection).where(Connection.conn_id == "smtp_default"))
        assert conn.extra_dejson["timeout"] == 5
        assert conn.extra_dejson["disable_tls"] is True
    assert Variable.get("crm_settings_test") == "ops@example.org"

    Variable.delete("crm_settings_test")
    apply_settings(SETTINGS_FILE)  # leave the session's DB as the real file says


def test_should_apply_settings_from_the_command_line(airflow_db: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins")}
    result = subprocess.run(
        [sys.executable, "-m", "crm.demo", "apply-settings", "--file", str(SETTINGS_FILE)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "pool crm_rpw:" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "connections", "get", "crm_db", "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [conn] = json.loads(result.stdout)
    assert conn["conn_type"] == "sqlite"
    assert conn["schema"].endswith("/var/crm.db")
