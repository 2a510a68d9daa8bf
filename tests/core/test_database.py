"""The SQLite engine (timmy_site/db): files only their owner can read, and connections reused, not reopened."""

import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db.utils import ConnectionHandler

from timmy_site.db.base import DatabaseWrapper
from timmy_site.db.pool import pool


def wrapper(path: Path, pool_size: int = 4) -> Any:
    """A connection to a scratch SQLite file, as Django makes one per thread (whatever engine the suite runs on)."""
    options = {**settings.SQLITE_OPTIONS, "pool_size": pool_size}
    scratch = {"ENGINE": settings.SQLITE_ENGINE, "NAME": str(path), "OPTIONS": options}
    handler = ConnectionHandler({"default": scratch})
    return DatabaseWrapper(handler.settings["default"], alias="scratch")


@pytest.fixture
def database(tmp_path: Path, django_db_blocker: Any) -> Any:
    path = tmp_path / "scratch.sqlite3"
    with django_db_blocker.unblock():
        yield path
    pool.drain(str(path))


def test_a_new_database_and_its_wal_files_are_readable_by_their_owner_only(database):
    db = wrapper(database)
    with db.cursor() as cursor:
        cursor.execute("CREATE TABLE t (x INTEGER)")
        cursor.execute("INSERT INTO t VALUES (1)")
        files = [database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")]
        assert [stat.S_IMODE(f.stat().st_mode) for f in files] == [0o600, 0o600, 0o600]
    db.close()


def test_a_closed_connection_is_reused_by_the_next_request_instead_of_reopened(database):
    first = wrapper(database)
    first.ensure_connection()
    raw = first.connection
    first.close()
    assert pool.idle_count(str(database)) == 1

    second = wrapper(database)  # another thread's or request's wrapper
    with second.cursor() as cursor:
        cursor.execute("SELECT vec_version()")  # sqlite-vec still loaded
        assert cursor.fetchone()[0].startswith("v")
    assert second.connection is raw
    second.close()


def test_a_connection_given_back_inside_a_transaction_is_rolled_back(database):
    db = wrapper(database)
    with db.cursor() as cursor:
        cursor.execute("CREATE TABLE t (x INTEGER)")
    db.connection.execute("BEGIN")
    db.connection.execute("INSERT INTO t VALUES (1)")
    db.close()

    again = wrapper(database)
    with again.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM t")
        assert cursor.fetchone()[0] == 0
        assert not again.connection.in_transaction
    again.close()


def test_no_more_idle_connections_are_kept_than_the_pool_size(database):
    wrappers = [wrapper(database, pool_size=2) for _ in range(5)]
    for db in wrappers:
        db.ensure_connection()
    raws = [db.connection for db in wrappers]
    for db in wrappers:
        db.close()
    assert pool.idle_count(str(database)) == 2
    closed = [raw for raw in raws[2:]]
    for raw in closed:
        with pytest.raises(Exception, match="closed"):
            raw.execute("SELECT 1")


def test_pool_size_zero_opens_and_closes_a_connection_each_time(database):
    db = wrapper(database, pool_size=0)
    db.ensure_connection()
    raw = db.connection
    db.close()
    assert pool.idle_count(str(database)) == 0
    with pytest.raises(Exception, match="closed"):
        raw.execute("SELECT 1")


def test_threads_never_share_a_connection_at_once(database):
    seen: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(50):
            db = wrapper(database, pool_size=2)
            db.ensure_connection()
            with lock:
                assert id(db.connection) not in seen
                seen.append(id(db.connection))
            with db.cursor() as cursor:
                cursor.execute("SELECT 1")
            with lock:
                seen.remove(id(db.connection))
            db.close()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert seen == []
    assert pool.idle_count(str(database)) <= 2
