from typing import Any

import sqlite_vec
from django.db.backends.sqlite3 import base as sqlite3_base


class DatabaseWrapper(sqlite3_base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        conn = super().get_new_connection(conn_params)
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        # WAL lets the web server read while the worker writes; NORMAL stays durable across app crashes.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn
