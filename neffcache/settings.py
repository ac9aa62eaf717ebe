"""Server-side settings: service and workers read them once at start and pass them down.

Every field is an environment variable with the NEFFCACHE_ prefix (NEFFCACHE_DATABASE_URL,
...). Nothing here connects to anything: building Settings is pure.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from neffcache.sizes import parse_size

# A byte count given as a number or with a unit: 500GiB, 2TB, 1048576.
ByteCount = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]


class Settings(BaseSettings):
    # "none" is None for the settings that may be None (NEFFCACHE_FAILURE_TTL_S=none: remembered
    # for ever; NEFFCACHE_GC_QUOTA_BYTES=none: no quota).
    model_config = SettingsConfigDict(env_prefix="NEFFCACHE_", extra="ignore", env_parse_none_str="none")

    # --- where things live ---
    database_url: str = "sqlite:///var/neffcache.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # file:///abs/path or a relative path for the folder store; s3://bucket/prefix for S3.
    storage_url: str = "var/objects"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    presign_expiry_s: int = Field(default=900, ge=10)

    # --- who may do what ---
    # Off only for a single-user machine (`make run` turns it off and says so at start-up).
    auth_required: bool = True
    # An admin token accepted before any token exists in the database (stored nowhere).
    bootstrap_admin_token: str | None = None

    # --- limits ---
    max_upload_bytes: int = Field(default=8 * 1024**3, ge=1)
    # RQ queue names start with this, so several deployments (or test runs) share one Redis.
    queue_prefix: str = "neffcache"

    # --- compiling ---
    compile_timeout_s: float = Field(default=3 * 3600, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    retry_backoff_s: float = Field(default=30.0, ge=0)
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    # A worker silent for this long is lost; its running job is retried as `worker_lost`.
    worker_lost_after_s: float = Field(default=60.0, gt=0)
    # A worker silent (or stopped) for this long is forgotten: its row is deleted by the sweep.
    worker_retention_s: float = Field(default=24 * 3600.0, gt=0)
    # How often a worker's sweep checks that the queued jobs of its queues are really in Redis
    # (enqueued again when Redis lost them); a job enqueued more recently is not checked.
    queue_check_interval_s: float = Field(default=30.0, gt=0)
    # A `storage_unavailable` attempt (object store or database unreachable) is retried after
    # this, doubling with each attempt and capped at the maximum: longer than a typical outage.
    storage_retry_backoff_s: float = Field(default=60.0, ge=0)
    storage_retry_backoff_max_s: float = Field(default=900.0, ge=0)
    # Workers seen within this window count as registered toolchains for version resolution.
    toolchain_ttl_s: float = Field(default=24 * 3600.0, gt=0)
    log_tail_bytes: int = Field(default=4096, ge=256)
    # How often a running compile's log tail is copied to the job (for `neffcache logs -f`).
    log_refresh_s: float = Field(default=10.0, gt=0)
    # How often the service writes the cache events it recorded (service.events): another API
    # process sees them that much later at most, and a crash loses at most that many seconds' worth.
    event_flush_s: float = Field(default=0.25, gt=0, le=60)
    # How long an API process keeps what the hit path reads (token grants, registered
    # toolchains, artifact rows, usage counts) before asking the database again: how long a
    # revoked token or another process's counts can be stale (service.memo). 0: not at all.
    hot_cache_s: float = Field(default=5.0, ge=0, le=300)
    # Threads an API process runs requests that use the database in (a warm hit uses none), and
    # so the database connections it keeps: one per thread, plus the event writer's and a few
    # for a thread that nests a second session. Postgres must allow that many per API process
    # (README, "Sizing"): 32 threads keep at most 42 connections open.
    api_threads: int = Field(default=32, ge=1, le=1000)

    # --- keeping the cache within bounds (neffcache.gc; README "Quota, eviction and GC") ---
    # Artifact bytes (the sum of their files' sizes) the deployment keeps; the GC evicts the
    # least recently used unpinned artifacts beyond it. None: no quota.
    gc_quota_bytes: ByteCount | None = None
    # The same per namespace, as JSON: {"team-a": "200GiB"}.
    gc_namespace_quota_bytes: dict[str, ByteCount] = Field(default_factory=dict)
    # Unpinned artifacts unused (no hit, no download) for this long are evicted. None: off.
    gc_ttl_s: float | None = Field(default=None, gt=0)
    # How often the workers run the GC (one of them at a time: a lease); 0: never (use
    # `neffcache-admin gc` from cron instead).
    gc_interval_s: float = Field(default=3600.0, ge=0)
    # Between marking an object (its artifact evicted, its blob unused, an orphan) and deleting
    # it: a presigned URL handed out before the mark keeps working for its whole life, and a
    # download in flight finishes. At least presign_expiry_s + 60 (checked below).
    gc_grace_s: float = Field(default=3600.0, gt=0)
    # A blob (an uploaded model) that no artifact and no active job names is swept once it has
    # not been uploaded or compiled for this long.
    gc_blob_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    # Finished jobs whose key has no artifact (failures, cancellations; their logs) are deleted
    # this long after they finished.
    gc_job_retention_s: float = Field(default=90 * 24 * 3600.0, gt=0)
    # Raw cache events are kept this long, then rolled up into hourly counts (cache_event_hours).
    event_retention_s: float = Field(default=30 * 24 * 3600.0, gt=0)
    # A remembered compile failure (compile_error, invalid_input, invalid_output) is answered
    # from memory for this long after it failed; the next request after that compiles again.
    # None: remembered until a request forces a retry.
    failure_ttl_s: float | None = Field(default=7 * 24 * 3600.0, gt=0)

    # --- what the processes log (neffcache.logs) ---
    # text: a line a person reads (`make run`); json: one JSON object per line, with the request
    # and job ids, for a log pipeline (the Kubernetes manifests set it).
    log_format: Literal["text", "json"] = "text"

    # --- the worker ---
    worker_backend: str = "inductor"  # inductor | neuronx-cc
    neuronx_cc_path: str = "neuronx-cc"
    # The Neuron runtime a compile host's NEFFs are meant for; detected from dpkg when unset.
    worker_runtime_version: str | None = None
    # `cuda` is served only where a GPU is present; this forces it off or on.
    worker_cuda: bool | None = None
    work_dir: str | None = None  # parent of the per-job temp dirs; the system temp dir if unset

    @model_validator(mode="after")
    def _grace_outlives_presigned_urls(self) -> Settings:
        if self.gc_grace_s < self.presign_expiry_s + 60:
            raise ValueError(
                f"gc_grace_s ({self.gc_grace_s:g}) must be at least presign_expiry_s + 60 "
                f"({self.presign_expiry_s + 60}): a presigned URL handed out before an object is marked "
                "must keep working until it expires")
        return self
