import os
from typing import Any

import sqlite_vec
from django.db.backends.sqlite3 import base as sqlite3_base
from django.db.backends.sqlite3.creation import DatabaseCreation as SQLiteDatabaseCreation

from timmy_site.db.pool import pool


def _database_file(name: object) -> str | None:
    """The path of a database on disk, or None for an in-memory or URI database."""
    text = str(name)
    if text == ":memory:" or text.startswith("file:"):
        return None
    return text


class DatabaseCreation(SQLiteDatabaseCreation):
    # A test database file is removed at the start and end of a run: the pool must not keep connections to it.
    # (django-stubs does not declare these private methods.)
    def _create_test_db(self, verbosity: int, autoclobber: bool, keepdb: bool = False) -> Any:
        pool.drain(str(self._get_test_db_name()))  # type: ignore[attr-defined]
        return super()._create_test_db(verbosity, autoclobber, keepdb)  # type: ignore[misc]

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        pool.drain(str(test_database_name))
        super()._destroy_test_db(test_database_name, verbosity)  # type: ignore[misc]


class DatabaseWrapper(sqlite3_base.DatabaseWrapper):
    creation_class = DatabaseCreation

    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        # Ours, not sqlite3.connect's (settings.SQLITE_OPTIONS).
        self.pool_size = int(params.pop("pool_size", 0))
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        database = str(conn_params["database"])
        self._pool_key = (database, repr(sorted(conn_params.items())))
        conn = pool.take(self._pool_key) if self.pool_size else None
        if conn is not None:
            return conn
        path = _database_file(database)
        if path is not None and not os.path.exists(path):
            # SQLite would create it 0644 (and its -wal and -shm files after it): only the owner may read it.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = super().get_new_connection(conn_params)
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        # WAL lets the web server read while the worker writes; NORMAL stays durable across app crashes.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        # Reads straight from the page cache instead of copying each page: a memory search at 100,000 memories
        # reads about 15 MB of vector codes (bench/memory.py). Address space only; nothing is loaded up front.
        conn.execute("PRAGMA mmap_size=1073741824")
        return conn

    def _close(self) -> None:
        # Inside an atomic block the connection is being abandoned mid-transaction: really close it.
        if self.connection is None or not self.pool_size or self.in_atomic_block or self.is_in_memory_db():
            super()._close()  # type: ignore[misc]
            return
        with self.wrap_database_errors:
            pool.give(self._pool_key, self.connection, size=self.pool_size)
