"""Wiring a copy of a seeded demo to DAG tasks: AIRFLOW_CONN_* variables, the SMTP sink, staging."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


def smtp_conn(host: str, port: int, timeout: int = 30) -> str:
    return json.dumps(
        {
            "conn_type": "smtp",
            "host": host,
            "port": port,
            "extra": {
                "disable_tls": True,
                "disable_ssl": True,
                "from_email": "crm-batch@example.com",
                "timeout": timeout,
            },
        }
    )


def wire_demo(monkeypatch: pytest.MonkeyPatch, seeded: Path, tmp_path: Path, sink) -> Path:
    """A private copy of the seeded demo databases, reachable by tasks through the usual connection ids."""
    from crm.db.engines import engine_from_url

    var = tmp_path / "var"
    shutil.copytree(seeded, var)
    for conn_id, name in (("CRM_DB", "crm.db"), ("ERP_DB", "erp.db"), ("GP_DB", "gp.db")):
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id}", json.dumps({"conn_type": "sqlite", "schema": str(var / name)}))
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_conn(sink.host, sink.port))
    monkeypatch.setenv("CRM_STAGING_URL", f"file://{tmp_path / 'staging'}")
    engine_from_url.cache_clear()
    return var
