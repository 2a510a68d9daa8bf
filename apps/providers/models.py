import bisect
import math

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone


class Provider(models.Model):
    """An LLM backend the cascade router may call, in priority order. Never holds an API key."""

    class Kind(models.TextChoices):
        OLLAMA = "ollama", "Ollama (local)"
        AIRLLM = "airllm", "AirLLM (local)"
        OPENAI = "openai", "OpenAI-compatible API"
        EMBEDDED = "embedded", "Embedded model (built in)"

    name = models.SlugField(max_length=50, unique=True)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    enabled = models.BooleanField(default=True)
    # Lower is tried first.
    priority = models.PositiveSmallIntegerField(default=100)
    # A model name; for AirLLM a model directory; for the embedded model a GGUF file (empty: the packaged one).
    model = models.CharField(max_length=300, blank=True)
    base_url = models.URLField(max_length=300, blank=True)
    connect_timeout_seconds = models.FloatField(default=2.0)
    read_timeout_seconds = models.FloatField(default=120.0)
    context_tokens = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="The model's context window in tokens. Empty: ask the server (Ollama, llama.cpp, the embedded "
        "model say), else DEFAULT_CONTEXT_TOKENS. Prompts are fitted to it.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "providers"
        ordering = ["priority", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def enable_hint(self) -> str:
        """How an operator turns this provider on."""
        if self.kind == self.Kind.AIRLLM:
            return "set AIRLLM_MODEL_PATH, or enable it in the admin"
        if self.kind == self.Kind.OPENAI:
            return "set OPENAI_BASE_URL or OPENAI_API_KEY, or enable it in the admin"
        if self.kind == self.Kind.EMBEDDED:
            return "install the model (make setup) or set EMBEDDED_MODEL_PATH, and enable it in the admin"
        return "enable it in the admin"


class CircuitState(models.TextChoices):
    CLOSED = "closed", "closed"
    OPEN = "open", "open"
    HALF_OPEN = "half_open", "half-open"


class ProviderMetrics(models.Model):
    """Counters and the circuit breaker of one provider, shared by every process; written only by services."""

    provider = models.OneToOneField(Provider, on_delete=models.CASCADE, primary_key=True, related_name="metrics")
    total_requests = models.PositiveIntegerField(default=0)
    successful_requests = models.PositiveIntegerField(default=0)
    failed_requests = models.PositiveIntegerField(default=0)
    # Running mean over successful requests (a timeout's latency says nothing about the model's speed).
    average_latency_ms = models.FloatField(default=0.0)
    last_error_at = models.DateTimeField(null=True, blank=True)
    # Short and redacted: never a key, a token or a prompt.
    last_error = models.CharField(max_length=300, blank=True)
    # auth / not_found are configuration errors: the status page flags them at once, not after the threshold.
    last_error_class = models.CharField(max_length=20, blank=True)
    circuit_state = models.CharField(max_length=10, choices=CircuitState.choices, default=CircuitState.CLOSED)
    consecutive_failures = models.PositiveIntegerField(default=0)
    opened_at = models.DateTimeField(null=True, blank=True)
    # When the current half-open probe was let through; a probe that never reports is replaced after the
    # recovery time, so a caller that died mid-probe cannot hold the breaker half-open for ever.
    probe_started_at = models.DateTimeField(null=True, blank=True)
    # The context window the router last fitted prompts to, and where it came from (apps.providers.windows).
    context_tokens = models.PositiveIntegerField(null=True, blank=True)
    context_source = models.CharField(max_length=20, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "provider_metrics"
        verbose_name_plural = "provider metrics"

    def __str__(self) -> str:
        return f"{self.provider_id}: {self.circuit_state}"


class ProviderRequest(models.Model):
    class Outcome(models.TextChoices):
        SUCCESS = "success"
        FAILURE = "failure"

    class ErrorClass(models.TextChoices):
        NONE = "", "none"
        CONNECTION = "connection"
        TIMEOUT = "timeout"
        SERVER_ERROR = "server_error", "server error"
        AUTH = "auth"
        NOT_FOUND = "not_found", "not found"
        CONTEXT_LENGTH = "context_length", "context length"
        # Refused as malformed (400, 413 or 422 about something else than the context length): the caller's fault.
        BAD_REQUEST = "bad_request", "bad request"
        BUSY = "busy"
        OTHER = "other"

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="requests")
    model = models.CharField(max_length=300, blank=True)
    started_at = models.DateTimeField()
    latency_ms = models.PositiveIntegerField()
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    error_class = models.CharField(max_length=20, choices=ErrorClass.choices, blank=True)
    # The router call it was part of (tokens per agent, per task); empty once the trace is pruned.
    model_call = models.ForeignKey(
        "ModelCall", null=True, blank=True, on_delete=models.SET_NULL, related_name="requests"
    )

    class Meta:
        db_table = "provider_requests"
        ordering = ["-started_at", "-id"]
        indexes = [
            # "requests of this provider over the last hour" (status page percentiles), and pruning by age.
            models.Index(fields=["provider", "started_at"], name="provreq_provider_started_idx"),
            models.Index(fields=["started_at"], name="provreq_started_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.provider_id} {self.outcome} {self.latency_ms} ms"


class ModelCall(models.Model):
    """The trace of one call through the router: what was sent to the model that answered, what came back, and
    the providers tried before it. Text is redacted and capped before it is stored (apps.providers.services)."""

    class Outcome(models.TextChoices):
        OK = "ok"
        FAILED = "failed"
        STOPPED = "stopped"

    class Purpose(models.TextChoices):
        CHAT = "chat"
        TASK = "task"
        UPGRADE = "upgrade"
        SERVE = "serve", "paid chat"
        API = "api", "API"
        OTHER = "other"

    started_at = models.DateTimeField()
    purpose = models.CharField(max_length=10, choices=Purpose.choices, default=Purpose.OTHER)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    # The provider that answered, or the last one tried when none did.
    provider = models.CharField(max_length=50, blank=True)
    model = models.CharField(max_length=300, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    # As sent: [{"role", "content", "kind", "cut"?, "context"?...}], see services.model_call_record.
    messages = models.JSONField(default=list)
    reply = models.TextField(blank=True)
    error = models.TextField(blank=True)
    # Every provider tried, in order: [{"provider", "reason", "error_class", "skipped"}], the answering one last.
    attempts = models.JSONField(default=list)
    # What the prompt was fitted to and what was left out (context.Fitted.summary()).
    fitting = models.JSONField(default=dict)
    # Who the call was made for.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="model_calls"
    )
    agent = models.ForeignKey("swarm.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    task = models.ForeignKey("swarm.Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="model_calls")
    # The chat turn: the assistant's reply, or the user's message that got none.
    chat_message = models.ForeignKey(
        "agents.ChatMessage", null=True, blank=True, on_delete=models.SET_NULL, related_name="model_calls"
    )
    upgrade_request = models.ForeignKey(
        "upgrades.UpgradeRequest", null=True, blank=True, on_delete=models.SET_NULL, related_name="model_calls"
    )
    upgrade_attempt = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        db_table = "model_calls"
        ordering = ["-started_at", "-id"]
        indexes = [
            models.Index(fields=["started_at"], name="modelcall_started_idx"),
            # A user's own chat traces, newest first.
            models.Index(fields=["user", "-started_at"], name="modelcall_user_started_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.purpose} call {self.pk} ({self.outcome}, {self.provider or 'no provider'})"

    def get_absolute_url(self) -> str:
        return reverse("providers:trace", args=[self.pk])


# The error classes that are the caller's fault, not the provider's: the usage page counts them apart, and they do
# not count towards the breaker either (clients.ProviderCallError.counts_for_breaker).
CALLER_ERROR_CLASSES = frozenset({ProviderRequest.ErrorClass.CONTEXT_LENGTH, ProviderRequest.ErrorClass.BAD_REQUEST})

# Fixed, log-spaced histogram buckets for latencies in milliseconds: three per doubling (each about 26 % wider than
# the one before), exact below 8 ms, up to 2^20 ms (17 minutes); bucket i holds [BOUNDS[i], BOUNDS[i + 1]) and the
# last one everything from its bound up. Fixed, so that histograms of different days and processes add up.
HISTOGRAM_BOUNDS: tuple[int, ...] = tuple(sorted({0} | {math.ceil(2 ** (i / 3)) for i in range(61)}))
LATENCY_COLUMNS: tuple[str, ...] = tuple(f"latency_{i:02d}" for i in range(len(HISTOGRAM_BOUNDS)))
TTFT_COLUMNS: tuple[str, ...] = tuple(f"ttft_{i:02d}" for i in range(len(HISTOGRAM_BOUNDS)))


def histogram_bucket(ms: int) -> int:
    return bisect.bisect_right(HISTOGRAM_BOUNDS, ms) - 1


class UsageDay(models.Model):
    """Requests of one day, provider, model and agent, added up as each request row is written
    (services.breaker_record_success/failure, one UPSERT) or rebuilt from the rows (`usage_rebuild`). The usage
    page reads only this: its size grows with days x providers x models x agents, never with requests. Kept for
    good (a row per key and day), long after the request rows are pruned."""

    # The local day (TIME_ZONE) the request started.
    day = models.DateField()
    provider = models.CharField(max_length=50)
    model = models.CharField(max_length=300, db_default="")
    # The agent the call was made for (ModelCall.agent), 0 for none (chat, system calls). Not a foreign key: the
    # figures outlive a deleted agent, and 0 rather than NULL so the key is unique for the UPSERT.
    agent_pk = models.PositiveIntegerField(db_default=0)
    # Database defaults throughout: the UPSERT names only the columns one request changes.
    calls = models.PositiveIntegerField(db_default=0)
    ok = models.PositiveIntegerField(db_default=0)
    caller_errors = models.PositiveIntegerField(db_default=0)
    provider_failures = models.PositiveIntegerField(db_default=0)
    tokens_in = models.PositiveBigIntegerField(db_default=0)
    tokens_out = models.PositiveBigIntegerField(db_default=0)
    # Then one column per histogram bucket: latency_NN of successful requests, ttft_NN of streamed ones.

    class Meta:
        db_table = "usage_days"
        constraints = [
            models.UniqueConstraint(fields=["day", "provider", "model", "agent_pk"], name="usageday_key_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.provider} {self.model or '-'} agent {self.agent_pk or 'none'}: {self.calls} calls"


for _column in (*LATENCY_COLUMNS, *TTFT_COLUMNS):
    UsageDay.add_to_class(_column, models.PositiveIntegerField(db_default=0))
