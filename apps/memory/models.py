from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class MemoryEntry(models.Model):
    """Something an agent remembers (ADR-019). Its embedding and keywords live in the search index
    (`memory_vectors`, `memory_fts`), written by the services in the same transaction; a forgotten memory is
    kept here, with the reason, and leaves the index."""

    class ContextType(models.TextChoices):
        CONVERSATION = "conversation"
        FACT = "fact"
        DOCUMENT = "document"

    content = models.TextField()
    # Where it came from: "chat", "task", "api", "page", ...
    source = models.CharField(max_length=100)
    context_type = models.CharField(max_length=20, choices=ContextType.choices)
    agent = models.ForeignKey("swarm.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="memories")
    task = models.ForeignKey("swarm.Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="memories")
    session_id = models.CharField(max_length=64, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    timestamp = models.DateTimeField(default=timezone.now)
    # Who may see it: its owner only, or everyone when there is none (a shared memory).
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="memories"
    )
    # A shared memory the paid chat (L402, strangers) may draw on; only ever set on purpose, never by an agent.
    public = models.BooleanField(default=False)
    embedding_model = models.CharField(max_length=100)
    embedding_dimensions = models.PositiveSmallIntegerField()
    # sha256 of the normalised content: exact duplicates in one scope are found by it.
    content_hash = models.CharField(max_length=64)
    access_count = models.PositiveIntegerField(default=0)
    last_accessed_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    deleted_reason = models.CharField(max_length=300, blank=True)

    class Meta:
        db_table = "memory_entries"
        ordering = ["-id"]
        verbose_name_plural = "memory entries"
        permissions = [("view_private_memories", "Can read other users' private memories")]
        constraints = [
            models.CheckConstraint(condition=Q(public=False) | Q(owner__isnull=True), name="memory_public_is_shared")
        ]
        indexes = [
            models.Index(fields=["content_hash", "owner"], name="memory_hash_owner_idx"),
            models.Index(fields=["owner", "context_type", "id"], name="memory_owner_type_idx"),
            models.Index(fields=["embedding_model"], name="memory_model_idx"),
        ]

    def __str__(self) -> str:
        return f"Memory {self.pk}: {self.content[:60]}"

    @property
    def is_shared(self) -> bool:
        return self.owner_id is None

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None


class MemoryVector(models.Model):
    """The vectors: float32 blobs in a plain table on SQLite (searched through MemoryCode), a pgvector table with
    an HNSW index on PostgreSQL (see migrations 0001, 0002 and 0004). Declared here so Django knows the table (test
    flushes empty it); only `apps.memory.index` reads or writes it, with SQL. Since chunks (0004) a row is one chunk
    of a memory, keyed by `chunk_id` on SQLite and (memory_id, chunk) on PostgreSQL: the field below is only what
    Django needs to declare a model, never queried."""

    memory_id = models.BigIntegerField(primary_key=True)

    class Meta:
        db_table = "memory_vectors"
        default_permissions = ()

    def __str__(self) -> str:
        return f"vector of memory {self.memory_id}"


class MemoryCode(models.Model):
    """SQLite only: the vec0 table of the vectors' binary codes, the first pass of a vector search; a row per chunk,
    keyed by `chunk_id` (see MemoryVector)."""

    memory_id = models.BigIntegerField(primary_key=True)

    class Meta:
        db_table = "memory_codes"
        default_permissions = ()

    def __str__(self) -> str:
        return f"code of memory {self.memory_id}"


class MemoryKeywords(models.Model):
    """The keyword index: an FTS5 table on SQLite, a tsvector table on PostgreSQL; written like MemoryVector."""

    memory_id = models.BigIntegerField(primary_key=True)

    class Meta:
        db_table = "memory_fts"
        default_permissions = ()

    def __str__(self) -> str:
        return f"keywords of memory {self.memory_id}"
