from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from apps.providers.models import Provider
from apps.providers.services import breaker_record_failure, providers_ensure_defaults

KEY = "sk-test-abcdefghijklmnopqrstuvwxyz0123456789"


@pytest.fixture
def bare_environment(settings, monkeypatch):
    settings.OLLAMA_HOST = "http://127.0.0.1:11434"
    settings.OLLAMA_MODEL = "llama3.2"
    settings.AIRLLM_MODEL_PATH = ""
    settings.OPENAI_BASE_URL = ""
    settings.OPENAI_MODEL = "gpt-4o-mini"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return settings


def providers() -> dict[str, Provider]:
    return {p.name: p for p in Provider.objects.all()}


def test_defaults_on_a_bare_machine_enable_the_local_ollama_and_the_embedded_model_last(db, bare_environment):
    created = providers_ensure_defaults()
    assert [p.name for p in created] == ["ollama", "airllm", "openai", "embedded"]
    rows = providers()
    assert (rows["ollama"].enabled, rows["ollama"].priority) == (True, 1)
    assert (rows["ollama"].base_url, rows["ollama"].model) == ("http://127.0.0.1:11434", "llama3.2")
    assert (rows["airllm"].enabled, rows["airllm"].priority) == (False, 2)
    assert (rows["openai"].enabled, rows["openai"].priority) == (False, 3)
    # A fresh install answers: the packaged SmolLM2, after every model the operator configures.
    assert (rows["embedded"].enabled, rows["embedded"].priority, rows["embedded"].kind) == (True, 4, "embedded")
    assert rows["embedded"].model == "SmolLM2-135M-Instruct"
    assert all(p.metrics.circuit_state == "closed" for p in rows.values())


def test_airllm_is_enabled_when_a_model_path_is_set(db, bare_environment):
    bare_environment.AIRLLM_MODEL_PATH = "/models/llama-70b"
    providers_ensure_defaults()
    airllm = providers()["airllm"]
    assert airllm.enabled
    assert airllm.model == "/models/llama-70b"
    # Minutes per answer on a large model: not the 120 s of the others.
    assert (airllm.read_timeout_seconds, providers()["ollama"].read_timeout_seconds) == (1800, 120)


def test_an_airllm_row_on_the_old_default_timeout_gets_airllm_s_and_an_operator_s_choice_stays(db):
    from importlib import import_module

    from django.apps import apps

    migration = import_module("apps.providers.migrations.0007_airllm_read_timeout")
    old = Provider.objects.create(name="airllm", kind=Provider.Kind.AIRLLM, read_timeout_seconds=120)
    chosen = Provider.objects.create(name="big", kind=Provider.Kind.AIRLLM, read_timeout_seconds=600)
    other = Provider.objects.create(name="ollama", kind=Provider.Kind.OLLAMA, read_timeout_seconds=120)
    migration.longer_airllm_timeout(apps, None)
    for row in (old, chosen, other):
        row.refresh_from_db()
    assert (old.read_timeout_seconds, chosen.read_timeout_seconds, other.read_timeout_seconds) == (1800, 600, 120)


def test_openai_is_enabled_by_a_base_url(db, bare_environment):
    bare_environment.OPENAI_BASE_URL = "http://127.0.0.1:8001/v1"
    providers_ensure_defaults()
    openai = providers()["openai"]
    assert openai.enabled
    assert (openai.base_url, openai.model) == ("http://127.0.0.1:8001/v1", "gpt-4o-mini")


def test_openai_is_enabled_by_the_api_key_in_the_environment_which_is_never_stored(
    db, bare_environment, monkeypatch, t0
):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    providers_ensure_defaults()
    openai = providers()["openai"]
    assert openai.enabled
    # Even an error message that quotes the key does not put it in the database.
    breaker_record_failure(openai, now=t0, error_class="auth", message=f"401: key {KEY} rejected")
    breaker_record_failure(openai, now=t0, error_class="auth", message=f"Authorization: Bearer {KEY}")
    with connection.cursor() as cursor:
        for table in ("providers", "provider_metrics", "provider_requests", "event_log"):
            cursor.execute(f"SELECT * FROM {table}")
            for row in cursor.fetchall():
                assert not any(KEY in str(value) for value in row), (table, row)
    assert "[REDACTED]" in openai.metrics.__class__.objects.get(provider=openai).last_error


def test_defaults_never_overwrite_an_operators_edits(db, bare_environment):
    providers_ensure_defaults()
    Provider.objects.filter(name="ollama").update(enabled=False, priority=7, model="mistral")
    Provider.objects.filter(name="openai").delete()
    bare_environment.OLLAMA_MODEL = "qwen2.5"
    created = providers_ensure_defaults()
    assert [p.name for p in created] == ["openai"]
    ollama = providers()["ollama"]
    assert (ollama.enabled, ollama.priority, ollama.model) == (False, 7, "mistral")


def test_providers_sync_reports_what_it_created_then_that_nothing_was_needed(db, bare_environment):
    out = StringIO()
    call_command("providers_sync", stdout=out)
    assert "Created provider ollama (enabled, priority 1)." in out.getvalue()
    assert "Created provider openai (disabled, priority 3)." in out.getvalue()
    out = StringIO()
    call_command("providers_sync", stdout=out)
    assert out.getvalue() == "All default providers exist; nothing created.\n"


def test_providers_sync_explains_itself(run_manage):
    result = run_manage("providers_sync", "--help")
    assert result.returncode == 0, result.stderr
    assert "never changed" in result.stdout
