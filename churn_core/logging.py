"""One structured logging configuration, applied by entry points (never at import).

Every process logs the same way: the ``churn`` CLI and the jobs it runs, the Ray workers those
jobs start (Ray Train, Tune and Data tasks, through Ray's ``worker_process_setup_hook``), and
the Serve replicas (configured in the replica's constructor). In JSON mode a line is one object:
``timestamp`` (ISO 8601, UTC), ``level``, ``logger``, ``component``, ``event``, then the event's
fields and the correlation ids bound for it: ``request_id`` for an HTTP request, ``job`` and
``job_id`` for a run of a CLI job. Lines go to stderr (JSON or console) and, when
``logging.file.path`` is set, to a JSON-lines file rotated by size and time.

Before a line is written, :class:`Redactor` replaces secrets (by key name, and credentials inside
text: URL userinfo, bearer tokens, JWTs, ``password=...``) and customer attributes (the
contract's features and customer-table columns, personal-data keys, feature payloads) with
``[redacted]``. ``customer_id`` stays: an opaque id is what ties a log line to the prediction
log and to a support case, and it says nothing about the person by itself.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from churn_core.settings import LogFileSettings, Settings

REDACTED = "[redacted]"
# The variable a scheduler sets to hand a job its run id (bound to every line as job_id).
JOB_ID_VARIABLE = "CHURN_JOB_ID"
# Correlation ids we accept from outside (X-Request-ID, CHURN_JOB_ID): uuids, HAProxy's and
# Ray's ids, ULIDs. Anything else is replaced, so a client cannot stuff a log field.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

# Keys whose values are secrets, matched anywhere in the lower-cased key (client_secret,
# access_token, redis_password, Authorization). "pass" only as a whole word: "passed" is not.
_SECRET_KEY = re.compile(
    r"passw(or)?d|passphrase|(^|[-_])pass($|[-_])|secret|token|authori[sz]ation|api[-_]?key"
    r"|private[-_]?key|signing[-_]?key|credential|cookie|^dsn$"
)
# Personal data recognisable without a contract (matched on the lower-cased key).
PERSONAL_KEYS = frozenset(
    {
        "email",
        "e_mail",
        "email_address",
        "phone",
        "phone_number",
        "mobile",
        "first_name",
        "last_name",
        "full_name",
        "given_name",
        "family_name",
        "surname",
        "customer_name",
        "address",
        "street",
        "street_address",
        "postal_code",
        "postcode",
        "zip_code",
        "birth_date",
        "date_of_birth",
        "ssn",
        "national_id",
        "iban",
        "card_number",
        "ip_address",
    }
)
# Keys that carry a whole record (a request's features, a row): redacted unless they are a
# count (``records=5``).
PAYLOAD_KEYS = frozenset(
    {
        "features",
        "feature_values",
        "record",
        "records",
        "row",
        "payload",
        "body",
        "request_body",
        "response_body",
        "customer",
    }
)
# Fields the pipeline adds itself: never redacted, never rewritten.
_OWN_KEYS = frozenset({"timestamp", "level", "logger", "component", "pid", "job", "job_id"})
# Credentials inside free text (messages, exception strings, URLs in any field).
_TEXT_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # A URL's userinfo (everything before the @ of the host), user names too: they can be
    # personal. scheme://[redacted]@host keeps the rest of the URL for debugging.
    (re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/@]+@"), rf"\1{REDACTED}@"),
    (
        re.compile(
            r"(?i)([?&](?:password|passwd|pwd|token|access_token|secret|client_secret|api_?key"
            r"|sig|signature)=)[^&#\s]+"
        ),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), rf"\1 {REDACTED}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),
    (
        re.compile(
            r"(?i)(\b(?:password|passwd|pwd|client_secret|secret|access_token|refresh_token"
            r"|api_?key)[\"']?\s*[=:]\s*)(?:\"[^\"]*\"|'[^']*'|[^\s,;&'\"}]+)"
        ),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b"), REDACTED),
)
# Cheap pre-check: text without any of these cannot match a rule above.
_TEXT_TRIGGER = re.compile(r"(?i)@|bearer|basic|eyJ|pass|pwd|secret|token|key|sig")
_MAX_DEPTH = 4


def scrub_text(text: str) -> str:
    """``text`` with credentials (URL userinfo, tokens, ``password=...``) and emails redacted."""
    if not _TEXT_TRIGGER.search(text):
        return text
    for pattern, replacement in _TEXT_RULES:
        text = pattern.sub(replacement, text)
    return text


class Redactor:
    """A structlog processor: secrets and customer attributes out of every event.

    ``customer_fields`` are the contract's names (features, label, customer-table columns),
    matched exactly: a contract's ``Contract`` column must not hide every ``contract=`` field.
    Values are replaced, keys kept, so a reader sees that something was there.
    """

    def __init__(self, customer_fields: Iterable[str] = ()) -> None:
        self.customer_fields = frozenset(customer_fields)
        # Key -> rule; keys come from code, so the cache stays small.
        self._kinds: dict[str, str] = {}

    def __call__(self, logger: Any, method: str, event_dict: Any) -> Any:
        """Redact ``event_dict`` in place (structlog hands each processor its own dict)."""
        for key, value in event_dict.items():
            if key in _OWN_KEYS:
                continue
            event_dict[key] = self._value(key, value, 0)
        return event_dict

    def _kind(self, key: str) -> str:
        kind = self._kinds.get(key)
        if kind is None:
            lower = key.lower()
            if key in self.customer_fields or lower in PERSONAL_KEYS:
                kind = "customer"
            elif _SECRET_KEY.search(lower):
                kind = "secret"
            elif lower in PAYLOAD_KEYS:
                kind = "payload"
            else:
                kind = "plain"
            if len(self._kinds) < 4096:
                self._kinds[key] = kind
        return kind

    def _value(self, key: str, value: Any, depth: int) -> Any:
        kind = self._kind(key) if isinstance(key, str) else "plain"
        if value is None:
            return None
        if kind == "customer":
            return REDACTED
        # A count or a TTL under a secret-looking key (tokens=3, token_ttl_s=900) is no secret.
        if kind in ("secret", "payload") and not isinstance(value, bool | int | float):
            return REDACTED
        return self._clean(value, depth)

    def _clean(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return scrub_text(value)
        if isinstance(value, bool | int | float):
            return value
        if depth >= _MAX_DEPTH:
            return REDACTED
        if isinstance(value, Mapping):
            return {str(k): self._value(str(k), v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._clean(v, depth + 1) for v in value]
        # Anything else is rendered as text by the JSON renderer: scrub that text now.
        return scrub_text(str(value))


def is_valid_id(value: str | None) -> bool:
    """Whether ``value`` is an acceptable correlation id (X-Request-ID, CHURN_JOB_ID)."""
    return value is not None and _ID.fullmatch(value) is not None


def new_id() -> str:
    """A fresh correlation id (a uuid4 in hex)."""
    return uuid.uuid4().hex


def job_fields(job: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``job`` and ``job_id`` for a run: the scheduler's run id when it passed one, else new."""
    given = (os.environ if environ is None else environ).get(JOB_ID_VARIABLE)
    return {"job": job, "job_id": given if given and is_valid_id(given) else new_id()}


def contract_customer_fields(path: Path) -> frozenset[str]:
    """Customer attributes a contract declares: features, label, customer-table columns.

    The entity key stays loggable (see the module docstring). Read as plain YAML, not through
    :mod:`churn_core.contract`, so logging works even when the contract does not validate.
    """
    import yaml

    raw = yaml.safe_load(path.read_text()) or {}
    names: set[str] = {
        f["name"] for f in raw.get("features") or [] if isinstance(f, dict) and "name" in f
    }
    label = raw.get("label") or {}
    if isinstance(label, dict) and label.get("name"):
        names.add(str(label["name"]))
    for source in (raw.get("sources") or {}).values():
        if isinstance(source, dict) and source.get("role") == "entity":
            names.update(str(c) for c in source.get("columns") or {})
    names.discard(str(raw.get("entity_key")))
    return frozenset(names)


# Fields every line of this process carries (component, pid, job, job_id); set by
# LogSetup.apply. A processor reads them at log time, unlike contextvars, so lines from
# background threads (prediction-log writer, Spark callbacks) carry them too.
_PROCESS_FIELDS: dict[str, Any] = {}
# Leading keys of a JSON line, in this order, so lines read alike with or without jq.
_LEADING = ("timestamp", "level", "logger", "component", "event", "request_id", "job", "job_id")


def _add_process_fields(logger: Any, method: str, event_dict: Any) -> Any:
    for key, value in _PROCESS_FIELDS.items():
        event_dict.setdefault(key, value)
    return event_dict


def _leading_keys_first(logger: Any, method: str, event_dict: Any) -> Any:
    ordered = {k: event_dict[k] for k in _LEADING if k in event_dict}
    ordered.update(event_dict)
    return ordered


class _OncePerRecordFormatter(structlog.stdlib.ProcessorFormatter):
    """Formats a record once, however many handlers (stderr, file) share this formatter."""

    def format(self, record: logging.LogRecord) -> str:
        cached = record.__dict__.get("_churn_formatted")
        if cached is not None and cached[0] is self:
            return str(cached[1])
        text = super().format(record)
        record.__dict__["_churn_formatted"] = (self, text)
        return text


class SizeAndTimeRotatingFileHandler(logging.handlers.TimedRotatingFileHandler):
    """Rolls over at the time boundary (``when``/``interval``) or once ``max_bytes`` is reached.

    Rotated files are named like TimedRotatingFileHandler's (``<file>.<interval start>``); a
    second rollover in one interval (by size) adds ``.0001``, ``.0002``, ... instead of
    overwriting the first, and the names still sort oldest first, so ``backup_count`` keeps
    the newest ones.
    """

    def __init__(
        self,
        filename: str,
        max_bytes: int,
        when: str = "midnight",
        interval: int = 1,
        backup_count: int = 0,
    ) -> None:
        super().__init__(
            filename,
            when=when,
            interval=interval,
            backupCount=backup_count,
            encoding="utf-8",
            utc=True,
        )
        self.max_bytes = max_bytes

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        """Time boundary passed, or the next line would take the file past ``max_bytes``."""
        if super().shouldRollover(record):
            return True
        if self.max_bytes <= 0:
            return False
        if self.stream is None:
            self.stream = self._open()
        self.stream.seek(0, 2)
        size = self.stream.tell()
        # An empty file is never rotated, however long its first line.
        return size > 0 and size + len(self.format(record)) + 1 >= self.max_bytes

    def doRollover(self) -> None:
        """Rotate; a rollover by size keeps the pending time boundary where it was."""
        pending = self.rolloverAt
        by_time = int(time.time()) >= pending
        super().doRollover()
        if not by_time:
            self.rolloverAt = pending

    def rotation_filename(self, default_name: str) -> str:
        """The interval's name, or ``.NNNN`` past the highest one taken in this interval.

        Past the highest, not the first free: once backup_count has deleted the interval's
        first file, reusing its name would make the newest file sort as the oldest.
        """
        name = super().rotation_filename(default_name)
        folder, base = os.path.split(name)
        numbered = re.compile(re.escape(base) + r"\.(\d{4,})")
        taken = [
            int(found.group(1))
            for entry in os.listdir(folder or ".")
            if (found := numbered.fullmatch(entry))
        ]
        if not taken and not os.path.exists(name):
            return name
        return f"{name}.{max(taken, default=0) + 1:04d}"


def log_file_path(settings: LogFileSettings, component: str) -> Path:
    """This process's log file: ``settings.path`` with ``{component}`` and ``{pid}`` filled."""
    if settings.path is None:
        raise ValueError("logging.file.path is not set")
    return Path(settings.path.format(component=component, pid=os.getpid()))


def prune_log_files(settings: LogFileSettings, now: float | None = None) -> list[Path]:
    """Delete files of this template (any component, pid, rotation) idle for ``keep_days``.

    Each process rotates only its own file, so the files of ended processes (a CLI run, a
    replaced replica) would stay forever without this. Returns what was deleted.
    """
    if settings.path is None:
        return []
    template = Path(settings.path)
    pattern = template.name.format(component="*", pid="*") + "*"
    cutoff = (time.time() if now is None else now) - settings.keep_days * 86_400
    deleted = []
    for candidate in template.parent.glob(pattern):
        try:
            if candidate.is_file() and candidate.stat().st_mtime < cutoff:
                candidate.unlink()
                deleted.append(candidate)
        except FileNotFoundError:  # another process pruned it first
            continue
    return deleted


def open_log_file(settings: LogFileSettings, component: str) -> logging.Handler:
    """A handler writing ``component``'s file, rotated as ``settings`` say (stdlib handlers).

    Size and time: :class:`SizeAndTimeRotatingFileHandler`; size only: RotatingFileHandler;
    time only: TimedRotatingFileHandler (UTC); neither: a plain FileHandler.
    """
    path = log_file_path(settings, component)
    path.parent.mkdir(parents=True, exist_ok=True)
    prune_log_files(settings)
    name = str(path)
    if settings.max_bytes and settings.when:
        return SizeAndTimeRotatingFileHandler(
            name, settings.max_bytes, settings.when, settings.interval, settings.backup_count
        )
    if settings.max_bytes:
        return logging.handlers.RotatingFileHandler(
            name, maxBytes=settings.max_bytes, backupCount=settings.backup_count, encoding="utf-8"
        )
    if settings.when:
        return logging.handlers.TimedRotatingFileHandler(
            name,
            when=settings.when,
            interval=settings.interval,
            backupCount=settings.backup_count,
            encoding="utf-8",
            utc=True,
        )
    return logging.FileHandler(name, encoding="utf-8")


# Handlers installed by the last LogSetup.apply (closed when the next one replaces them), and
# that setup itself (replayed in Ray workers).
_INSTALLED: list[logging.Handler] = []
_CURRENT: LogSetup | None = None


@dataclass(frozen=True)
class LogSetup:
    """Everything one process's logging needs; plain data, so it travels to Ray processes."""

    level: str = "INFO"
    json: bool = False
    component: str = "churn"
    file: LogFileSettings | None = None
    customer_fields: frozenset[str] = frozenset()
    # Added to every line of the process (job, job_id).
    fields: Mapping[str, str] = field(default_factory=dict)

    def for_component(self, component: str, **fields: str) -> LogSetup:
        """The same setup for another kind of process (``serve``, ``ray-worker``)."""
        return replace(self, component=component, fields={**self.fields, **fields})

    def apply(self) -> None:
        """Route stdlib and structlog records of this process through this setup."""
        global _CURRENT
        redactor = Redactor(self.customer_fields)
        shared: list[structlog.typing.Processor] = [
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        ]
        structlog.configure(
            processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )
        # Redaction runs in the formatter, i.e. on stdlib records of every library too, and
        # after exceptions are rendered to text, so a URL in a traceback is scrubbed as well.
        json_formatter = _OncePerRecordFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _add_process_fields,
                structlog.processors.format_exc_info,
                redactor,
                _leading_keys_first,
                structlog.processors.JSONRenderer(default=str),
            ],
        )
        stderr = logging.StreamHandler(sys.stderr)
        if self.json:
            stderr.setFormatter(json_formatter)
        else:
            stderr.setFormatter(
                _OncePerRecordFormatter(
                    foreign_pre_chain=shared,
                    processors=[
                        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.format_exc_info,
                        redactor,
                        structlog.dev.ConsoleRenderer(colors=False),
                    ],
                )
            )
        handlers: list[logging.Handler] = [stderr]
        file_error: OSError | None = None
        if self.file is not None and self.file.path:
            try:
                handler = open_log_file(self.file, self.component)
            except OSError as error:
                # An unwritable log folder must not stop a replica or a Ray worker (a failing
                # setup hook fails every task): stderr still gets every line, and says why.
                file_error = error
            else:
                # Files are for machines: always JSON, whatever stderr shows.
                handler.setFormatter(json_formatter)
                handlers.append(handler)
        _PROCESS_FIELDS.clear()
        # pid tells apart the processes that share one stream (a pod's stdout, a Ray node).
        _PROCESS_FIELDS.update({"component": self.component, "pid": os.getpid(), **self.fields})
        root = logging.getLogger()
        for old in _INSTALLED:
            if old in root.handlers:
                root.removeHandler(old)
            old.close()
        root.handlers[:] = handlers
        _INSTALLED[:] = handlers
        root.setLevel(self.level)
        # Chatty libraries: their INFO lines drown the job summaries (httpx's print URLs).
        for noisy in ("py4j", "pyspark", "urllib3", "filelock", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        _CURRENT = self
        if file_error is not None:
            get_logger(__name__).warning("log_file_unavailable", error=str(file_error))


def configure_logging(
    level: str = "INFO",
    json: bool = False,
    *,
    component: str = "churn",
    file: LogFileSettings | None = None,
    customer_fields: Iterable[str] = (),
    fields: Mapping[str, str] | None = None,
) -> None:
    """Route stdlib and structlog records through one renderer (JSON lines or console)."""
    LogSetup(
        level=level,
        json=json,
        component=component,
        file=file,
        customer_fields=frozenset(customer_fields),
        fields=dict(fields or {}),
    ).apply()


def log_setup(settings: Settings, component: str, **fields: str) -> LogSetup:
    """The setup ``settings`` describe for a process of ``component``.

    The file path template is made absolute here, so Ray workers and replicas (whose working
    directory is not the project root) write where the driver would.
    """
    file = settings.logging.file
    if file.path is not None:
        file = file.model_copy(update={"path": str(settings.resolve(Path(file.path)))})
    try:
        customer = contract_customer_fields(settings.contract_path)
    except (OSError, ValueError, AttributeError):
        # A missing or broken contract fails its own command with a clear line; logging
        # still redacts personal-data keys and secrets meanwhile.
        customer = frozenset()
    return LogSetup(
        level=settings.log_level,
        json=settings.log_json,
        component=component,
        file=file if file.path else None,
        customer_fields=customer,
        fields=fields,
    )


def configure_from_settings(settings: Settings, component: str, **fields: str) -> LogSetup:
    """Apply :func:`log_setup` for this process and return it."""
    setup = log_setup(settings, component, **fields)
    setup.apply()
    return setup


def current_setup() -> LogSetup | None:
    """The setup last applied in this process (None: logging was never configured)."""
    return _CURRENT


def ray_worker_hook() -> Callable[[], None] | None:
    """A ``worker_process_setup_hook`` giving Ray workers this process's logging.

    Ray captures a worker's stderr into its session log files; with this hook those lines
    are the same JSON (component ``ray-worker``, the driver's job and job_id) and go to the
    same log file template. None when this process never configured logging (tests).
    """
    setup = _CURRENT
    if setup is None:
        return None
    worker = setup.for_component("ray-worker")

    # A plain function (Ray names the hook by __name__ in its errors), pickled with its setup.
    def churn_worker_logging() -> None:
        worker.apply()

    return churn_worker_logging


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structured logger for ``name``."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
