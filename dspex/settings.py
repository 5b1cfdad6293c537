"""DSPex settings, read from ``DSPEX_*`` environment variables (and a ``.env`` file).

Every tunable lives here, described; nothing reads ``os.environ`` at import time. ``get_settings()``
builds a fresh `Settings` each call, so a changed environment (a test, a worker started with other
variables) is always seen; it is cheap (tens of microseconds), but hot paths should take it once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dspex.masking import mask_data, redact_url, url_secrets
from dspex.project import HOME_NAME, find_project_root

__all__ = ["OFFLINE_LM_MODEL", "URL_SETTINGS", "Mode", "Settings", "get_settings"]

Mode = Literal["local", "distributed"]

#: The model name of the bundled offline LM (extractive, deterministic, no network).
OFFLINE_LM_MODEL = "dspex/offline-extractive"

#: The settings that hold URLs, which may carry a password (``data_roots`` is a list of them).
URL_SETTINGS = ("lm_api_base", "payload_url", "session_url", "data_roots")


class Settings(BaseSettings):
    """The effective DSPex configuration.

    Paths that are relative are taken from the current working directory, which is what makes the
    embedded default project-local.
    """

    model_config = SettingsConfigDict(
        env_prefix="DSPEX_", env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # --- where state lives -------------------------------------------------------------------
    home: Path = Field(
        default_factory=lambda: _project_home(),
        description="Project-local state folder: Prefect home, payloads, registry file, caches. Default: "
        ".dspex in the project root found up the tree as git finds .git (the nearest folder with "
        "prefect.yaml, pyproject.toml or .git; a .dspex between here and it wins), else here (dspex/project.py).",
    )
    prefect_home: Path | None = Field(
        default=None,
        description="PREFECT_HOME for the embedded server; defaults to <home>/prefect. Ignored when "
        "PREFECT_HOME or PREFECT_API_URL is already set by the user.",
    )

    # --- execution mode and pools ------------------------------------------------------------
    mode: Mode = Field(
        default="local",
        description="local: pools are in-process bounded executors; distributed: batches go to the "
        "run-step deployment of each Prefect work pool.",
    )
    pool_general_capacity: int = Field(
        default=8, ge=0, description="Concurrent examples in the general pool."
    )
    pool_optimizer_capacity: int = Field(
        default=2, ge=0, description="Concurrent jobs in the optimizer pool."
    )
    pool_gpu_capacity: int = Field(default=4, ge=0, description="Concurrent batches in the gpu pool.")
    fallback_policy: Literal["general", "fail"] = Field(
        default="general",
        description="When a pool cannot take work: 'general' reroutes the step to the general pool "
        "(logged), 'fail' fails fast with PoolUnavailableError.",
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Examples per dispatched batch; None chooses it from the duration estimate.",
    )
    target_batch_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Automatic batch sizing aims for batches that take about this long, so per-task "
        "(local) or per-dispatch (distributed) overhead stays small.",
    )
    batch_max_rows: int = Field(
        default=1000,
        ge=1,
        description="Automatic batch sizing never puts more rows than this in one batch, so a batch lost "
        "with its worker costs little to redo (issue 26); an explicit batch_size is not capped.",
    )
    batch_max_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Automatic batch sizing keeps a batch's expected time (from the duration estimate) "
        "under this many seconds, for the same reason as batch_max_rows.",
    )
    dispatch_poll_seconds: float = Field(
        default=0.5,
        gt=0,
        description="How often a distributed dispatch polls its flow run (Prefect's default is 5 s).",
    )
    dispatch_timeout_seconds: float = Field(
        default=1800.0, gt=0, description="Longest a distributed batch may take before it counts as failed."
    )
    worker_grace_seconds: float = Field(
        default=15.0,
        gt=0,
        description="In distributed mode, how long a batch may wait for a worker before the fallback policy "
        "applies, and how long a silent worker is still trusted; a killed worker's batch is re-dispatched "
        "within 2 x this + one heartbeat (35 s by default, docs/deployment.md).",
    )
    worker_stop_seconds: float = Field(
        default=10.0,
        gt=0,
        description="After SIGTERM or Ctrl+C, a dspex worker takes no new run and waits this long for its "
        "running flow runs; runs still going are then marked Crashed (their batches are re-dispatched) and "
        "the worker exits. A second signal exits at once (issue 26.7).",
    )

    # --- language model ----------------------------------------------------------------------
    lm_model: str = Field(
        default=OFFLINE_LM_MODEL,
        description=f"LiteLLM model name (e.g. 'openai/gpt-4o-mini'); '{OFFLINE_LM_MODEL}' is the "
        "bundled offline, extractive, deterministic LM.",
    )
    lm_api_base: str | None = Field(default=None, description="Base URL of an OpenAI-compatible server.")
    lm_api_key_env: str = Field(
        default="OPENAI_API_KEY", description="Name of the environment variable that holds the LM API key."
    )
    lm_api_key_block: str | None = Field(
        default=None,
        description="Name of a Prefect Secret block holding the LM API key (wins over the env var).",
    )
    lm_api_key: SecretStr | None = Field(
        default=None, description="The LM API key itself (masked everywhere; prefer lm_api_key_env)."
    )
    lm_temperature: float | None = Field(
        default=None, ge=0, description="Sampling temperature; None: model default."
    )
    lm_max_tokens: int | None = Field(
        default=None, ge=1, description="Max output tokens; None: DSPy default."
    )
    lm_num_retries: int = Field(
        default=3,
        ge=0,
        description="Retries of a row after a transient LM error (rate limit, 5xx, timeout, connection), "
        "with exponential backoff and jitter. The only retry count: DSPy's own retries are turned off "
        "and batches are not retried around it.",
    )
    lm_timeout_seconds: float = Field(default=60.0, gt=0, description="Timeout of one LM request.")
    lm_cache: bool = Field(default=True, description="Whether DSPy caches LM responses.")
    task_retries: int = Field(
        default=2,
        ge=0,
        description="Re-dispatches of a distributed batch whose run crashed, failed or timed out (a dead "
        "worker); rows are never retried this way (see lm_num_retries).",
    )
    task_retry_delay_seconds: float = Field(
        default=1.0, ge=0, description="Base delay of the exponential backoff between row retries."
    )
    retry_max_delay_seconds: float = Field(
        default=30.0,
        ge=0,
        description="Longest backoff between row retries (a Retry-After may ask for more).",
    )
    lm_requests_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="Requests per minute allowed to one LM endpoint (model + API base), shared by every "
        "batch of every pipeline in the process (and by every worker in distributed mode); None: no limit.",
    )
    lm_tokens_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="Tokens per minute (prompt + completion, estimated then corrected) allowed to one LM "
        "endpoint, shared like lm_requests_per_minute; None: no limit.",
    )
    lm_rate_limit_shared: bool = Field(
        default=True,
        description="In distributed mode, share the LM rate limits across workers through Prefect global "
        "concurrency limits with slot decay (else each worker applies them on its own).",
    )
    breaker_failure_threshold: int = Field(
        default=5,
        ge=1,
        description="Consecutive transport failures (429 after retries, 5xx, timeouts, connection errors) "
        "of one LM endpoint that open its circuit breaker.",
    )
    breaker_reset_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long an open circuit refuses work before admitting one probe batch.",
    )

    # --- bounded loading of user YAML/JSON (issue 20; dspex.documents) -----------------------
    spec_max_bytes: int = Field(
        default=1_048_576,
        ge=1,
        description="Largest YAML/JSON document (spec, variables, project file) DSPex parses, in bytes.",
    )
    spec_max_depth: int = Field(
        default=64,
        ge=16,
        le=500,
        description="Deepest nesting of mappings and lists such a document may have (aliases expanded); "
        "kept well below Python's recursion limit so nothing downstream recurses out of stack.",
    )
    spec_max_nodes: int = Field(
        default=100_000,
        ge=2_000,
        description="Most values (scalars, mappings, lists) such a document may hold once YAML aliases "
        "are expanded: a 'billion laughs' document is refused while it is read, not built.",
    )

    # --- run control: resume, interrupts, budgets (issue 12) ---------------------------------
    resume: bool = Field(
        default=True,
        description="Reuse the rows earlier runs completed (same step definition, LM and row inputs; "
        "kept under <payload_url>/results) instead of paying for them again; false: compute everything.",
    )
    interrupt_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="After SIGINT/SIGTERM, how long rows already running may take to finish before the run "
        "writes its partial output and ends (nothing new is dispatched once the signal arrives).",
    )
    max_cost_usd: float | None = Field(
        default=None,
        gt=0,
        description="Default cost budget of a run in USD: dispatching stops before the projected cost "
        "would exceed it (completed rows are kept); None: no budget.",
    )
    max_errors: int = Field(
        default=10,
        ge=0,
        description="Failed rows a pipeline tolerates by default before it stops (as dspy.Parallel's and "
        "dspy.Evaluate's max_errors, whose default is also 10); a spec's max_errors overrides it (issue 24).",
    )

    # --- provider batch APIs (issue 21, flows.batch_api.mode) --------------------------------------
    lm_batch_api: bool = Field(
        default=False,
        description="Run module steps through the provider's batch API (/v1/files + /v1/batches): "
        "cheaper, answered within the completion window; false: online calls (the default).",
    )
    lm_batch_fallback: Literal["retry", "online"] = Field(
        default="retry",
        description="A request that failed or expired inside a batch: 'retry' sends it again in the next "
        "round (within the retry policy's attempts); 'online' asks the LM online instead.",
    )
    lm_batch_discount: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Batch price as a fraction of the online price, for models whose cost map entry has "
        "no *_cost_per_token_batches price.",
    )
    lm_batch_poll_seconds: float = Field(
        default=30.0,
        gt=0,
        description="First wait before checking a submitted batch; doubles per check up to the maximum.",
    )
    lm_batch_poll_max_seconds: float = Field(
        default=600.0, gt=0, description="Longest wait between two checks of a submitted batch."
    )
    lm_batch_completion_window: str = Field(
        default="24h", description="The completion window asked of the provider for each batch."
    )

    trusted_import_roots: list[str] = Field(
        default_factory=list,
        description="Top-level packages whose 'pkg.mod:attr' import paths specs may name for tools, "
        'reward functions and user programs (JSON list, e.g. ["my_project"]).',
    )

    # --- payloads ----------------------------------------------------------------------------
    payload_url: str | None = Field(
        default=None,
        description="fsspec URL where payloads are stored (a local folder, s3://..., gs://...); "
        "defaults to <home>/payloads. In distributed mode every worker must reach it.",
    )
    data_roots: list[str] | None = Field(
        default=None,
        description="Folders and URL prefixes datasets, corpora and saved program states may be read "
        'from (JSON list, e.g. ["/data", "s3://bucket/datasets/"]); http(s) URLs are read only under a '
        "listed prefix. None: the current project folder and the payload root. Payloads are read only "
        "from the payload root and these.",
    )
    read_fence: Literal["api", "all"] = Field(
        default="api",
        description="Which reads DSPEX_DATA_ROOTS fences (issue 20): 'api' (default) the values that "
        "arrive through the Prefect API (deployment runs, run-step batches, dispatched session turns); "
        "'all' every read, also paths a local caller passes on the command line or in a Python call.",
    )
    payload_inline_max_bytes: int = Field(
        default=16 * 1024,
        ge=0,
        description="Payloads up to this size are inlined (base64) in their PayloadRef instead of stored.",
    )
    payload_compression: Literal["none", "zstd", "lz4"] = Field(
        default="none", description="Compression for Arrow payloads (buffers) and stored MessagePack files."
    )

    # --- registry ----------------------------------------------------------------------------
    registry_path: Path | None = Field(
        default=None,
        description="JSON file for the registry's learned state; defaults to <home>/registry.json.",
    )
    registry_min_samples: int = Field(
        default=3, ge=1, description="Observed runs needed before a learned estimate replaces the static one."
    )

    # --- retrieval ---------------------------------------------------------------------------
    embedding_device: str = Field(
        default="auto",
        description="Device for the embedding model: auto (CUDA when present), cpu, cuda, cuda:N.",
    )
    embedding_batch_size: int = Field(default=64, ge=1, description="Texts per encode batch.")
    retrieval_index_cache_size: int = Field(
        default=8,
        ge=0,
        description="Corpus indexes (embedding matrices) kept in memory per process, least recently "
        "used evicted first; 0 keeps none.",
    )
    retrieval_disk_cache: bool = Field(
        default=True,
        description="Whether corpus embedding matrices are also cached as .npy files under "
        "<home>/indexes, keyed by content hash, so a new process does not re-encode a known corpus.",
    )

    # --- telemetry (issue 14) ------------------------------------------------------------------
    events_enabled: bool = Field(
        default=True,
        description="Emit dspex.* Prefect events (per step or batch, never per row) when a Prefect API "
        "is reachable from here (a flow run, or PREFECT_API_URL set); off: no event is built at all.",
    )
    estimate_drift_factor: float = Field(
        default=2.0,
        gt=1,
        description="A step whose actual duration exceeds its estimate by this factor emits dspex.estimate.drift.",
    )
    tracing: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="OpenTelemetry spans for module and LM calls: auto (on when OTEL_EXPORTER_OTLP_ENDPOINT "
        "is set or a tracer provider was installed by the caller), on, or off. Needs the [tracing] extra.",
    )
    tracing_head_rows: int = Field(
        default=20,
        ge=0,
        description="Rows of each step whose module and LM calls are all traced before sampling starts.",
    )
    tracing_sample_rate: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="After the head, the probability that a row is traced in full (within the rate limit).",
    )
    tracing_max_rows_per_second: float = Field(
        default=5.0,
        ge=0,
        description="After the head, at most this many rows a second per step are traced in full (0: no "
        "limit, so with a sample rate of 1 every row is). Failed attempts and every batch's totals are "
        "traced whatever the sample.",
    )

    # --- sessions and the shared local server (issue 15) ---------------------------------------
    session_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the session store (e.g. postgresql+psycopg://host/db, so any "
        "worker can serve a turn); defaults to SQLite at <home>/sessions.db.",
    )
    session_ttl_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="Default session lifetime after its last turn; a later turn raises SessionExpiredError.",
    )
    session_wait_seconds: float = Field(
        default=120.0,
        gt=0,
        description="How long a turn waits for another turn on the same session before SessionBusyError.",
    )
    session_lease_seconds: float = Field(
        default=600.0,
        gt=0,
        description="A turn's hold on its session; a holder that died frees the session after this long.",
    )
    session_affinity_queue: str | None = Field(
        default=None,
        description="On a worker: a work queue of its pool that only this worker polls (besides the "
        "default one). Sessions whose last turn it served send their next turns there while it polls.",
    )
    session_affinity_live_seconds: float = Field(
        default=60.0,
        gt=0,
        description="dispatch_turn sends a session's next turn to its last worker's affinity queue only "
        "while that queue was polled within this many seconds (else to the pool's default queue); keep it "
        "well above the workers' poll interval.",
    )
    shared_server: bool = Field(
        default=True,
        description="CLI runs (dspex run/demo/ui) use one local Prefect server in <home>, started on first "
        "use and reused while it lives, instead of a server per process. Never used when "
        "PREFECT_API_URL is set, nor under pytest.",
    )
    warm_runner: bool = Field(
        default=True,
        description="With the shared server, also keep a warm runner (deployments.local.warm_runner) "
        "that has Prefect and DSPy imported, and hand `dspex run` to it when nothing could make it run differently (same "
        "environment, folder and code): the first row in about a second instead of the imports' ~4 s.",
    )
    shared_server_idle_seconds: float = Field(
        default=900.0,
        gt=0,
        description="The shared local server stops after this long without a CLI run using it.",
    )
    shared_server_port: int = Field(
        default=4200,
        ge=1,
        le=65535,
        description="Port of the shared local server (its UI too); a free one is taken when it is busy.",
    )

    @field_validator("lm_model")
    @classmethod
    def _model_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    # --- derived paths -----------------------------------------------------------------------
    @property
    def resolved_prefect_home(self) -> Path:
        """The Prefect home the embedded default uses."""
        return (self.prefect_home or self.home / "prefect").resolve()

    @property
    def resolved_payload_url(self) -> str:
        """The payload base URL, a local folder by default."""
        return self.payload_url or str((self.home / "payloads").resolve())

    @property
    def resolved_registry_path(self) -> Path:
        """Where the registry keeps its learned state."""
        return (self.registry_path or self.home / "registry.json").resolve()

    @property
    def uses_offline_lm(self) -> bool:
        """Whether the bundled offline LM is in use."""
        return self.lm_model == OFFLINE_LM_MODEL

    def pool_capacity(self, pool: str) -> int:
        """The capacity of a local-mode pool by name."""
        capacities = {
            "general": self.pool_general_capacity,
            "optimizer": self.pool_optimizer_capacity,
            "gpu": self.pool_gpu_capacity,
        }
        return capacities[pool]

    def secret_values(self) -> list[str]:
        """The secret values these settings hold or name, longest first: the LM API key (set here or
        in the variable ``lm_api_key_env`` names) and the credentials inside each URL setting
        (`dspex.masking.url_secrets`). Values shorter than 6 characters are left out (masking them
        would mangle ordinary words)."""
        found = [os.environ.get(self.lm_api_key_env, "")]
        if self.lm_api_key is not None:
            found.insert(0, self.lm_api_key.get_secret_value())
        for name in URL_SETTINGS:
            value = getattr(self, name)
            for url in value if isinstance(value, list) else [value or ""]:
                found.extend(url_secrets(url))
        return sorted((s for s in dict.fromkeys(found) if len(s) >= 6), key=len, reverse=True)

    def __repr_args__(self) -> Any:
        # repr() and str() (a traceback's locals, a debug print) mask URL credentials too (issue 20).
        secrets = self.secret_values()
        return [(name, mask_data(value, secrets)) for name, value in super().__repr_args__()]

    def masked(self) -> dict[str, Any]:
        """The effective values, JSON-able, with every secret masked."""
        values = self.model_dump(mode="json")

        # URLs may carry credentials (http://user:pw@host, s3://KEY:SECRET@bucket): mask them too.
        def mask(value: Any) -> Any:
            if isinstance(value, str) and "://" in value:
                return redact_url(value)
            return [mask(item) for item in value] if isinstance(value, list) else value

        values = {k: mask(v) for k, v in values.items()}
        values["lm_api_key"] = "**********" if self.lm_api_key else None
        values["resolved_prefect_home"] = str(self.resolved_prefect_home)
        values["resolved_payload_url"] = redact_url(self.resolved_payload_url)
        values["resolved_registry_path"] = str(self.resolved_registry_path)
        return values


def _project_home() -> Path:
    """The default home: ``.dspex`` in the project folder (`dspex.project.find_project_root`)."""
    return find_project_root()[0] / HOME_NAME


def get_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment, with optional explicit overrides.

    Args:
        **overrides: Field values that win over the environment.
    """
    return Settings(**overrides)
