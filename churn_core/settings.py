"""Typed settings: ``configs/base.yaml`` + ``configs/<env>.yaml`` + ``CHURN_*`` environment variables.

Precedence, lowest to highest: field defaults, base.yaml, <env>.yaml, environment variables.
Nested fields use ``__`` in variable names, e.g. ``CHURN_SPARK__REMOTE=sc://spark:15002``.
Relative paths in YAML are resolved against the project root (``CHURN_ROOT``, default: the
current directory), so the same files work on a laptop and in a container.
"""

from __future__ import annotations

import difflib
import os
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

PACKAGE_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class SampleSettings(BaseModel):
    """How much sample data ``churn generate`` writes."""

    customers: int = Field(5_000, ge=1, le=10_000_000)
    seed: int = 7
    chunk_size: int = Field(100_000, ge=1)
    page_size: int = Field(1_000, ge=1)


class SparkSettings(BaseModel):
    """Where Spark runs. ``remote`` unset means an embedded Sail Spark Connect server."""

    remote: str | None = None
    host: str = "127.0.0.1"
    port: int = 0


class RaySettings(BaseModel):
    """How the driver reaches Ray. ``address`` unset starts a local cluster bound to loopback."""

    address: str | None = None
    num_cpus: int | None = None
    include_dashboard: bool = False
    node_ip_address: str = "127.0.0.1"
    # Port of the local cluster's Prometheus metrics endpoint (Ray's metrics agent). Fixed, a
    # static scrape target finds it (monitoring/prometheus/prometheus.yml); None lets Ray pick
    # a free one (tests), readable from ray.nodes(). Ignored when joining ``address``.
    metrics_export_port: int | None = Field(None, ge=1, le=65535)


class TrainingSettings(BaseModel):
    """Ray Train XGBoost settings (the search space for tuning lives in its own file)."""

    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    num_boost_round: int = Field(300, ge=1)
    early_stopping_rounds: int = Field(30, ge=1)
    params: dict[str, Any] = Field(
        default_factory=lambda: {"max_depth": 3, "eta": 0.05, "min_child_weight": 1.0}
    )
    hash_split_test_fraction: float = Field(0.2, gt=0, lt=0.5)
    hash_split_valid_fraction: float = Field(0.1, gt=0, lt=0.5)
    min_champion_auc: float = Field(0.6, ge=0, le=1)
    storage_path: Path = Path("var/ray_results")
    seed: int = 7
    # Class imbalance: "none" keeps probabilities calibrated (the decision threshold is chosen
    # on the validation split instead); "balanced" weights positives by negatives/positives;
    # a number sets XGBoost's scale_pos_weight directly.
    imbalance: Literal["none", "balanced"] | float = "none"
    # How the label threshold is chosen on the validation split.
    threshold_metric: Literal["f1", "fixed"] = "f1"
    fixed_threshold: float = Field(0.5, gt=0, lt=1)
    # A checkpoint every N boosting rounds lets a failed worker group resume, not restart.
    checkpoint_every_rounds: int = Field(100, ge=1)
    max_failures: int = Field(1, ge=0)


class IngestSettings(BaseModel):
    """How the ingestion jobs retry a failed source read (a failed attempt leaves no trace)."""

    max_attempts: int = Field(3, ge=1)
    retry_backoff_s: float = Field(2.0, ge=0)


# full: the server's certificate chains to the CA and names the host we dialled; ca: chains to
# the CA only (servers reached by an address their certificate does not name); none: encrypted
# but unauthenticated, open to a man in the middle (never for production).
TlsVerify = Literal["full", "ca", "none"]


class TlsSettings(BaseModel):
    """TLS from one of our clients to one server (PostgreSQL, Redis, MongoDB or Kafka).

    ``churn_core.tls`` turns it into each client library's options. The files are checked
    when a client is built, not here: settings load where the files are not mounted (tests,
    tools, a driver that never opens this connection).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    # PEM bundle of the CA(s) that sign the server's certificate; unset: the system's trust store.
    ca_file: Path | None = None
    # Our client certificate (PEM) for servers that require one (mutual TLS), and its
    # unencrypted key; key_file unset means the key is in cert_file (what pymongo needs).
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: TlsVerify = "full"

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Clients run in Ray workers and Sail whose working directory is not the project
        # root, so a relative path would name different files in different processes.
        if value is not None and not value.is_absolute():
            raise ValueError(f"must be an absolute path, got {str(value)!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TlsSettings:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file is set but cert_file is not (the key of which certificate?)")
        if self.enabled and self.verify == "ca" and self.ca_file is None:
            # Skipping the host name check is only safe against a private CA of our own.
            raise ValueError("verify 'ca' needs ca_file (the private CA to check against)")
        return self


class FileSourceSettings(BaseModel):
    """A source read from files under ``raw_dir`` (the embedded default, and the sample data)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["files"] = "files"


class PostgresSourceSettings(BaseModel):
    """A table read incrementally from PostgreSQL by an ``updated_at``-style watermark column."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["postgres"] = "postgres"
    # postgresql://user:password@host:port/database; secret because it may carry a password.
    url: SecretStr
    table: str
    watermark_column: str = "updated_at"
    # Re-read this far behind the last watermark: a transaction that commits late can carry an
    # updated_at older than rows already read. Re-read rows that did not change add nothing.
    watermark_overlap_s: float = Field(60.0, ge=0)
    # Rows per read are bounded by the watermark range; partitions split the read over cores.
    num_partitions: int = Field(1, ge=1)
    # TLS to the server, for psycopg in the driver and for the engine's JDBC reads.
    tls: TlsSettings = Field(default_factory=TlsSettings)


class KafkaSourceSettings(BaseModel):
    """A Kafka topic read by partition and offset; offsets are kept in the bronze table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["kafka"] = "kafka"
    bootstrap_servers: str
    topic: str
    # Upper bound of one batch per partition, so a backlog is ingested in bounded commits.
    max_records_per_partition: int = Field(2_000_000, ge=1)
    # A partition counts as caught up when no message arrives for this long (a broker's high
    # watermark is not trusted: Tansu reported it below the real end).
    idle_timeout_s: float = Field(2.0, gt=0)
    # If set, offsets are also committed to this group after each Delta commit, for lag
    # dashboards only; the bronze table stays the source of truth for where to resume.
    consumer_group: str | None = None
    # TLS to the brokers (security.protocol SSL), for every consumer, producer and admin client.
    tls: TlsSettings = Field(default_factory=TlsSettings)


class RestSourceSettings(BaseModel):
    """Where a paginated REST source lives, how to authenticate, and how hard to retry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["rest"] = "rest"
    base_url: str
    path: str = "/support/records"
    auth_header: str = "Authorization"
    token: SecretStr | None = None
    allowed_hosts: list[str]
    timeout_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    backoff_initial_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    records_field: str = "records"
    max_pages: int = Field(default=100_000, ge=1)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("base_url must be an absolute http(s) URL with a host")
        # Credentials in the URL would end up in every error message and log line.
        if url.username or url.password:
            raise ValueError("base_url must not carry credentials; use token instead")
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _normalise_hosts(cls, value: list[str]) -> list[str]:
        # Hostnames are case-insensitive; httpx lowercases the host it parses.
        return [host.strip().lower() for host in value]


SourceSettings = Annotated[
    FileSourceSettings | PostgresSourceSettings | KafkaSourceSettings | RestSourceSettings,
    Field(discriminator="kind"),
]


class RegistrySettings(BaseModel):
    """Model registry: where artifacts and metadata live, the model name, the promotion gates.

    Artifacts (model, contract, report files) go to a pyarrow file system URI; metadata
    (versions, aliases and their history, metric history) to JSON files under ``root`` or to
    MongoDB. The defaults keep everything under ``root`` so a bare laptop needs no server.
    """

    # JSON metadata store location, and the artifact location when artifact_uri is unset.
    root: Path = Path("var/registry")
    model_name: str | None = None  # default: churn-<dataset>
    metadata: Literal["files", "mongodb"] = "files"
    # A pyarrow.fs URI (s3://bucket/prefix, gs://..., file:///abs/path) or a local path
    # (relative paths are resolved against the project root). S3 credentials come from the
    # usual AWS variables, never from here: a URI ends up in log lines.
    artifact_uri: str | None = None
    # mongodb://user:password@host:port/?authSource=admin; secret because it may carry a password.
    mongodb_url: SecretStr | None = None
    mongodb_database: str = "churn_registry"
    # How long a registry call waits for an unreachable MongoDB before failing with one line.
    mongodb_timeout_s: float = Field(5.0, gt=0)
    mongodb_tls: TlsSettings = Field(default_factory=TlsSettings)
    # Promotion gates (a YAML file validated by churn_core.promotion).
    gates_path: Path = Path("configs/promotion.yaml")

    @model_validator(mode="after")
    def _mongodb_needs_url(self) -> RegistrySettings:
        if self.metadata == "mongodb" and self.mongodb_url is None:
            raise ValueError(
                "registry.metadata is 'mongodb' but registry.mongodb_url is not set "
                "(e.g. CHURN_REGISTRY__MONGODB_URL=mongodb://host:27017)"
            )
        return self


Role = Literal["viewer", "predictor", "admin"]


class PrincipalSettings(BaseModel):
    """An API client (client-credentials grant) or a user (password grant)."""

    model_config = ConfigDict(extra="forbid")

    # argon2 hash of the client secret or password (``churn auth hash`` prints one).
    secret_hash: str
    roles: list[Role] = Field(min_length=1)
    # customer_id prefixes this principal may score by id; "*" is every customer.
    customer_scope: list[str] = Field(default_factory=lambda: ["*"])
    # Requests per rate-limit window; None uses ``serve.rate_limit.requests``.
    rate_limit: int | None = Field(None, ge=1)


class AuthSettings(BaseModel):
    """OAuth2 token endpoint and JWT verification.

    Keys live in ``keys_dir`` as ``<kid>.secret`` (HS256) or ``<kid>.pem`` + ``<kid>.pub.pem``
    (RS256), so a Kubernetes Secret mounted as a folder rotates them: add the new key, point
    ``active_kid`` at it, remove the old one once its tokens have expired.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    issuer: str = "churn-api"
    audience: str = "churn-api"
    algorithm: Literal["HS256", "RS256"] = "HS256"
    token_ttl_s: int = Field(900, ge=1, le=86_400)
    keys_dir: Path = Path("var/keys")
    active_kid: str = "dev-1"
    # Local and test only: create the active key if it is missing.
    create_missing_key: bool = False
    # YAML file mapping ``clients:`` and ``users:`` names to PrincipalSettings.
    principals_path: Path = Path("configs/auth/local.yaml")


class RateLimitSettings(BaseModel):
    """Per-client fixed-window rate limit (in Redis, per replica when Redis is down)."""

    model_config = ConfigDict(extra="forbid")

    requests: int = Field(6_000, ge=1)
    window_s: int = Field(60, ge=1)


class OnlineStoreSettings(BaseModel):
    """Where ``/predict`` by customer_id finds features: Redis first, then PostgreSQL."""

    model_config = ConfigDict(extra="forbid")

    redis_url: SecretStr | None = None
    postgres_url: SecretStr | None = None
    key_prefix: str = "churn:features"
    table: str = "online_features"
    # How long a lookup waits for a PostgreSQL connection before answering 503.
    postgres_timeout_s: float = Field(1.0, gt=0)
    # TLS to each store; ``churn materialize`` writes with the same settings.
    redis_tls: TlsSettings = Field(default_factory=TlsSettings)
    postgres_tls: TlsSettings = Field(default_factory=TlsSettings)


class ServeSettings(BaseModel):
    """Serve application: config file, address, limits, cache, auth and the online store."""

    config_path: Path = Path("configs/serve/local.yaml")
    host: str = "127.0.0.1"
    port: int = 8000
    # haproxy: HAProxy on ``port`` balances straight to each replica's own HTTP server (Ray's
    # direct ingress; ~10x the throughput of the Python proxy on 2 cores). proxy: Ray's proxy.
    ingress: Literal["haproxy", "proxy"] = "haproxy"
    # HAProxy's stats and metrics ports (Ray's defaults 8404 and 9101 clash on shared hosts).
    haproxy_stats_port: int = 8404
    haproxy_metrics_port: int = 9101
    # A stopping replica keeps answering this long while HAProxy (updated by Ray, on the same
    # node) drops it; Ray's 30 s default is for external load balancers and made every
    # shutdown wait 30 s.
    drain_s: float = Field(3.0, ge=0)
    alias: str = "champion"
    max_batch_records: int = Field(1_000, ge=1)
    max_body_bytes: int = Field(2_000_000, ge=1_024)
    top_reasons: int = Field(3, ge=0)
    # Used only when the model version records no threshold of its own.
    threshold: float = Field(0.5, gt=0, lt=1)
    # Inside Serve, concurrent /predict cache misses are scored together (@serve.batch): one
    # model call for up to this many rows, waiting at most batch_wait_s for them (1: off).
    batch_max_size: int = Field(16, ge=1, le=1_000)
    batch_wait_s: float = Field(0.001, ge=0, le=1)
    # How often a replica checks whether the alias moved (0: never; admin reload still works).
    reload_interval_s: float = Field(10.0, ge=0)
    # Prediction cache and rate limits; None keeps both in the replica's memory.
    redis_url: SecretStr | None = None
    redis_tls: TlsSettings = Field(default_factory=TlsSettings)
    redis_timeout_s: float = Field(0.25, gt=0)
    # HTTPS without an ingress in front: the server's certificate chain and key (PEM; relative
    # paths from the project root). Plain uvicorn (serve_apps/standalone.py) and Ray's proxy
    # (ingress: proxy) terminate TLS with them; Ray 2.60's HAProxy frontend cannot (it binds
    # without ``ssl``), so ingress: haproxy refuses them. Unset: plain HTTP (TLS at the Ingress).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    cache_ttl_s: int = Field(300, ge=0)
    cors_origins: list[str] = Field(default_factory=list)
    # The web dashboard's static build (``make dashboard`` writes it), served under ``/ui``;
    # relative paths are resolved against the project root. Missing: the API still starts, and
    # ``/readyz`` and the log say the dashboard is not built.
    ui_dir: Path = Path("dashboard/dist")
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    online_store: OnlineStoreSettings = Field(default_factory=OnlineStoreSettings)

    @model_validator(mode="after")
    def _tls_pair(self) -> ServeSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("serve.tls_cert_file and serve.tls_key_file go together")
        return self


class SmtpSettings(BaseModel):
    """SMTP server, credentials and addresses of the email alert channel."""

    # Validation errors would otherwise echo the raw input, password included.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    host: str
    port: int = Field(25, ge=1, le=65_535)
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = False
    use_ssl: bool = False
    sender: str
    recipients: list[str] = Field(min_length=1)
    timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _check_consistency(self) -> SmtpSettings:
        if self.starttls and self.use_ssl:
            raise ValueError("smtp: set starttls or use_ssl, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("smtp: username and password go together")
        return self


class SlackSettings(BaseModel):
    """Slack incoming webhook of the Slack alert channel."""

    # Validation errors would otherwise echo the raw input, i.e. the webhook URL.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    # The URL is the credential: anyone holding it can post.
    webhook_url: SecretStr
    timeout_s: float = Field(10.0, gt=0)
    # Only legacy webhooks honour a channel override; app webhooks post where they were made.
    channel: str | None = None
    # Wait before the one retry when the server sends no Retry-After, and the cap on any wait,
    # so a slow Slack cannot stall a monitoring run.
    retry_wait_s: float = Field(1.0, ge=0)
    max_retry_wait_s: float = Field(5.0, ge=0)

    @field_validator("webhook_url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        from urllib.parse import urlsplit

        url = urlsplit(value.get_secret_value())
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("slack.webhook_url must be an absolute http(s) URL")
        return value


class AlertSettings(BaseModel):
    """Where alerts go and how long the same problem stays quiet after being sent."""

    # The outermost model decides whether errors echo input, so it must hide it too.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    cooldown_s: float = Field(3600.0, ge=0)
    smtp: SmtpSettings | None = None
    slack: SlackSettings | None = None
    # Last send time per alert fingerprint, so the cooldown holds across job runs.
    state_path: Path = Path("var/monitoring/alert_state.json")


class PredictionLogSettings(BaseModel):
    """The Delta prediction log every replica and batch job appends to.

    Rows are buffered in memory and written by a background thread every ``flush_interval_s``
    or ``flush_rows`` rows, never on a request's path; a write that fails goes to ``spool_dir``
    on local disk and is replayed (exactly once, by prediction id) on the next flush.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    flush_rows: int = Field(5_000, ge=1)
    flush_interval_s: float = Field(2.0, gt=0)
    # Above this many buffered rows (the table unreachable for long) batches go to the spool.
    max_buffer_rows: int = Field(200_000, ge=1)
    spool_dir: Path = Path("var/prediction_spool")
    # How long closing a writer may take to write what is buffered before spooling it.
    close_timeout_s: float = Field(10.0, gt=0)


class MonitoringSettings(BaseModel):
    """Prediction log, drift and accuracy jobs, where their results and metrics go, alerts."""

    model_config = ConfigDict(extra="forbid")

    # Drift thresholds and minimum sample sizes (the ``drift:`` section), as data.
    thresholds_path: Path = Path("configs/monitoring.yaml")
    prediction_log: PredictionLogSettings = Field(default_factory=PredictionLogSettings)
    # The current window of a drift run: the prediction log's last ``drift_window_hours``,
    # at most ``drift_max_rows`` of its newest rows.
    drift_window_hours: float = Field(24.0, gt=0)
    drift_max_rows: int = Field(200_000, ge=1)
    # Training rows stored with each model version as the drift reference (``reference.parquet``,
    # a seeded sample of the training split). 20,000 rows put PSI's sampling noise on the
    # reference side (~bins / n) at 0.0005, negligible next to the current window's.
    reference_max_rows: int = Field(20_000, ge=1)
    # Batch jobs push their metrics here (a Prometheus Pushgateway); unset: written as text
    # files under ``metrics_dir`` (node_exporter's textfile format).
    pushgateway_url: str | None = None
    metrics_dir: Path = Path("var/metrics")
    # Drift and accuracy results also go to MongoDB when set (always to Delta).
    mongodb_url: SecretStr | None = None
    mongodb_database: str = "churn_monitoring"
    mongodb_timeout_s: float = Field(5.0, gt=0)
    mongodb_tls: TlsSettings = Field(default_factory=TlsSettings)
    # Accuracy job (monitoring/accuracy.py): logged predictions joined to the labels that have
    # arrived since. Results per model version and per week or month of ``as_of``.
    accuracy_period: Literal["week", "month"] = "month"
    # Only predictions logged in the last N days are read; None reads the whole log. Labels
    # mature a horizon after ``as_of``, so keep this well above the contract's horizon_days.
    accuracy_lookback_days: int | None = Field(None, ge=1)
    # A version's ROC-AUC alerts (and is exported as churn_model_roc_auc, which Prometheus
    # alerts on) only with at least this many labelled predictions and this many churners
    # among them: with 50 churners the AUC's standard error is ~0.03, so a drop of more than
    # the tolerance below is rarely sampling noise.
    accuracy_min_labels: int = Field(1_000, ge=1)
    accuracy_min_positives: int = Field(50, ge=1)
    # Alert when the measured ROC-AUC is below the version's registration (test split) ROC-AUC
    # minus this much.
    accuracy_drop_tolerance: float = Field(0.05, ge=0, le=1)
    alerts: AlertSettings = Field(default_factory=AlertSettings)


class BackupSettings(BaseModel):
    """Where ``churn backup`` writes, how many backups it keeps, and the PostgreSQL tools it runs.

    Retention runs after each successful backup: a complete backup is deleted once it is
    outside both ``keep_last`` (the newest N) and ``keep_days`` (younger than N days); a rule
    left unset keeps nothing by itself, both unset keep everything.
    """

    model_config = ConfigDict(extra="forbid")

    # A pyarrow.fs URI (s3://bucket/prefix, file:///abs/path) or a local path (relative paths
    # are resolved against the project root). Credentials come from the usual variables of the
    # file system (AWS_*), never from here: a URI ends up in log lines and in the manifest.
    root: str = "var/backups"
    keep_last: int | None = Field(7, ge=1)
    keep_days: float | None = Field(None, gt=0)
    # Files copied at once (object stores reward parallel requests; a local disk does not mind).
    workers: int = Field(4, ge=1, le=64)
    # pg_dump must be at least the server's major version: point these at the matching binaries
    # (e.g. /usr/lib/postgresql/16/bin/pg_dump) when the server is newer than the client here.
    pg_dump: str = "pg_dump"
    pg_restore: str = "pg_restore"
    # Upper bound of one pg_dump or pg_restore run.
    pg_timeout_s: float = Field(3600.0, gt=0)


class EncryptionSettings(BaseModel):
    """Encryption at rest of backups and registry artifacts (``churn_core/encryption.py``).

    AES-256-GCM under a random data key per file, wrapped by a key-encryption key from here.
    Keys are ``"kid:base64,kid:base64"`` (``churn encryption keygen`` prints one), given as
    ``keys`` (a secret: ``CHURN_ENCRYPTION__KEYS``, never in YAML) or in ``keys_file`` (a
    mounted Secret; read when a key is first needed). Rotation: add the new key, point
    ``active_key_id`` at it; keep the old ones while files encrypted with them exist.
    """

    # Validation errors would otherwise echo the raw input, i.e. the keys.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    keys: SecretStr | None = None
    keys_file: Path | None = None
    # The key new files are encrypted with; may be left unset when there is only one key.
    active_key_id: str | None = None
    # Every file of a new backup is encrypted; restore then refuses unencrypted backups.
    backups: bool = False
    # Model artifacts (model.ubj, contract, reports) are encrypted when registered.
    registry: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> EncryptionSettings:
        if self.keys is not None and self.keys_file is not None:
            raise ValueError("set encryption.keys or encryption.keys_file, not both")
        if self.registry and not self.backups:
            # Backups read artifacts through the registry: they would hold them decrypted.
            raise ValueError(
                "encryption.registry is on but encryption.backups is off: backups would hold "
                "the model artifacts decrypted; turn both on"
            )
        if self.keys is not None:
            # Imported here: loading settings without keys never loads the crypto library.
            from churn_core.encryption import EncryptionError, KeyRing, parse_keys

            try:
                KeyRing(parse_keys(self.keys.get_secret_value()), self.active_key_id)
            except EncryptionError as error:
                raise ValueError(str(error)) from None
        # Missing keys are reported when a key is first needed, not here: settings also load
        # where the Secret is not mounted (tests, tools, `churn --help`).
        return self


class ScoringSettings(BaseModel):
    """Batch scoring (``churn score``): every customer of a gold snapshot, scored by an alias.

    Scores go to the Delta scores table (one slice per snapshot and model version), each
    customer's current risk to PostgreSQL when ``postgres_url`` is set, and every score to the
    prediction log when ``monitoring.prediction_log.enabled``.
    """

    # Validation errors would otherwise echo the raw input, i.e. the PostgreSQL URL.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    # The registry alias whose version scores (resolved once per run).
    alias: str = "champion"
    # spark: mapInArrow on the configured Spark (embedded Sail by default). ray: Ray Data.
    engine: Literal["spark", "ray"] = "spark"
    # Reasons per customer (the largest SHAP contributions); None: serve.top_reasons, so batch
    # scores and API answers name as many reasons.
    top_reasons: int | None = Field(None, ge=0)
    # exact: TreeSHAP, the same reasons the API gives (~120 us a row for 300 depth-3 trees
    # here); approximate: Saabas, ~15x faster, the same top feature for ~80% of rows;
    # none: no reasons (the table's reasons column stays null).
    reasons: Literal["exact", "approximate", "none"] = "exact"
    # XGBoost threads per scoring worker (Spark partition or Ray actor); 1 because the
    # engine already runs one worker per core.
    model_threads: int = Field(1, ge=1)
    # Ray Data path. tasks: a function in Ray's pooled worker processes, which keep the model
    # cached between runs of one driver; actors: a callable class, new actors (processes,
    # imports, model load) for every run.
    ray_compute: Literal["tasks", "actors"] = "tasks"
    # Scoring workers at once, and CPUs each reserves. Fractional by default, so the workers
    # never starve the driver's Delta write of a CPU on a small machine.
    ray_workers: int = Field(2, ge=1)
    ray_cpus_per_worker: float = Field(0.5, gt=0)
    # Current risk per customer for applications: postgresql://user:password@host/db (secret:
    # it may carry a password); unset: no PostgreSQL table is written.
    postgres_url: SecretStr | None = None
    postgres_table: str = "customer_scores"
    # How long connecting to PostgreSQL may take before the job fails with one line.
    postgres_timeout_s: float = Field(10.0, gt=0)
    postgres_tls: TlsSettings = Field(default_factory=TlsSettings)


# TimedRotatingFileHandler's ``when`` values (W0-W6: weekly on that weekday).
RotationWhen = Literal["S", "M", "H", "D", "midnight", "W0", "W1", "W2", "W3", "W4", "W5", "W6"]


class LogFileSettings(BaseModel):
    """JSON-lines log files, rotated by size and/or time (``churn_core.logging``).

    ``path`` is a template: ``{component}`` (cli, serve, ray-worker) and ``{pid}`` are filled in
    per process. Keep ``{pid}`` when several processes of one component share a host (Serve
    replicas, Ray workers): the standard library's handlers rotate per process, and two
    processes rotating one file lose lines. Files of ended processes are deleted once they
    have not been written for ``keep_days``.
    """

    model_config = ConfigDict(extra="forbid")

    # Unset: no file logs (stderr only).
    path: str | None = None
    # Roll over when the next line would pass this size; 0: never by size.
    max_bytes: int = Field(50_000_000, ge=0)
    # Roll over at this time boundary (UTC); None: never by time.
    when: RotationWhen | None = "midnight"
    interval: int = Field(1, ge=1)
    # Rotated files kept per process, beside the live one.
    backup_count: int = Field(7, ge=0)
    keep_days: float = Field(7.0, gt=0)

    @field_validator("path")
    @classmethod
    def _known_placeholders(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            value.format(component="c", pid=1)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"logging.file.path may use {{component}} and {{pid}} only ({error})"
            ) from None
        return value


class LoggingSettings(BaseModel):
    """Where log lines go besides stderr (level and format: ``log_level``, ``log_json``)."""

    model_config = ConfigDict(extra="forbid")

    file: LogFileSettings = Field(default_factory=LogFileSettings)


class Settings(BaseSettings):
    """All settings of one environment."""

    model_config = SettingsConfigDict(
        env_prefix="CHURN_", env_nested_delimiter="__", extra="forbid"
    )

    env: str = "local"
    root: Path = Path(".")
    dataset: str = "saas"
    contracts_dir: Path = Path("configs/contracts")
    raw_dir: Path = Path("var/raw/saas")
    lake_dir: Path = Path("var/lake")
    log_level: str = "INFO"
    log_json: bool = False
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    sample: SampleSettings = Field(default_factory=SampleSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    backup: BackupSettings = Field(default_factory=BackupSettings)
    encryption: EncryptionSettings = Field(default_factory=EncryptionSettings)
    # Where each contract source is read from; a source not listed here is read from files.
    sources: dict[str, SourceSettings] = Field(default_factory=dict)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        levels = {"DEBUG", "INFO", "WARNING", "ERROR"}
        if value.upper() not in levels:
            raise ValueError(f"log_level must be one of {sorted(levels)}")
        return value.upper()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment variables beat the YAML files, which arrive as init kwargs.
        return (env_settings, init_settings)

    def resolve(self, path: Path) -> Path:
        """Return ``path`` made absolute against the project root."""
        return path if path.is_absolute() else (self.root / path).resolve()

    @property
    def contract_path(self) -> Path:
        """The feature contract file of the configured data set."""
        return self.resolve(self.contracts_dir) / f"{self.dataset}.yaml"

    @property
    def model_name(self) -> str:
        """Registry name of this data set's model."""
        return self.registry.model_name or f"churn-{self.dataset}"

    def source(self, name: str) -> SourceSettings:
        """Connection settings of contract source ``name`` (files under ``raw_dir`` by default)."""
        return self.sources.get(name, FileSourceSettings())

    @property
    def dataset_lake(self) -> Path:
        """Root of this data set's Delta tables."""
        return self.resolve(self.lake_dir) / self.dataset


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` laid over ``base``: mappings merged key by key, anything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return loaded


def load_settings(env: str | None = None, config_dir: Path | None = None) -> Settings:
    """Load settings for ``env`` (default ``CHURN_ENV`` or ``local``) from YAML and the environment."""
    env = env or os.environ.get("CHURN_ENV", "local")
    directory = config_dir or Path(os.environ.get("CHURN_CONFIG_DIR", PACKAGE_CONFIG_DIR))
    env_file = directory / f"{env}.yaml"
    if env != "base" and not env_file.exists():
        known = sorted(p.stem for p in directory.glob("*.yaml") if p.stem != "base")
        raise ValueError(f"unknown environment {env!r}: no {env_file} (known: {known})")
    unknown = unknown_setting_variables(os.environ)
    if unknown:
        # pydantic-settings drops a misspelt nested variable without a word, so a typo in a
        # deployment's environment would silently run on the YAML value.
        raise ValueError("; ".join(unknown))
    data = deep_merge(_read_yaml(directory / "base.yaml"), _read_yaml(env_file))
    data["env"] = env
    data.setdefault("root", str(Path.cwd()))
    return Settings(**data)


ENV_PREFIX = "CHURN_"
# CHURN_* variables that are not settings: read before settings exist, or by tools.
NON_SETTING_VARIABLES = frozenset(
    {
        "CHURN_ENV",
        "CHURN_CONFIG_DIR",
        "CHURN_FAILPOINTS",
        "CHURN_ACTOR",
        "CHURN_HEALTHCHECK_URL",
        "CHURN_KUBERAY_CRDS",
        # A scheduled job's run id (churn_core.scheduler), bound to its log lines as job_id.
        "CHURN_JOB_ID",
    }
)


def unknown_setting_variables(names: Iterable[str] | Mapping[str, str]) -> list[str]:
    """One message per ``CHURN_*`` name that names no setting (with a suggestion if close)."""
    problems = []
    for name in names:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in NON_SETTING_VARIABLES:
            continue
        path = upper[len(ENV_PREFIX) :].lower().split("__")
        if not _names_a_setting(Settings, path):
            hint = difflib.get_close_matches(upper, _setting_variable_names(), n=1)
            suggestion = f" (did you mean {hint[0]}?)" if hint else ""
            problems.append(f"{name} is not a setting{suggestion}")
    return problems


def _names_a_setting(annotation: Any, path: list[str]) -> bool:
    """Whether ``path`` (lower-case parts) leads to a field under ``annotation``."""
    if not path:
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        return _names_a_setting(get_args(annotation)[0], path)
    if origin in (Union, types.UnionType):
        return any(_names_a_setting(arg, path) for arg in get_args(annotation))
    if origin is dict:
        # A mapping's key is free (a source's name); the rest must fit its values.
        return _names_a_setting(get_args(annotation)[1], path[1:])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(path[0])
        return field is not None and _names_a_setting(field.annotation, path[1:])
    return False


def _setting_variable_names(annotation: Any = None, prefix: str = ENV_PREFIX) -> list[str]:
    """Every CHURN_* name of a leaf setting (mapping keys shown as ``<NAME>``)."""
    annotation = Settings if annotation is None else annotation
    origin = get_origin(annotation)
    if origin is Annotated:
        return _setting_variable_names(get_args(annotation)[0], prefix)
    if origin in (Union, types.UnionType):
        return [n for arg in get_args(annotation) for n in _setting_variable_names(arg, prefix)]
    if origin is dict:
        return _setting_variable_names(get_args(annotation)[1], f"{prefix}<NAME>__")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        names = []
        for key, field in annotation.model_fields.items():
            below = _setting_variable_names(field.annotation, f"{prefix}{key.upper()}__")
            names += below or [f"{prefix}{key.upper()}"]
        return names
    return []
