"""Usage at a glance: the daily rollup behind /router/usage, the page, and the home page's glance."""

import random
from datetime import datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.ledger import services as ledger
from apps.providers import router
from apps.providers.models import LATENCY_COLUMNS, TTFT_COLUMNS, ProviderRequest, UsageDay, histogram_bucket
from apps.providers.selectors import histogram_percentile, percentile, usage_over
from apps.providers.services import TraceContext, breaker_record_failure, breaker_record_success, usage_rebuild
from apps.upgrades import services as upgrades
from tests.agents.conftest import provider_at
from tests.factories import AgentFactory
from tests.gated import gated
from tests.llm_servers import OllamaServer, refused_url
from tests.providers.conftest import THRESHOLD
from tests.providers.factories import ProviderFactory, ProviderRequestFactory

USAGE = reverse("providers:usage")
COLUMNS = ("day", "provider", "model", "agent_pk", "calls", "ok", "caller_errors", "provider_failures", "tokens_in",
           "tokens_out", *LATENCY_COLUMNS, *TTFT_COLUMNS)  # fmt: skip


def rollup() -> list[tuple]:
    return sorted(UsageDay.objects.values_list(*COLUMNS))


def ok(provider, *, at: datetime, latency_ms: int = 100, agent=None, tokens=(10, 5), ttft_ms=None, model="m1"):
    breaker_record_success(
        provider,
        now=at + timedelta(milliseconds=latency_ms),
        latency_ms=latency_ms,
        model=model,
        tokens_in=tokens[0],
        tokens_out=tokens[1],
        time_to_first_token_ms=ttft_ms,
        agent_id=agent.pk if agent else None,
    )


def failed(provider, *, at: datetime, error_class: str, agent=None, model="m1"):
    breaker_record_failure(
        provider,
        now=at,
        error_class=error_class,
        message="no",
        model=model,
        tokens_in=7,
        agent_id=agent.pk if agent else None,
        counts_for_breaker=False,
    )


@pytest.fixture
def now() -> datetime:
    # Noon today: a request an hour before or after stays on the same local day.
    return timezone.localtime().replace(hour=12, minute=0, second=0, microsecond=0)


@pytest.fixture
def recorded(db, now):
    """Two providers, two agents and calls for no agent, over today and three days ago."""
    ollama, openai = ProviderFactory(name="ollama"), ProviderFactory(name="openai")
    ada, bob = AgentFactory(name="ada"), AgentFactory(name="bob")
    earlier = now - timedelta(days=3)
    ok(ollama, at=now, agent=ada, tokens=(100, 20))
    ok(ollama, at=now, agent=ada, tokens=(50, 10), model="m2")
    ok(ollama, at=earlier, agent=bob, tokens=(30, 3))
    ok(openai, at=now, tokens=(1000, 400))
    failed(openai, at=now, error_class="context_length", agent=bob)
    failed(ollama, at=now, error_class="connection", agent=ada)
    failed(ollama, at=earlier, error_class="timeout")
    return {"ollama": ollama, "openai": openai, "ada": ada, "bob": bob}


def test_usage_page_shows_tokens_per_provider_agent_and_day_as_recorded(staff_client, recorded, now):
    usage = usage_over(window="7d", now=now)
    providers = {line.label: (line.calls, line.tokens_in, line.tokens_out) for line in usage.providers}
    assert providers == {"ollama": (5, 100 + 50 + 30 + 7 + 7, 33), "openai": (2, 1007, 400)}
    agents = {line.label: (line.calls, line.tokens_in, line.tokens_out) for line in usage.agents}
    assert agents == {"ada": (3, 157, 30), "bob": (2, 37, 3), "none/system": (2, 1007, 400)}
    days = {line.label: line.calls for line in usage.days if line.calls}
    assert days == {now.date().isoformat(): 5, (now - timedelta(days=3)).date().isoformat(): 2}
    assert {line.label: line.calls for line in usage.models} == {"ollama · m1": 4, "ollama · m2": 1, "openai · m1": 2}
    assert usage.provider_tokens_per_day["openai"]["in"][-1] == 1007

    page = staff_client.get(USAGE, {"window": "7d"})
    assert page.status_code == 200
    html = page.content.decode()
    assert '<strong class="calls">7</strong>' in html
    assert '<th scope="row">bob</th>' in html and '<th scope="row">none/system</th>' in html
    assert '<script id="usage-chart-data" type="application/json">' in html


def test_caller_errors_are_counted_apart_from_provider_failures(recorded, now):
    usage = usage_over(window="7d", now=now)
    openai = next(line for line in usage.providers if line.label == "openai")
    # A prompt too long for the model is the caller's fault: it does not lower openai's success rate.
    assert (openai.ok, openai.caller_errors, openai.provider_failures, openai.success_percent) == (1, 1, 0, 100.0)
    ollama = next(line for line in usage.providers if line.label == "ollama")
    assert (ollama.ok, ollama.caller_errors, ollama.provider_failures) == (3, 0, 2)
    assert ollama.success_percent == pytest.approx(60.0)


def test_percentiles_from_the_histogram_fall_in_the_bucket_of_the_exact_percentile(db, now):
    ollama = ProviderFactory(name="ollama")
    generator = random.Random(19)
    latencies = [int(generator.lognormvariate(6, 1.2)) for _ in range(400)]
    ttfts = [max(1, latency // 3) for latency in latencies]
    for latency, ttft in zip(latencies, ttfts, strict=True):
        ok(ollama, at=now, latency_ms=latency, ttft_ms=ttft)
    line = usage_over(window="24h", now=now).providers[0]
    for shown, exact in [
        (line.latency_p50, percentile(sorted(latencies), 50)),
        (line.latency_p95, percentile(sorted(latencies), 95)),
        (line.ttft_p50, percentile(sorted(ttfts), 50)),
        (line.ttft_p95, percentile(sorted(ttfts), 95)),
    ]:
        assert shown is not None and exact is not None
        assert histogram_bucket(shown) == histogram_bucket(exact)
        assert abs(shown - exact) <= max(1, exact * 0.26)


def test_histogram_percentile_is_exact_for_small_values_and_none_when_empty():
    histogram = [0] * len(LATENCY_COLUMNS)
    assert histogram_percentile(histogram, 50) is None
    histogram[histogram_bucket(3)] = 9
    histogram[histogram_bucket(5_000_000)] = 1
    assert (histogram_percentile(histogram, 50), histogram_percentile(histogram, 95)) == (3, 2**20)


def test_the_window_select_counts_only_the_days_it_covers(staff_client, recorded, now):
    assert usage_over(window="24h", now=now).total.calls == 5
    assert usage_over(window="7d", now=now).total.calls == 7
    html = staff_client.get(USAGE, {"window": "24h"}).content.decode()
    assert '<option value="24h" selected>' in html
    assert '<strong class="calls">5</strong>' in html


def test_an_unknown_window_is_400_with_the_reason(staff_client, db):
    page = staff_client.get(USAGE, {"window": "1y"})
    assert page.status_code == 400
    assert "Unknown window &#x27;1y&#x27;: choose one of 24h, 7d, 30d." in page.content.decode()


def test_the_usage_page_is_for_staff(plain_client, db):
    assert plain_client.get(USAGE).status_code == 403


def test_an_empty_usage_page_explains_itself(staff_client, db):
    html = staff_client.get(USAGE).content.decode()
    assert 'id="usage-empty"' in html and "usage_rebuild" in html


def test_the_usage_page_takes_the_same_queries_at_10_and_1000_requests(
    staff_client, db, now, django_assert_max_num_queries
):
    providers = [ProviderFactory(name=name) for name in ("ollama", "openai")]
    agents = [AgentFactory(name=name) for name in ("ada", "bob", "cy")]

    def record(count: int) -> None:
        for n in range(count):
            at = now - timedelta(days=n % 9, minutes=n % 50)
            ok(providers[n % 2], at=at, agent=agents[n % 3], latency_ms=50 + n % 700, ttft_ms=10 + n % 90)

    record(10)
    with CaptureQueriesContext(connection) as few:
        assert staff_client.get(USAGE, {"window": "30d"}).status_code == 200
    record(990)
    with django_assert_max_num_queries(len(few)) as many:
        assert staff_client.get(USAGE, {"window": "30d"}).status_code == 200
    assert len(many) == len(few) <= 8


def test_the_rebuild_command_gives_the_same_rollup_as_live_updates(db, now):
    """The router's own path: its trace names the agent, and the rebuild finds it through the trace."""
    ada = AgentFactory(name="ada")
    with OllamaServer() as server:
        provider_at("refusing", refused_url(), 1)
        provider_at("ollama", server.url, 2)
        for agent_id in (ada.pk, ada.pk, None):
            router.complete([{"role": "user", "content": "Hello"}], trace=TraceContext(agent_id=agent_id))
        stream = router.complete([{"role": "user", "content": "Hi"}], stream=True, trace=TraceContext(agent_id=ada.pk))
        assert "".join(stream)
    live = rollup()
    # The refusing provider's breaker opens after THRESHOLD failures: the last call skips it.
    assert sum(row[4] for row in live) == ProviderRequest.objects.count() == 4 + THRESHOLD
    assert {(row[1], row[3]) for row in live} == {
        ("refusing", ada.pk),
        ("refusing", 0),
        ("ollama", ada.pk),
        ("ollama", 0),
    }
    UsageDay.objects.all().delete()
    call_command("usage_rebuild")
    assert rollup() == live


def test_the_rebuild_keeps_days_whose_request_records_were_pruned(db, now):
    ollama = ProviderFactory(name="ollama")
    ok(ollama, at=now - timedelta(days=20))
    ok(ollama, at=now - timedelta(days=2))
    ok(ollama, at=now)
    before = rollup()
    # Pruned part of the day two days ago, all of the earlier one: their figures stay as they were.
    ProviderRequest.objects.filter(started_at__lt=now - timedelta(days=1)).delete()
    ProviderRequestFactory(provider=ollama, model="m1", started_at=now - timedelta(days=2, hours=-1))
    rebuilt = usage_rebuild()
    assert rebuilt.since == now.date() - timedelta(days=1)
    assert rollup() == before


def test_the_rebuild_command_refuses_a_bad_day(db):
    with pytest.raises(CommandError, match="--since wants a day as YYYY-MM-DD, not 'yesterday'"):
        call_command("usage_rebuild", since="yesterday")


# Each writer sets Django up, says ready, then on "go" records its requests as fast as it can.
WRITER = (
    "import sys\n"
    "from django.utils import timezone\n"
    "from apps.providers.models import Provider\n"
    "from apps.providers.services import breaker_record_success, breaker_record_failure\n"
    "provider = Provider.objects.get(name='ollama')\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "for n in range(100):\n"
    "    if n % 10 == 0:\n"
    "        breaker_record_failure(provider, now=timezone.now(), error_class='context_length', message='long',\n"
    "            model='m1', counts_for_breaker=False)\n"
    "    else:\n"
    "        breaker_record_success(provider, now=timezone.now(), latency_ms=n, model='m1', tokens_in=3,\n"
    "            tokens_out=2, time_to_first_token_ms=n // 2)\n"
    "print('done', flush=True)\n"
)


def test_two_processes_recording_at_once_lose_no_count(transactional_db, subprocess_env):
    ProviderFactory(name="ollama")
    with gated([["manage.py", "shell", "--no-imports", "-c", WRITER]] * 2, env=subprocess_env) as writers:
        writers.wait_ready()
        writers.release()
        assert writers.answers() == ["done", "done"]
        outputs = writers.finish(timeout=60)
    for _, stderr, returncode in outputs:
        assert returncode == 0, stderr
    live = rollup()
    ((calls, good, caller_errors, tokens_in, tokens_out),) = [(r[4], r[5], r[6], r[8], r[9]) for r in live]
    assert (calls, good, caller_errors, tokens_in, tokens_out) == (200, 180, 20, 540, 360)
    UsageDay.objects.all().delete()
    usage_rebuild()
    assert rollup() == live


def test_home_shows_an_open_breaker_the_balance_and_pending_upgrades(staff_client, dev_node, now):
    ollama = ProviderFactory(name="ollama")
    for _ in range(THRESHOLD):
        breaker_record_failure(ollama, now=now, error_class="connection", message="cannot connect to ollama")
    invoice = ledger.create_invoice_entry(amount_sats=1234, memo="funding", source="test")
    ledger.mark_settled(payment_hash=invoice.payment_hash, preimage=dev_node.simulate_payment(invoice.payment_hash))
    for n in range(2):
        upgrades.upgrade_propose(
            proposal=upgrades.Proposal(
                description=f"change {n}",
                instruction="",
                repo_path="/nonexistent",
                target_branch="main",
                branch=f"self-modify/change-{n}",
                worktree_path="",
                base_commit="0" * 40,
                head_commit="1" * 40,
                files_changed=[],
                diff="",
                diff_preview="",
                risk="low",
                test_results={"passed": True},
            )
        )
    with CaptureQueriesContext(connection) as queries:
        html = staff_client.get(reverse("home")).content.decode()
    # Counted once, for the panel and the navigation's badge alike.
    assert len([q for q in queries if 'FROM "upgrades"' in q["sql"] and "COUNT(" in q["sql"].upper()]) == 1
    assert 'class="nav-count" title="2 upgrades waiting for a decision"' in html
    assert '<span class="badge circuit-open">circuit open</span>' in html
    assert "last error: cannot connect to ollama" in html
    assert '<strong class="balance">1,234</strong> sats available' in html
    assert "<strong>2</strong> upgrades waiting for a decision" in html


def test_a_request_the_model_refuses_as_malformed_is_a_caller_error_that_fails_over_and_leaves_the_breaker_closed(
    staff_client, db
):
    with OllamaServer() as picky, OllamaServer() as server:
        picky.mode = "bad_request"
        first = provider_at("picky", picky.url, 1)
        provider_at("ollama", server.url, 2)
        for _ in range(THRESHOLD + 1):
            assert router.complete([{"role": "user", "content": "Hello"}]).provider == "ollama"

    refused = ProviderRequest.objects.filter(provider=first)
    assert [r.error_class for r in refused] == ["bad_request"] * (THRESHOLD + 1)
    first.metrics.refresh_from_db()
    assert first.metrics.circuit_state == "closed"
    lines = {line.label: line for line in usage_over(window="24h", now=timezone.now()).providers}
    assert (lines["picky"].calls, lines["picky"].caller_errors, lines["picky"].provider_failures) == (
        THRESHOLD + 1,
        THRESHOLD + 1,
        0,
    )
    assert "caller error" in staff_client.get(USAGE).content.decode()
