"""Idle SQLite connections of one process, kept for reuse instead of being closed.

Django opens a connection for each request and closes it at the end (and daphne runs each request in a thread of
its own, so persistent per-thread connections would only leak). Opening costs more than most queries here (the
engine loads sqlite-vec and sets its pragmas on each), and SQLite 3.51.1's unix VFS deadlocked for good under that
open/close churn. The engine (base.py) takes a connection from here when it would open one and gives it back when
it would close it. Connections given back inside a transaction are rolled back first; those beyond `size` are
closed.
"""

import threading
from collections import defaultdict
from typing import Any


class ConnectionPool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: defaultdict[tuple[str, str], list[Any]] = defaultdict(list)

    def take(self, key: tuple[str, str]) -> Any | None:
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def give(self, key: tuple[str, str], conn: Any, *, size: int) -> None:
        """Keep `conn` for the next `take` of `key`, or close it when `size` are idle already."""
        try:
            if conn.in_transaction:
                conn.rollback()
        except Exception:
            conn.close()
            raise
        with self._lock:
            idle = self._idle[key]
            if len(idle) < size:
                idle.append(conn)
                return
        conn.close()

    def drain(self, database: str | None = None) -> int:
        """Close the idle connections to `database` (all of them with None): before its file is removed, say."""
        with self._lock:
            keys = [key for key in self._idle if database is None or key[0] == database]
            closing = [conn for key in keys for conn in self._idle.pop(key)]
        for conn in closing:
            conn.close()
        return len(closing)

    def idle_count(self, database: str | None = None) -> int:
        with self._lock:
            return sum(len(conns) for key, conns in self._idle.items() if database is None or key[0] == database)


pool = ConnectionPool()
