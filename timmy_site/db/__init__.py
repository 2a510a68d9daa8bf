"""The database engine: Django's sqlite3 backend on pysqlite3, with sqlite-vec loaded (see base.py).

Django's sqlite3 backend imports `sqlite3.dbapi2` at module level, so pysqlite3 has to stand in for the
standard module before that import happens; this package is imported first, when the engine is loaded.
"""

import sys

import pysqlite3
import pysqlite3.dbapi2
from django.core.exceptions import ImproperlyConfigured

_loaded = sys.modules.get("django.db.backends.sqlite3.base")
if _loaded is not None and getattr(_loaded, "Database", None) is not pysqlite3.dbapi2:
    raise ImproperlyConfigured(
        "django.db.backends.sqlite3 was imported before timmy_site.db, so it uses a sqlite3 that cannot load "
        "sqlite-vec. Do not import Django's sqlite3 backend directly."
    )
sys.modules["sqlite3"] = pysqlite3
sys.modules["sqlite3.dbapi2"] = pysqlite3.dbapi2
