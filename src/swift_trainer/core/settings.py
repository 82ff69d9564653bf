"""Settings from the environment (and env files), with their names and defaults.

Every process reads the same variables, so one env file configures a whole deployment. A
value left unset selects the embedded default: no ``NATS_URL`` starts a local nats-server,
no ``EVENT_STORE_URL`` uses SQLite under the data dir, no Redis setting keeps read models
in memory. Real environment variables win over env files, which win over defaults.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from .errors import SwiftTrainerError

#: 512 MiB, the OpenAI API's own limit for a fine-tuning file.
DEFAULT_FILES_MAX_BYTES = 512 * 1024 * 1024


class SettingsError(SwiftTrainerError):
    code = "invalid_settings"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    environment: str = "dev"
    log_level: str = "INFO"
    #: ``text`` or ``json`` (one object per line, with ``trace_id`` and ``span_id``).
    log_format: str = "text"
    #: ``uvloop`` (libuv: about a sixth less CPU per request here) or ``asyncio`` (the
    #: standard library's loop, for debugging or a platform uvloop does not build on).
    event_loop: str = "uvloop"
    #: ``None``: logs go to stderr only; set, each process also writes a rotating file there.
    log_dir: str | None = None
    data_dir: str = ".swift-trainer"
    #: ``None``: start an embedded nats-server under the data dir.
    nats_url: str | None = None
    nats_user: str | None = None
    nats_password: str | None = None
    nats_token: str | None = None
    nats_creds: str | None = None
    #: TLS to NATS: a CA bundle to trust, and a client certificate and key for mutual TLS
    #: (``NATS_TLS_CA``, ``NATS_TLS_CERT``, ``NATS_TLS_KEY``; a ``tls://`` URL alone uses
    #: the system's CAs).
    nats_tls_ca: str | None = None
    nats_tls_cert: str | None = None
    nats_tls_key: str | None = None
    #: JetStream replicas of every stream and bucket: 1 on one server, 3 on a 3-node cluster.
    nats_stream_replicas: int = 1
    #: ``None``: SQLite file ``events.db`` under the data dir.
    event_store_url: str | None = None
    #: ``None``: in-memory read models (embedded mode only).
    redis_url: str | None = None
    #: Key prefix of the read models in Redis (several deployments can share one server).
    redis_prefix: str = "swift-trainer:"
    api_prefix: str = "/api/v1"
    #: Loopback by default: reaching further needs APP_HOST and, with auth off, consent.
    app_host: str = "127.0.0.1"
    app_port: int = 8000
    #: Where every job's ``output_dir`` lives on a runner: ``<data dir>/output`` unless
    #: ``OUTPUT_ROOT`` says otherwise, so training output never lands in the current folder.
    output_root: str = ".swift-trainer/output"
    command_timeout_s: float = 10.0
    #: Largest upload ``/v1/files`` accepts (``FILES_MAX_BYTES``).
    files_max_bytes: int = DEFAULT_FILES_MAX_BYTES
    #: Jobs created through ``/v1`` merge their LoRA adapter after success (``AUTO_EXPORT``).
    auto_export: bool = True
    #: ``required``: every route but liveness needs an API key (``API_AUTH``).
    api_auth: str = "off"
    #: Serve beyond loopback without authentication anyway (``API_INSECURE_NO_AUTH``).
    insecure_no_auth: bool = False
    #: Writes per second per API key, and the burst (``API_WRITE_RATE``, ``API_WRITE_BURST``).
    api_write_rate: float = 5.0
    api_write_burst: int = 20
    #: Whether a queued job may preempt running jobs of lower priority
    #: (``SCHEDULER_PREEMPTION``, ``--preemption on|off``), and its bounds: the least time an
    #: attempt runs before it may be preempted, the most preemptions of one job per hour,
    #: and the time a victim gets to write its checkpoint (``PREEMPT_MIN_RUNTIME_S``,
    #: ``PREEMPT_MAX_PER_HOUR``, ``PREEMPT_GRACE_S``).
    scheduler_preemption: bool = True
    preempt_min_runtime_s: float = 600.0
    preempt_max_per_hour: int = 2
    preempt_grace_s: float = 120.0
    #: A resumed attempt must report its checkpoint's step within this (``RESUME_CHECK_S``).
    resume_check_s: float = 600.0
    #: A job whose GPUs stay under ``idle_gpu_util_pct`` this long is flagged idle.
    idle_gpu_warn_s: float = 1800.0
    idle_gpu_util_pct: float = 5.0
    #: Set: an idle job is stopped with a checkpoint after this long (``IDLE_GPU_STOP_S``).
    idle_gpu_stop_s: float | None = None

    @property
    def resolved_event_store_url(self) -> str:
        if self.event_store_url:
            return self.event_store_url
        return f"sqlite+aiosqlite:///{Path(self.data_dir).resolve() / 'events.db'}"


def default_output_root(data_dir: str) -> str:
    """The folder job output goes to when ``OUTPUT_ROOT`` is unset: under the data dir."""
    return str(Path(data_dir) / "output")


def parse_env_file(text: str) -> dict[str, str]:
    """``KEY=value`` lines; ``#`` comments, ``export`` prefixes and quotes are allowed."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _redis_url(env: Mapping[str, str]) -> str | None:
    if env.get("REDIS_URL"):
        return env["REDIS_URL"]
    if not env.get("REDIS_HOST"):
        return None
    password = env.get("REDIS_PASSWORD", "")
    auth = f":{password}@" if password else ""
    host, port, db = env["REDIS_HOST"], env.get("REDIS_PORT", "6379"), env.get("REDIS_DB", "0")
    return f"redis://{auth}{host}:{port}/{db}"


def load_settings(
    env: Mapping[str, str] | None = None,
    *,
    env_file: str | Path | None = None,
) -> Settings:
    """Read settings; ``env_file`` (or ``SWIFT_TRAINER_ENV_FILE``, or
    ``env/.env.<ENVIRONMENT>`` when present) fills in what the environment leaves unset."""
    source = dict(os.environ if env is None else env)
    path = env_file or source.get("SWIFT_TRAINER_ENV_FILE")
    if path is None:
        environment_file = Path("env") / f".env.{source.get('ENVIRONMENT', 'dev')}"
        path = environment_file if environment_file.is_file() else None
    if path is not None:
        try:
            file_values = parse_env_file(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"cannot read env file {path}: {exc}") from exc
        source = {**file_values, **source}

    def text(name: str, default: str | None = None) -> str | None:
        value = source.get(name)
        return value if value not in (None, "") else default

    try:
        port = int(text("APP_PORT", "8000") or "8000")
        timeout = float(text("COMMAND_TIMEOUT_S", "10") or "10")
        replicas = int(text("NATS_STREAM_REPLICAS", "1") or "1")
        files_max_bytes = int(text("FILES_MAX_BYTES", str(DEFAULT_FILES_MAX_BYTES)) or "0")
    except ValueError as exc:
        raise SettingsError(
            "APP_PORT / COMMAND_TIMEOUT_S / NATS_STREAM_REPLICAS / FILES_MAX_BYTES must be "
            f"numbers: {exc}"
        ) from exc
    if not 1 <= replicas <= 5:
        raise SettingsError(
            f"NATS_STREAM_REPLICAS must be 1 to 5 (JetStream's range), got {replicas}"
        )
    log_format = (text("LOG_FORMAT", "text") or "text").lower()
    if log_format not in ("text", "json"):
        raise SettingsError(f"LOG_FORMAT must be 'text' or 'json', got {log_format!r}")
    event_loop = (text("EVENT_LOOP", "uvloop") or "uvloop").lower()
    if event_loop not in ("uvloop", "asyncio"):
        raise SettingsError(f"EVENT_LOOP must be 'uvloop' or 'asyncio', got {event_loop!r}")
    if files_max_bytes < 1:
        raise SettingsError(f"FILES_MAX_BYTES must be positive, got {files_max_bytes}")
    auto_export = (text("AUTO_EXPORT", "true") or "true").lower()
    if auto_export not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise SettingsError(f"AUTO_EXPORT must be true or false, got {auto_export!r}")
    prefix = text("API_PREFIX", "/api/v1") or ""
    if prefix and not prefix.startswith("/"):
        raise SettingsError(f"API_PREFIX must start with '/', got {prefix!r}")
    data_dir = text("SWIFT_TRAINER_DATA_DIR", ".swift-trainer") or ".swift-trainer"
    return Settings(
        environment=text("ENVIRONMENT", "dev") or "dev",
        log_level=(text("LOG_LEVEL", "INFO") or "INFO").upper(),
        log_format=log_format,
        event_loop=event_loop,
        log_dir=text("LOG_DIR"),
        data_dir=data_dir,
        nats_url=text("NATS_URL"),
        nats_user=text("NATS_USER"),
        nats_password=text("NATS_PASSWORD"),
        nats_token=text("NATS_TOKEN"),
        nats_creds=text("NATS_CREDS"),
        nats_tls_ca=text("NATS_TLS_CA"),
        nats_tls_cert=text("NATS_TLS_CERT"),
        nats_tls_key=text("NATS_TLS_KEY"),
        nats_stream_replicas=replicas,
        event_store_url=text("EVENT_STORE_URL"),
        redis_url=_redis_url(source),
        redis_prefix=text("REDIS_PREFIX", "swift-trainer:") or "swift-trainer:",
        api_prefix=prefix.rstrip("/"),
        app_host=text("APP_HOST", "127.0.0.1") or "127.0.0.1",
        app_port=port,
        output_root=text("OUTPUT_ROOT") or default_output_root(data_dir),
        command_timeout_s=timeout,
        files_max_bytes=files_max_bytes,
        auto_export=auto_export in ("1", "true", "yes", "on"),
        **_auth_settings(text),
        **_preemption_settings(text),
        **_watch_settings(text),
    )


def _preemption_settings(text: Callable[[str, str], str | None]) -> dict[str, Any]:
    """``SCHEDULER_PREEMPTION``, ``PREEMPT_MIN_RUNTIME_S``, ``PREEMPT_MAX_PER_HOUR``,
    ``PREEMPT_GRACE_S``."""
    enabled = (text("SCHEDULER_PREEMPTION", "on") or "on").lower()
    if enabled not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise SettingsError(f"SCHEDULER_PREEMPTION must be on or off, got {enabled!r}")
    try:
        min_runtime = float(text("PREEMPT_MIN_RUNTIME_S", "600") or "600")
        per_hour = int(text("PREEMPT_MAX_PER_HOUR", "2") or "2")
        grace = float(text("PREEMPT_GRACE_S", "120") or "120")
    except ValueError as exc:
        raise SettingsError(
            f"PREEMPT_MIN_RUNTIME_S / PREEMPT_MAX_PER_HOUR / PREEMPT_GRACE_S must be numbers: {exc}"
        ) from exc
    if min_runtime < 0 or per_hour < 0 or grace <= 0:
        raise SettingsError(
            "PREEMPT_MIN_RUNTIME_S and PREEMPT_MAX_PER_HOUR must be 0 or more, "
            "PREEMPT_GRACE_S more than 0"
        )
    return {
        "scheduler_preemption": enabled in ("1", "true", "yes", "on"),
        "preempt_min_runtime_s": min_runtime,
        "preempt_max_per_hour": per_hour,
        "preempt_grace_s": grace,
    }


def _watch_settings(text: Callable[[str, str], str | None]) -> dict[str, Any]:
    """``RESUME_CHECK_S``, ``IDLE_GPU_WARN_S``, ``IDLE_GPU_UTIL_PCT``, ``IDLE_GPU_STOP_S``."""
    names = ("RESUME_CHECK_S", "IDLE_GPU_WARN_S", "IDLE_GPU_UTIL_PCT", "IDLE_GPU_STOP_S")
    try:
        resume = float(text("RESUME_CHECK_S", "600") or "600")
        warn = float(text("IDLE_GPU_WARN_S", "1800") or "1800")
        util = float(text("IDLE_GPU_UTIL_PCT", "5") or "5")
        stop_text = text("IDLE_GPU_STOP_S", "")
        stop = float(stop_text) if stop_text else None
    except ValueError as exc:
        raise SettingsError(f"{' / '.join(names)} must be numbers: {exc}") from exc
    if min(resume, warn) <= 0 or not 0 <= util <= 100 or (stop is not None and stop <= 0):
        raise SettingsError(
            "RESUME_CHECK_S, IDLE_GPU_WARN_S and IDLE_GPU_STOP_S must be positive seconds, "
            "IDLE_GPU_UTIL_PCT a percentage"
        )
    return {
        "resume_check_s": resume,
        "idle_gpu_warn_s": warn,
        "idle_gpu_util_pct": util,
        "idle_gpu_stop_s": stop,
    }


def _auth_settings(text: Callable[[str, str], str | None]) -> dict[str, Any]:
    """``API_AUTH``, ``API_INSECURE_NO_AUTH``, ``API_WRITE_RATE``, ``API_WRITE_BURST``."""
    auth = (text("API_AUTH", "off") or "off").lower()
    if auth not in ("off", "required"):
        raise SettingsError(f"API_AUTH must be 'required' or 'off', got {auth!r}")
    insecure = (text("API_INSECURE_NO_AUTH", "false") or "false").lower()
    try:
        rate = float(text("API_WRITE_RATE", "5") or "5")
        burst = int(text("API_WRITE_BURST", "20") or "20")
    except ValueError as exc:
        raise SettingsError(f"API_WRITE_RATE / API_WRITE_BURST must be numbers: {exc}") from exc
    if rate < 0 or burst < 1:
        raise SettingsError("API_WRITE_RATE must be >= 0 (0: no limit), API_WRITE_BURST >= 1")
    return {
        "api_auth": auth,
        "insecure_no_auth": insecure in ("1", "true", "yes", "on"),
        "api_write_rate": rate,
        "api_write_burst": burst,
    }
