"""Django settings for Bakehouse, read from the environment (see README and .env.example).

Unset variables mean the embedded defaults: SQLite, an in-process-free filesystem broker for
Celery, and a local artifact store under ``var/``. A wrong value fails here, naming the variable.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url

from builds.pipeline.fetch import DEFAULT_MAX_BYTES
from builds.pipeline.prebake import DEFAULT_SIGNING_KEY as PREBAKE_DEFAULT_SIGNING_KEY
from portal.config import (
    ConfigError,
    env_bool,
    env_int,
    env_mirrors,
    env_path,
    env_proxy_ssl_header,
    env_secret_file,
    env_str,
    env_url,
    s3_config,
    secret_key_in_file,
)
from portal.routing import PRIORITY_STEPS, queue_names

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = env_path("BAKEHOUSE_VAR_DIR", BASE_DIR / "var")


# Embedded default: a random key kept under var/ so sessions survive restarts, made on first use
# (importing the settings writes no files).
SECRET_KEY = env_str("SECRET_KEY") or secret_key_in_file(VAR_DIR / "secret_key")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_str("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver").split(",")
CSRF_TRUSTED_ORIGINS = [o for o in env_str("CSRF_TRUSTED_ORIGINS").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django_filters",  # one FilterSet per list, for its page and its API
    "drf_spectacular_sidecar",  # Swagger UI assets served locally, no CDN
    "portal",
    "catalog",
    "builds",
]

MIDDLEWARE = [
    # Outermost: a repeated API read with the same credentials is answered from the shared cache
    # (with the headers the middleware below added when it was stored); see portal.read_cache.
    "portal.read_cache.ReadCacheMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # PostgreSQL cannot store or compare NUL characters: refuse them in URLs with a 400.
    "portal.hostile_input.RejectNulCharactersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Any refusal or failure (a BakehouseError) a page lets through becomes an error page.
    "portal.error_pages.BakehouseErrorMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

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
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
_database_url = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'bakehouse.sqlite3'}")
try:
    # Persistent connections are checked before reuse: one the server dropped (a restart, a
    # failover, pg_terminate_backend) is replaced instead of failing the next request with a 500.
    DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=60, conn_health_checks=True)}
except Exception as exc:  # dj-database-url raises several types for a bad URL
    raise ConfigError("DATABASE_URL", f"cannot parse {_database_url!r} ({exc})") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Its directory is made at start-up (portal.apps), not here.
    # SQLite serialises writers; a worker and the web server share the file.
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"  # made at start-up (portal.apps): whitenoise warns if missing
STATICFILES_DIRS = [BASE_DIR / "static"]

# --- Celery ---------------------------------------------------------------------------------
REDIS_URL = env_url("REDIS_URL", schemes=("redis", "rediss", "unix"))
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    # kombu's Redis transport, made to survive a Redis restart during a task (portal/broker.py).
    CELERY_BROKER_TRANSPORT = "portal.broker:RedisTransport"
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
        "visibility_timeout": 4 * 3600,
        # Find out that a quiet connection died (Redis restarted, a NAT forgot it) and reconnect.
        "health_check_interval": 10,
        "socket_keepalive": True,
        "retry_on_timeout": True,
        # Per-team fairness (portal/routing.py): one Redis list per priority, 0 taken first.
        "priority_steps": list(PRIORITY_STEPS),
    }
else:
    # Embedded default: kombu's filesystem transport needs no external service, and a real
    # worker process still consumes from it. Its directories are made at start-up (portal.apps).
    _broker_dir = VAR_DIR / "broker"
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),  # else kombu writes ./control
        "store_processed": False,
    }
# Deployments (and test runs) sharing one Redis keep apart by queue name.
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_TASK_DEFAULT_QUEUE", "celery")
# Image bakes, catalog tasks and the rest each have a queue named after the default one
# (portal/routing.py); a worker without -Q listens on all three.
CELERY_TASK_QUEUES: dict[str, dict[str, str]] = {name: {} for name in queue_names(CELERY_TASK_DEFAULT_QUEUE)}
CELERY_TASK_ROUTES = ("portal.routing.route_task",)
CELERY_TASK_IGNORE_RESULT = True  # build state lives in the database, not in a result backend
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env_int("BUILD_SOFT_TIME_LIMIT", 3600, minimum=10)
CELERY_TASK_TIME_LIMIT = CELERY_TASK_SOFT_TIME_LIMIT + 120
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)  # unit tests only
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker that loses the broker reconnects for ever (Redis restarts must not stop it) ...
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# ... and lets the tasks it runs finish: a build's state lives in the database, so a bake that
# completes while Redis is down is kept; its message is re-queued by the reaper if Redis lost it.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# Sending a task while the broker restarts waits for it (about 10 s, short enough for a web
# request) before giving up; a build whose task could not be sent is queued again by the reaper
# after BUILD_REQUEUE_AFTER (builds.services.builds_reap_stale).
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 10,
    "interval_start": 0,
    "interval_step": 1,
    "interval_max": 4,
}
CELERY_BEAT_SCHEDULE = {
    # Files proposals for new upstream releases; never approves (catalog.tasks).
    "catalog-discover-upstream-releases": {
        "task": "catalog.discover_upstream_releases",
        "schedule": 6 * 3600,
    },
    # Versions stuck in "pinning" (task lost) go back to proposed (catalog.services).
    "catalog-reap-stuck-pinning": {"task": "catalog.reap_stuck_pinning", "schedule": 600},
    # Uploads still "checking" long after they arrived (task lost) are checked again (catalog.services).
    "catalog-requeue-unchecked-uploads": {"task": "catalog.requeue_unchecked_uploads", "schedule": 600},
    # Fails builds whose worker stopped sending heartbeats (builds.services.builds_reap_stale).
    "builds-reap-stale": {"task": "builds.tasks.builds_reap_stale", "schedule": 60},
}
# Builds still queued after this long (no worker took them) fail with a message saying so.
BUILD_QUEUE_TIMEOUT = env_int("BUILD_QUEUE_TIMEOUT", 24 * 3600, minimum=60)
# A version stuck "pinning" this long has lost its task: the reaper returns it to proposed.
CATALOG_PINNING_TIMEOUT = env_int("CATALOG_PINNING_TIMEOUT", 3600, minimum=60)
# A running build touches heartbeat_at this often; the reaper fails it after the timeout.
BUILD_HEARTBEAT_INTERVAL = env_int("BUILD_HEARTBEAT_INTERVAL", 10, minimum=1)
BUILD_HEARTBEAT_TIMEOUT = env_int("BUILD_HEARTBEAT_TIMEOUT", 180, minimum=10)
# A build nobody worked on for this long has lost its queued message (broker restarted, or down
# when the task was sent): the reaper queues its next task again. Long enough that a build
# merely waiting behind others is rarely queued twice (a duplicate task finds its work done).
BUILD_REQUEUE_AFTER = env_int("BUILD_REQUEUE_AFTER", 600, minimum=30)
# Webhooks to loopback, private or link-local addresses (the metadata service...) are refused
# unless this is set, so a team admin cannot make workers probe the internal network.
WEBHOOK_ALLOW_PRIVATE_NETWORKS = env_bool("WEBHOOK_ALLOW_PRIVATE_NETWORKS", False)

# --- Shared cache: sign-in throttle ------------------------------------------------------------
# The sign-in budgets (portal.signin_throttle) and any DRF throttle count in the default cache, so
# it must be shared by every process that answers requests: a per-process cache would give each
# gunicorn worker a budget of its own. Deployments (and test runs) sharing a Redis keep apart by
# CACHE_KEY_PREFIX.
CACHE_KEY_PREFIX = env_str("CACHE_KEY_PREFIX", "bakehouse")
if REDIS_URL:
    # The broker's Redis, under a key prefix rather than another DB number (not every hosted Redis
    # offers one). Timeouts, so that a stalled Redis makes sign-in fail rather than hang.
    CACHES = {
        "default": {
            "BACKEND": "portal.redis_cache.RedisCache",  # Django's, one client per pool
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": CACHE_KEY_PREFIX,
            "OPTIONS": {"socket_timeout": 5, "socket_connect_timeout": 5},
        }
    }
else:
    # Embedded default: without REDIS_URL the broker is a directory under var/, so every process
    # (web workers, Celery) already runs on this machine and shares var/. A file cache there needs
    # no migration or createcachetable step (unlike the database cache) and keeps the throttle's
    # writes out of the SQLite file that builds write to. Its increments are not atomic, so
    # concurrent guesses may overshoot a limit by the number of web workers; Redis counts exactly.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "django-cache"),
            "KEY_PREFIX": CACHE_KEY_PREFIX,
            # Culling drops random entries: keep it far away, so guesses cannot flush the counters.
            "OPTIONS": {"MAX_ENTRIES": 100_000},
        }
    }
# Failed password checks (sign-in page and POST /api/auth/token/ alike) per username and per
# client address within SIGNIN_LOCKOUT_SECONDS; reaching either limit locks that username or
# address for SIGNIN_LOCKOUT_SECONDS, during which no password is checked.
SIGNIN_FAILURES_PER_USER = env_int("SIGNIN_FAILURES_PER_USER", 10, minimum=1)
SIGNIN_FAILURES_PER_ADDRESS = env_int("SIGNIN_FAILURES_PER_ADDRESS", 50, minimum=1)
SIGNIN_LOCKOUT_SECONDS = env_int("SIGNIN_LOCKOUT_SECONDS", 900, minimum=1)

# --- HTTPS and the reverse proxy -----------------------------------------------------------------
# The embedded defaults keep `make run` on http://127.0.0.1:8000 working. Behind a TLS-terminating
# proxy use the values of production.env.example: with them `manage.py check --deploy --fail-level
# WARNING` passes (CI runs it).
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # load balancers and compose probe over plain HTTP inside
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
# How many reverse proxies of ours append to X-Forwarded-For: the client address (sign-in
# throttle, DRF's NUM_PROXIES) is read that many entries from the right. 0: X-Forwarded-For is
# ignored, since a client can write anything there.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)
# The header by which that proxy says the request came over HTTPS (X-Forwarded-Proto).
SECURE_PROXY_SSL_HEADER = env_proxy_ssl_header("SECURE_PROXY_SSL_HEADER")
if SECURE_PROXY_SSL_HEADER and not TRUSTED_PROXY_COUNT:
    raise ConfigError(
        "SECURE_PROXY_SSL_HEADER",
        "is set but TRUSTED_PROXY_COUNT is 0: without a proxy of ours in front, clients could claim HTTPS",
    )

# --- Artifacts, signing, upstreams ------------------------------------------------------------
ARTIFACT_DIR = env_path("ARTIFACT_DIR", VAR_DIR / "artifacts")
S3 = s3_config()
PUBLIC_BASE_URL = env_url("PUBLIC_BASE_URL", "http://127.0.0.1:8000/artifacts/", schemes=("http", "https"))
if not PUBLIC_BASE_URL.endswith("/"):
    PUBLIC_BASE_URL += "/"
SIGNING_KEY_FILE = env_secret_file("SIGNING_KEY_FILE")
SIGNING_PASSPHRASE_FILE = env_secret_file("SIGNING_PASSPHRASE_FILE")
if SIGNING_PASSPHRASE_FILE and not SIGNING_KEY_FILE:
    raise ConfigError("SIGNING_PASSPHRASE_FILE", "is set but SIGNING_KEY_FILE is not")
UPSTREAM_MIRRORS = env_mirrors("UPSTREAM_MIRRORS")
FETCH_CACHE_DIR = env_path("FETCH_CACHE_DIR", VAR_DIR / "cache")
# The OpenPGP public key that signs Flatcar's images (pre-baked images download them): Flatcar's
# own, shipped in the repository, unless an installation (or a test) trusts another.
FLATCAR_IMAGE_SIGNING_KEY = env_secret_file("FLATCAR_IMAGE_SIGNING_KEY") or PREBAKE_DEFAULT_SIGNING_KEY
# The global catalog's two-people rule: the staff member who proposed a version cannot approve it
# (versions filed by the system, built-in recipes and discovery, need one curator).
GLOBAL_CATALOG_TWO_PERSON_APPROVAL = env_bool("GLOBAL_CATALOG_TWO_PERSON_APPROVAL", True)
# The most one upstream download may weigh; a larger one fails the pinning or build.
UPSTREAM_MAX_BYTES = env_int("UPSTREAM_MAX_BYTES", DEFAULT_MAX_BYTES, minimum=1)
GITHUB_API_URL = env_url("GITHUB_API_URL", "https://api.github.com", schemes=("http", "https"))

# --- Uploaded extensions (hostile archives: every limit is a refusal, never a crash) -------------
CUSTOM_UPLOAD_MAX_BYTES = env_int("CUSTOM_UPLOAD_MAX_BYTES", 256 * 1024 * 1024, minimum=1)
CUSTOM_UPLOAD_MAX_UNPACKED_BYTES = env_int("CUSTOM_UPLOAD_MAX_UNPACKED_BYTES", 1024 * 1024 * 1024, minimum=1)
# A sysext of a large toolchain has some thousands of files; 99k empty directories is an attack.
CUSTOM_UPLOAD_MAX_ENTRIES = env_int("CUSTOM_UPLOAD_MAX_ENTRIES", 20_000, minimum=1)
# Binaries compress 3-5x and text 10x; a gzip bomb about 1000x.
CUSTOM_UPLOAD_MAX_RATIO = env_int("CUSTOM_UPLOAD_MAX_RATIO", 100, minimum=1)
CUSTOM_UPLOAD_CHECK_SECONDS = env_int("CUSTOM_UPLOAD_CHECK_SECONDS", 60, minimum=1)
# An upload still unchecked this many seconds after it arrived has lost its check task.
CUSTOM_UPLOAD_REQUEUE_AFTER = env_int("CUSTOM_UPLOAD_REQUEUE_AFTER", 900, minimum=60)

# --- REST API ---------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "portal.api.exception_handler",
    # JSON first (the default content type). Bodies nested too deep or holding NUL are a 400.
    "DEFAULT_PARSER_CLASSES": [
        "portal.hostile_input.JSONParser",
        "portal.hostile_input.FormParser",
        "portal.hostile_input.MultiPartParser",
    ],
    # limit/offset with a maximum limit and a 400 for values that are not whole numbers.
    "DEFAULT_PAGINATION_CLASS": "portal.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,  # DRF throttles find the client like the sign-in throttle
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Bakehouse API",
    "DESCRIPTION": "Compose Flatcar flavours from approved sysexts; bake, sign and publish them.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Extensions and digests both have an "origin"; give each choice set its own schema name.
    "ENUM_NAME_OVERRIDES": {
        "ExtensionOriginEnum": "catalog.models.Origin",
        "DigestOriginEnum": "catalog.models.UpstreamDigest.Origin",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
