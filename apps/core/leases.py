"""Keeping a worker's claim alive while it does the slow part of a job (a model call, a test run, a merge)."""

import threading
from collections.abc import Callable

from django.conf import settings
from django.db import connections


class LeaseKeeper:
    """Renews a claim's lease from a background thread, every third of its length, for as long as the block runs.

    Why not a lease long enough to cover the work: a provider's read timeout bounds each read, not the call — a slow
    stream, several providers failed over in turn, a test suite or AirLLM (half an hour's read timeout) can outlast
    any fixed lease, and another worker would then run the job a second time. Renewed like this, the lease lapses
    only when this process stops (a crash, kill -9, a frozen machine), which is what it is for. `renew` returning
    False (the claim is gone: failed in the admin, or recovered by another worker) ends the thread early."""

    def __init__(self, renew: Callable[[], bool], *, lease_seconds: int | None = None, name: str = "lease") -> None:
        self.renew = renew
        self.interval = (settings.TASK_LEASE_SECONDS if lease_seconds is None else lease_seconds) / 3
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                if not self.renew():
                    return
        finally:
            connections.close_all()  # this thread's own connections

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
