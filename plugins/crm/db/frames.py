"""`select_frame`: a Core SELECT over the CRM as a DataFrame, fetched with the driver's own cursor.

Why not `conn.execute(stmt).all()`: SQLAlchemy's per-row result processing costs ~10x the query
itself on a million accounts (measured: 1.3 s vs 0.15 s per 100,000 rows on SQLite). The statement
is still built and compiled by SQLAlchemy (quoting, dialect), only the rows skip the Row layer.
Values come as the driver returns them (SQLite: dates as ISO text), so callers convert dates.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from sqlalchemy import Engine
from sqlalchemy.sql import Select


def select_frame(db: Engine, stmt: Select, columns: Sequence[str]) -> pd.DataFrame:
    """Run `stmt` and return its rows as a DataFrame with `columns` (object/int64/float64 columns)."""
    with db.connect() as conn:
        compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
        params = compiled.params
        if compiled.positiontup is not None:
            args: tuple | dict = tuple(params[k] for k in compiled.positiontup)
        else:
            args = params
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute(compiled.string, args)
            rows = cursor.fetchall()
        finally:
            cursor.close()
    return pd.DataFrame.from_records(rows, columns=list(columns), coerce_float=False)
