"""The workspace's database: SQLite in the workspace folder (embedded, the default), or PostgreSQL, which
workers on several machines share (``tune --store postgresql://...``, or $TUNELOOP_STORE).

The workspace speaks one SQL to both: ``?`` and ``:name`` parameters, ``ON CONFLICT`` upserts, and write
transactions that take the database's one write lock when they begin (SQLite's ``BEGIN IMMEDIATE``; on
PostgreSQL a transaction-scoped advisory lock), so that what a transaction reads cannot change before its writes
land, on either. The few things that differ are methods here: the schema version, a table's columns, the types
in CREATE TABLE, and the URL Optuna's storage reaches the same database by.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from tuneloop.errors import ConfigError, TuneloopError

WRITE_LOCK = 7_427_301  # the advisory lock key every tuneloop writer takes on PostgreSQL
POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def is_postgres(url: str | None) -> bool:
    return bool(url) and url.startswith(POSTGRES_SCHEMES)


class _Database:
    """What both databases do alike, on the connection each keeps in ``_connection``."""

    _connection: Any

    def commit(self) -> None:
        self._connection.execute("COMMIT")

    def rollback(self) -> None:
        self._connection.execute("ROLLBACK")

    def close(self) -> None:
        self._connection.close()


class SQLiteDatabase(_Database):
    dialect = "sqlite"

    def __init__(self, path: Path, read_only: bool = False):
        self.path = path
        if read_only:  # SQLite itself refuses every write on this connection
            self._connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30,
                                               isolation_level=None)
        else:
            self._connection = sqlite3.connect(path, timeout=30, isolation_level=None)
        self._connection.row_factory = sqlite3.Row
        if not read_only:
            self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute("PRAGMA foreign_keys=ON")

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self._connection.execute(sql, params)

    def begin_write(self) -> None:
        self._connection.execute("BEGIN IMMEDIATE")

    @property
    def in_transaction(self) -> bool:
        return self._connection.in_transaction

    def schema_version(self) -> int:
        return self._connection.execute("PRAGMA user_version").fetchone()[0]

    def set_schema_version(self, version: int) -> None:
        self._connection.execute(f"PRAGMA user_version={int(version)}")

    def columns(self, table: str) -> set[str]:
        return {row[1] for row in self._connection.execute(f"PRAGMA table_info({table})")}

    def ddl(self, statement: str) -> str:
        return statement

    def optuna_url(self) -> str:
        return f"sqlite:///{self.path.resolve()}"

    def optuna_engine_kwargs(self) -> dict[str, Any]:
        return {"connect_args": {"timeout": 30}}

    def describe(self) -> str:
        return str(self.path)


class Row(tuple):
    """A row read by name or by position, like ``sqlite3.Row``."""

    names: tuple[str, ...]

    def __new__(cls, values: Any, names: tuple[str, ...]) -> Row:
        row = super().__new__(cls, values)
        row.names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self.names.index(key))
            except ValueError:
                raise IndexError(f"no column {key!r}") from None
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self.names)


def _rows(cursor: Any) -> Any:
    names = tuple(column.name for column in cursor.description or ())
    return lambda values: Row(values, names)


_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def postgres_sql(sql: str) -> str:
    """SQLite's parameters as psycopg's: ``?`` -> ``%s``, ``:name`` -> ``%(name)s`` (and a literal % doubled)."""
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%").replace("?", "%s"))


class PostgresDatabase(_Database):
    dialect = "postgresql"

    def __init__(self, url: str, read_only: bool = False):
        try:
            import psycopg
        except ImportError as exc:
            raise ConfigError([f"a PostgreSQL store ({redact(url)}) needs psycopg: pip install "
                               "'tuneloop[postgres]'."]) from exc
        self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        try:
            self._connection = psycopg.connect(self.url, autocommit=True, row_factory=_rows)
        except psycopg.OperationalError as exc:
            raise TuneloopError(f"cannot reach the PostgreSQL store {redact(url)}: {str(exc).strip()}") from exc
        self._psycopg = psycopg
        if read_only:  # the server itself refuses every write in this session
            self._connection.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self._connection.execute(postgres_sql(sql), params or None)

    def begin_write(self) -> None:
        self._connection.execute("BEGIN")
        self._connection.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))

    @property
    def in_transaction(self) -> bool:
        return self._connection.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE

    def schema_version(self) -> int:
        if self.execute("SELECT to_regclass('tuneloop_schema')").fetchone()[0] is None:
            return 0
        row = self.execute("SELECT version FROM tuneloop_schema").fetchone()
        return row[0] if row else 0

    def set_schema_version(self, version: int) -> None:
        self.execute("CREATE TABLE IF NOT EXISTS tuneloop_schema (version INTEGER NOT NULL)")
        self.execute("DELETE FROM tuneloop_schema")
        self.execute("INSERT INTO tuneloop_schema (version) VALUES (?)", (int(version),))

    def columns(self, table: str) -> set[str]:
        rows = self.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                            "AND table_name = ?", (table,))
        return {row[0] for row in rows}

    def ddl(self, statement: str) -> str:
        """SQLite's CREATE TABLE as PostgreSQL's: REAL is single precision there, and keys count by identity."""
        statement = statement.replace("INTEGER PRIMARY KEY AUTOINCREMENT",
                                      "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
        return re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement)

    def optuna_url(self) -> str:
        return self.url.replace("postgresql://", "postgresql+psycopg://", 1).replace(
            "postgres://", "postgresql+psycopg://", 1)

    def optuna_engine_kwargs(self) -> dict[str, Any]:
        return {}

    def describe(self) -> str:
        return redact(self.url)


def redact(url: str) -> str:
    """``url`` without its password, to print."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)
