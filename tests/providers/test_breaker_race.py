"""Two processes asking an open breaker at once, past its recovery time: exactly one becomes the probe."""

from datetime import timedelta

from django.utils import timezone

from apps.providers.models import CircuitState, ProviderMetrics
from apps.providers.services import providers_ensure_defaults
from tests.gated import gated
from tests.providers.conftest import RECOVERY

ROUNDS = 5
TIMEOUT = 60

# Each racer sets Django up, says ready, then asks the breaker once per "go" on stdin, so both ask together.
RACER = (
    "import sys\n"
    "from django.utils import timezone\n"
    "from apps.providers.models import Provider\n"
    "from apps.providers.services import breaker_allows\n"
    "provider = Provider.objects.get(name='ollama')\n"
    "print('ready', flush=True)\n"
    "for line in sys.stdin:\n"
    "    print(breaker_allows(provider, now=timezone.now()), flush=True)\n"
)


def open_long_ago() -> None:
    ProviderMetrics.objects.filter(provider__name="ollama").update(
        circuit_state=CircuitState.OPEN,
        opened_at=timezone.now() - timedelta(seconds=RECOVERY + 1),
        probe_started_at=None,
        consecutive_failures=5,
    )


def test_two_processes_racing_for_the_half_open_probe_let_exactly_one_through(transactional_db, subprocess_env):
    providers_ensure_defaults()
    env = {**subprocess_env, "CIRCUIT_BREAKER_RECOVERY_SECONDS": str(RECOVERY)}
    with gated([["manage.py", "shell", "--no-imports", "-c", RACER]] * 2, env=env) as racers:
        racers.wait_ready()
        for _ in range(ROUNDS):
            open_long_ago()
            racers.release()
            assert sorted(racers.answers()) == ["False", "True"]
            assert ProviderMetrics.objects.get(provider__name="ollama").circuit_state == CircuitState.HALF_OPEN
        outputs = racers.finish(timeout=TIMEOUT)
    for _, stderr, returncode in outputs:
        assert returncode == 0, stderr
        assert "Traceback" not in stderr
