"""airflow_settings.yaml (Astro CLI format): load it, apply it to Airflow, or turn it into environment variables.

Why: local runs (`make run`) and tests need the same sandbox connections, pools and variables. The
Astro file is the one place they are declared; this module is the only code that reads it:

- ``apply_settings`` upserts them into the metadata DB of the current ``AIRFLOW_HOME`` (idempotent);
- ``connection_env`` / ``variable_env`` give ``AIRFLOW_CONN_*`` / ``AIRFLOW_VAR_*`` variables, so a
  test can inject them with ``monkeypatch.setenv`` and never touch a metadata DB.

``${NAME}`` in any string value is expanded from the environment; ``CRM_HOME`` defaults to the
project root, so ``${CRM_HOME}/var/crm.db`` works from any working directory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

# plugins/crm/demo/settings.py -> project root
ROOT = Path(__file__).resolve().parents[3]
DEFAULT_FILE = ROOT / "airflow_settings.yaml"

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_CONN_FIELDS = ("conn_type", "host", "schema", "login", "password", "port", "extra", "description")


class SettingsError(ValueError):
    """airflow_settings.yaml is malformed or refers to an unset ${VARIABLE}."""


def _environ(env: Mapping[str, str] | None) -> dict[str, str]:
    merged = dict(os.environ if env is None else env)
    merged.setdefault("CRM_HOME", str(ROOT))
    return merged


def expand(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """Expand ``${NAME}`` in strings (recursively in lists/dicts); an unset NAME is an error, not a blank."""
    environ = _environ(env)

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise SettingsError(f"${{{name}}} is used in airflow_settings.yaml but is not set")
        return environ[name]

    if isinstance(value, str):
        return _PLACEHOLDER.sub(sub, value)
    if isinstance(value, list):
        return [expand(v, environ) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, environ) for k, v in value.items()}
    return value


def load_settings(path: str | os.PathLike[str] = DEFAULT_FILE, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The file's ``airflow:`` section with placeholders expanded.

    Shape: ``{"connections": [...], "pools": [...], "variables": [...]}``.

    Entries keep the Astro field names (``conn_id``, ``pool_slot``, ``variable_value``...); a
    ``conn_extra`` given as a JSON string is parsed into a dict.
    """
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    section = raw.get("airflow") if isinstance(raw, dict) else None
    if not isinstance(section, dict):
        raise SettingsError(f"{path}: expected a top-level 'airflow:' mapping")
    settings: dict[str, Any] = {}
    for key, required in (
        ("connections", ("conn_id",)),
        ("pools", ("pool_name", "pool_slot")),
        ("variables", ("variable_name",)),
    ):
        entries = section.get(key) or []
        if not isinstance(entries, list):
            raise SettingsError(f"{path}: airflow.{key} must be a list")
        for entry in entries:
            if not isinstance(entry, dict) or any(entry.get(r) in (None, "") for r in required):
                raise SettingsError(f"{path}: every airflow.{key} entry needs {', '.join(required)}: {entry!r}")
        settings[key] = [expand(entry, env) for entry in entries]
    for conn in settings["connections"]:
        extra = conn.get("conn_extra")
        if isinstance(extra, str) and extra.strip():
            try:
                conn["conn_extra"] = json.loads(extra)
            except json.JSONDecodeError as exc:
                raise SettingsError(f"{path}: conn_extra of {conn['conn_id']!r} is not JSON: {exc}") from exc
        elif not extra:
            conn["conn_extra"] = None
        if not isinstance(conn["conn_extra"], dict | None):
            raise SettingsError(f"{path}: conn_extra of {conn['conn_id']!r} must be a mapping")
    return settings


def _connection_fields(conn: Mapping[str, Any]) -> dict[str, Any]:
    """Astro entry -> Airflow Connection keyword arguments (conn_uri wins if given, as in the Astro CLI)."""
    if conn.get("conn_uri"):
        from airflow.models.connection import Connection

        parsed = Connection(conn_id=conn["conn_id"], uri=conn["conn_uri"])
        fields = {f: getattr(parsed, f) for f in _CONN_FIELDS if f != "extra"}
        fields["extra"] = parsed.extra_dejson or None
        fields["description"] = conn.get("conn_description")
        return fields
    port = conn.get("conn_port")
    return {
        "conn_type": conn.get("conn_type"),
        "host": conn.get("conn_host") or None,
        "schema": conn.get("conn_schema") or None,
        "login": conn.get("conn_login") or None,
        "password": None if conn.get("conn_password") in (None, "") else str(conn["conn_password"]),
        "port": int(port) if port not in (None, "") else None,
        "extra": conn.get("conn_extra") or None,
        "description": conn.get("conn_description"),
    }


def _variable_value(value: Any) -> str:
    """Airflow stores variables as text: mappings and lists as JSON, scalars with str()."""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return "" if value is None else str(value)


def connection_env(path: str | os.PathLike[str] = DEFAULT_FILE, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{"AIRFLOW_CONN_CRM_DB": "<json>", ...}`` for every connection in the file.

    The JSON form is used (not the URI form) because it keeps typed extras such as
    ``"timeout": 30`` and ``"disable_tls": true`` exactly; both Airflow's env-var secrets backend
    and the Task SDK's accept it.
    """
    result: dict[str, str] = {}
    for conn in load_settings(path, env)["connections"]:
        fields = {k: v for k, v in _connection_fields(conn).items() if v is not None}
        result[f"AIRFLOW_CONN_{conn['conn_id'].upper()}"] = json.dumps(fields)
    return result


def variable_env(path: str | os.PathLike[str] = DEFAULT_FILE, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{"AIRFLOW_VAR_CRM_DEFAULT_NOTIFY_TO": "crm-ops@example.com", ...}`` for every variable in the file."""
    return {
        f"AIRFLOW_VAR_{var['variable_name'].upper()}": _variable_value(var.get("variable_value"))
        for var in load_settings(path, env)["variables"]
    }


def apply_settings(path: str | os.PathLike[str] = DEFAULT_FILE, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Upsert the file's connections, pools and variables into the Airflow metadata DB.

    Idempotent: running it twice changes nothing the second time; a changed value in the file
    updates the row. Objects not in the file are left alone. Needs `airflow db migrate` first.
    Returns ``{"connection crm_db": "created" | "updated" | "unchanged", ...}``.
    """
    settings = load_settings(path, env)

    # The ORM classes of the metadata DB (airflow.sdk's Connection/Variable are task-side clients).
    from airflow.models.connection import Connection
    from airflow.models.pool import Pool
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    outcome: dict[str, str] = {}
    with create_session() as session:
        for conn in settings["connections"]:
            conn_id = conn["conn_id"]
            fields = _connection_fields(conn)
            row = session.scalar(select(Connection).where(Connection.conn_id == conn_id))
            if row is None:
                session.add(Connection(conn_id=conn_id, **fields))
                outcome[f"connection {conn_id}"] = "created"
                continue
            changed = False
            for name, value in fields.items():
                current = (row.extra_dejson or None) if name == "extra" else getattr(row, name)
                if current != value:
                    setattr(row, name, json.dumps(value) if name == "extra" and value is not None else value)
                    changed = True
            outcome[f"connection {conn_id}"] = "updated" if changed else "unchanged"

        for pool in settings["pools"]:
            name, slots = pool["pool_name"], int(pool["pool_slot"])
            description = pool.get("pool_description") or ""
            include_deferred = bool(pool.get("pool_include_deferred", False))
            row = session.scalar(select(Pool).where(Pool.pool == name))
            if row is not None and (row.slots, row.description or "", bool(row.include_deferred)) == (
                slots,
                description,
                include_deferred,
            ):
                outcome[f"pool {name}"] = "unchanged"
                continue
            Pool.create_or_update_pool(name, slots, description, include_deferred, session=session)
            outcome[f"pool {name}"] = "created" if row is None else "updated"

        for var in settings["variables"]:
            key, value = var["variable_name"], _variable_value(var.get("variable_value"))
            description = var.get("variable_description")
            row = session.scalar(select(Variable).where(Variable.key == key))
            if row is not None and (row.val, row.description) == (value, description):
                outcome[f"variable {key}"] = "unchanged"
                continue
            Variable.set(key, value, description=description, session=session)
            outcome[f"variable {key}"] = "created" if row is None else "updated"
    return outcome
