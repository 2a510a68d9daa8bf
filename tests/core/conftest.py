import signal
from collections.abc import Iterator

import pytest


@pytest.fixture
def restore_signal_handlers() -> Iterator[None]:
    """run_worker installs SIGTERM/SIGINT handlers; put pytest's back so Ctrl-C still stops the run."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
