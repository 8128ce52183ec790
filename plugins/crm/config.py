"""Project paths and the per-routine settings in include/config/routines.yaml.

routines.yaml is read at DAG parse time on purpose: it is a file in the
deployment, so parsing never needs a connection, a Variable or a database.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

# plugins/crm/config.py -> project root (the Astro layout: dags/, plugins/, include/ side by side).
ROOT = Path(__file__).resolve().parents[2]
INCLUDE_DIR = Path(os.environ.get("CRM_INCLUDE_DIR", ROOT / "include"))
VAR_DIR = Path(os.environ.get("CRM_VAR_DIR", ROOT / "var"))
SQL_DIR = INCLUDE_DIR / "sql"
TEMPLATES_DIR = INCLUDE_DIR / "templates"
ROUTINES_FILE = INCLUDE_DIR / "config" / "routines.yaml"
# Asset crm_account_purchase_profile produces (its load task's outlet) and crm_class_transition runs on.
PROFILE_ASSET_URI = "crm://crm_db/crm_account_profile"

DEFAULTS: dict[str, Any] = {
    "timezone": "America/Sao_Paulo",
    "pool": "crm_rpw",
    "enabled": True,
    "notify_to": [],
    "params": {},
}


class ConfigError(ValueError):
    """routines.yaml is missing a routine or has a bad value."""


@functools.cache
def _all_settings() -> dict[str, Any]:
    with open(ROUTINES_FILE, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{ROUTINES_FILE}: expected a mapping of dag_id -> settings")
    return data


def routine_settings(dag_id: str) -> dict[str, Any]:
    """Settings of one routine, with the project defaults filled in."""
    data = _all_settings()
    if dag_id not in data:
        raise ConfigError(f"{ROUTINES_FILE}: no entry for routine {dag_id!r}")
    merged = {**DEFAULTS, **(data.get("defaults") or {}), **(data[dag_id] or {})}
    schedules = merged.get("schedules")
    if schedules is not None and (not isinstance(schedules, list) or not all(isinstance(s, str) for s in schedules)):
        raise ConfigError(f"{ROUTINES_FILE}: {dag_id}.schedules must be a list of cron strings")
    return merged


def schedule_for(dag_id: str, assets: Sequence[str] = ()) -> Any:
    """The routine's timetable: several crons allowed (the "automatic agenda"); none or disabled: manual only.

    `assets` (URIs): the routine also runs when any of them is updated (Airflow Assets), the crons
    then being its fallback; `enabled: false` still means manual only.
    """
    from airflow.sdk import Asset, AssetOrTimeSchedule, MultipleCronTriggerTimetable

    s = routine_settings(dag_id)
    if not s.get("enabled", True):
        return None
    timetable = MultipleCronTriggerTimetable(*s["schedules"], timezone=s["timezone"]) if s.get("schedules") else None
    if not assets:
        return timetable
    events = [Asset(uri) for uri in assets]
    return events if timetable is None else AssetOrTimeSchedule(assets=events, timetable=timetable)
