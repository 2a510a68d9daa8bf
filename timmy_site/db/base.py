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
        # Reads straight from the page cache instead of copying each page: a memory search at 100,000 memories
        # reads about 15 MB of vector codes (bench/memory.py). Address space only; nothing is loaded up front.
        conn.execute("PRAGMA mmap_size=1073741824")
        return conn
