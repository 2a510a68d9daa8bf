from django.db import models
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
