"""Structured logging: one JSON line format, rotation, correlation ids, redaction.

The privacy tests here plant a secret and customer values on purpose and show both sides: the
scan (tests/log_scan.py, also used by the integration test) finds them when the redactor is
taken out, and finds nothing with it in place.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import structlog
from fastapi import FastAPI
from fastapi.testclient import TestClient

import churn_core.logging as churn_logging
from churn_core.logging import (
    JOB_ID_VARIABLE,
    REDACTED,
    Redactor,
    SizeAndTimeRotatingFileHandler,
    configure_logging,
    contract_customer_fields,
    get_logger,
    job_fields,
    prune_log_files,
    ray_worker_hook,
    scrub_text,
)
from churn_core.model import ChurnModel
from churn_core.settings import LogFileSettings, load_settings, unknown_setting_variables
from serve_apps.request_context import RequestContextMiddleware, note_request
from tests.log_scan import find_leaks, parse_json_lines, read_lines

PROJECT = Path(__file__).resolve().parents[2]
SAAS = PROJECT / "configs/contracts/saas.yaml"


@pytest.fixture(autouse=True)
def isolated_logging() -> Iterator[None]:
    """Each test configures logging for itself; the process gets its handlers back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in churn_logging._INSTALLED:
        handler.close()
    churn_logging._INSTALLED.clear()
    churn_logging._PROCESS_FIELDS.clear()
    churn_logging._CURRENT = None
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def file_settings(tmp_path: Path, **changes: Any) -> LogFileSettings:
    return LogFileSettings(path=str(tmp_path / "{component}-{pid}.jsonl")).model_copy(
        update=changes
    )


def log_files(tmp_path: Path) -> list[Path]:
    return sorted(p for p in tmp_path.iterdir() if p.name.startswith("cli-"))


def file_handler() -> logging.Handler:
    (handler,) = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    return handler


# --- the line format ---------------------------------------------------------------------------


def test_every_line_is_one_json_object_with_the_common_fields(tmp_path: Path) -> None:
    configure_logging(
        "INFO",
        json=True,
        component="cli",
        file=file_settings(tmp_path),
        fields=job_fields("ingest", {JOB_ID_VARIABLE: "run-42"}),
    )
    get_logger("pipelines.ingest").info("bronze_written", source="transactions", rows=12)
    logging.getLogger("some.library").warning("stdlib line %s", "formatted")
    with structlog.contextvars.bound_contextvars(request_id="req-1"):
        get_logger("x").error("with a request")
    try:
        raise RuntimeError("broken")
    except RuntimeError:
        get_logger("x").exception("failed")

    (path,) = log_files(tmp_path)
    assert path.name == f"cli-{os.getpid()}.jsonl"
    lines = parse_json_lines(read_lines([path]))
    assert [line["event"] for line in lines] == [
        "bronze_written",
        "stdlib line formatted",
        "with a request",
        "failed",
    ]
    for line in lines:
        assert list(line)[:5] == ["timestamp", "level", "logger", "component", "event"]
        stamp = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
        assert stamp.tzinfo is not None and stamp.utcoffset() == UTC.utcoffset(None)
        assert line["component"] == "cli" and line["pid"] == os.getpid()
        assert line["job"] == "ingest" and line["job_id"] == "run-42"
    assert lines[0]["logger"] == "pipelines.ingest" and lines[0]["rows"] == 12
    assert lines[1]["logger"] == "some.library" and lines[1]["level"] == "warning"
    assert lines[2]["request_id"] == "req-1" and "request_id" not in lines[3]
    assert "RuntimeError: broken" in lines[3]["exception"]


def test_stderr_shows_console_lines_while_the_file_stays_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", json=False, component="cli", file=file_settings(tmp_path))
    get_logger("x").info("hello", rows=3)
    err = capsys.readouterr().err
    assert "hello" in err and "rows=3" in err and not err.lstrip().startswith("{")
    (line,) = parse_json_lines(read_lines(log_files(tmp_path)))
    assert line["event"] == "hello" and line["rows"] == 3


def test_the_scheduler_run_id_becomes_the_job_id_when_well_formed() -> None:
    assert job_fields("train", {JOB_ID_VARIABLE: "0f3a-run.7"}) == {
        "job": "train",
        "job_id": "0f3a-run.7",
    }
    for bad in ("", "has space", "x" * 200, '{"inject": 1}'):
        made = job_fields("train", {JOB_ID_VARIABLE: bad})["job_id"]
        assert made != bad and re.fullmatch(r"[0-9a-f]{32}", made)
    assert job_fields("a", {})["job_id"] != job_fields("a", {})["job_id"]


def test_the_job_id_variable_is_not_taken_for_a_misspelt_setting() -> None:
    assert unknown_setting_variables([JOB_ID_VARIABLE]) == []


def test_a_scheduled_run_hands_its_id_to_every_step(tmp_path: Path) -> None:
    from churn_core.scheduler import ProcessRun

    seen = tmp_path / "seen"
    step = [
        sys.executable,
        "-c",
        f"import os; open({str(seen)!r}, 'a').write(os.environ[{JOB_ID_VARIABLE!r}] + '\\n')",
    ]
    run = ProcessRun([step, step], env={**os.environ, JOB_ID_VARIABLE: "run-7"}, job_id="run-7")
    deadline = time.monotonic() + 30
    while run.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert seen.read_text().split() == ["run-7", "run-7"] and run.job_id == "run-7"


def test_file_settings_come_from_the_environment_and_refuse_unknown_placeholders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHURN_LOGGING__FILE__PATH", "var/log/{component}-{pid}.jsonl")
    monkeypatch.setenv("CHURN_LOGGING__FILE__MAX_BYTES", "1000")
    settings = load_settings("test")
    assert settings.logging.file.path == "var/log/{component}-{pid}.jsonl"
    assert settings.logging.file.max_bytes == 1000
    with pytest.raises(ValueError, match="component"):
        LogFileSettings(path="var/log/{host}.jsonl")


# --- rotation -----------------------------------------------------------------------------------


def write_lines(count: int, start: int = 0) -> None:
    log = get_logger("rotation")
    for n in range(start, start + count):
        log.info("line", n=n, padding="x" * 80)


def numbers(paths: list[Path]) -> list[int]:
    return sorted(line["n"] for line in parse_json_lines(read_lines(paths)))


def test_size_rotation_keeps_backup_count_files_of_valid_json(tmp_path: Path) -> None:
    settings = file_settings(tmp_path, max_bytes=4_000, when=None, backup_count=3)
    configure_logging("INFO", json=True, component="cli", file=settings)
    assert type(file_handler()) is logging.handlers.RotatingFileHandler
    write_lines(300)
    live = tmp_path / f"cli-{os.getpid()}.jsonl"
    names = sorted(p.name for p in log_files(tmp_path))
    assert names == sorted([live.name] + [f"{live.name}.{n}" for n in (1, 2, 3)])
    assert all(p.stat().st_size <= 4_000 for p in log_files(tmp_path))
    kept = numbers(log_files(tmp_path))
    # The newest lines survive, contiguous up to the last one written; the oldest rotated away.
    assert kept == list(range(kept[0], 300)) and kept[0] > 0


def test_time_rotation_names_files_by_interval(tmp_path: Path) -> None:
    settings = file_settings(tmp_path, max_bytes=0, when="S", backup_count=5)
    configure_logging("INFO", json=True, component="cli", file=settings)
    handler = file_handler()
    assert type(handler) is logging.handlers.TimedRotatingFileHandler
    write_lines(5)
    assert isinstance(handler, logging.handlers.TimedRotatingFileHandler)
    handler.rolloverAt = int(time.time())  # the interval is over
    write_lines(5, start=5)
    rotated = [p for p in log_files(tmp_path) if p.suffix != ".jsonl"]
    assert len(rotated) == 1
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}", rotated[0].name.rsplit(".", 1)[1])
    assert numbers(rotated) == list(range(5)) and numbers(log_files(tmp_path)) == list(range(10))


def test_size_and_time_rotation_never_overwrites_within_an_interval(tmp_path: Path) -> None:
    settings = file_settings(tmp_path, max_bytes=3_000, when="midnight", backup_count=50)
    configure_logging("INFO", json=True, component="cli", file=settings)
    handler = file_handler()
    assert isinstance(handler, SizeAndTimeRotatingFileHandler)
    write_lines(200)
    live = f"cli-{os.getpid()}.jsonl"
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    names = [p.name for p in log_files(tmp_path)]
    assert f"{live}.{today}" in names and f"{live}.{today}.0001" in names
    assert len(names) > 5
    # Every line is still there, exactly once, and every file is valid JSON lines.
    assert numbers(log_files(tmp_path)) == list(range(200))
    pending = handler.rolloverAt
    assert pending > time.time()  # a size rollover does not move the midnight boundary
    handler.rolloverAt = int(time.time())
    write_lines(1, start=200)
    assert handler.rolloverAt > time.time() and numbers(log_files(tmp_path)) == list(range(201))


def test_size_and_time_rotation_deletes_the_oldest_beyond_backup_count(tmp_path: Path) -> None:
    settings = file_settings(tmp_path, max_bytes=3_000, when="midnight", backup_count=2)
    configure_logging("INFO", json=True, component="cli", file=settings)
    write_lines(200)
    files = log_files(tmp_path)
    assert len(files) == 3  # the live file and two rotated ones
    kept = numbers(files)
    assert kept == list(range(kept[0], 200)) and kept[0] > 0


def test_files_of_ended_processes_are_pruned_after_keep_days(tmp_path: Path) -> None:
    settings = file_settings(tmp_path, keep_days=2)
    old = tmp_path / "serve-111.jsonl.2026-01-01"
    recent = tmp_path / "serve-222.jsonl"
    other = tmp_path / "notes.txt"
    for path in (old, recent, other):
        path.write_text("x\n")
    three_days_ago = time.time() - 3 * 86_400
    os.utime(old, (three_days_ago, three_days_ago))
    os.utime(other, (three_days_ago, three_days_ago))
    assert prune_log_files(settings) == [old]
    assert recent.exists() and other.exists()


def test_an_unwritable_log_folder_leaves_stderr_logging_working(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    settings = LogFileSettings(path=str(blocker / "{component}-{pid}.jsonl"))
    configure_logging("INFO", json=True, component="ray-worker", file=settings)
    get_logger("x").info("still here")
    err = capsys.readouterr().err
    assert "log_file_unavailable" in err and "still here" in err


# --- redaction ----------------------------------------------------------------------------------


def redact(customer_fields: frozenset[str] = frozenset(), **event: Any) -> dict[str, Any]:
    result: dict[str, Any] = Redactor(customer_fields)(None, "info", dict(event))
    return result


def test_secret_keys_are_redacted_but_counts_and_ttls_are_not() -> None:
    out = redact(
        password="hunter2",  # pragma: allowlist secret
        client_secret="s3",  # pragma: allowlist secret
        access_token="abc",
        Authorization="Bearer abc.def",
        api_key="k",
        redis_password="p",
        signing_key=b"raw",
        tokens=3,
        token_ttl_s=900,
        passed=True,
        rows=10,
    )
    for key in ("password", "client_secret", "access_token", "Authorization", "api_key"):
        assert out[key] == REDACTED, key
    assert out["redis_password"] == REDACTED and out["signing_key"] == REDACTED
    assert (out["tokens"], out["token_ttl_s"], out["passed"], out["rows"]) == (3, 900, True, 10)


def test_credentials_inside_text_are_scrubbed_in_any_field_and_in_messages() -> None:
    cases = {
        "postgresql://churn:pg-pass@db:5432/crm": "postgresql://[redacted]@db:5432/crm",  # pragma: allowlist secret
        "redis://default:r3d1s@127.0.0.1:6379/0": "redis://[redacted]@127.0.0.1:6379/0",  # pragma: allowlist secret
        "mongodb://u:p@h/?authSource=admin": "mongodb://[redacted]@h/?authSource=admin",
        "GET https://api/x?page=2&token=abc123 failed": "GET https://api/x?page=2&token=[redacted] failed",
        "header Authorization: Bearer eyJhbGciOi.eyJzdWIiOi.c2ln": "header Authorization: Bearer [redacted]",
        "token eyJhbGciOiJI.eyJzdWIiOiJ4.sig-part_1 expired": "token [redacted] expired",
        'connect failed: password="p@ss w" (retry)': "connect failed: password=[redacted] (retry)",  # pragma: allowlist secret
        "mail jane.doe@example.com bounced": "mail [redacted] bounced",
    }
    for text, expected in cases.items():
        assert scrub_text(text) == expected
    out = redact(event="dsn postgresql://u:secret@h/db", target="redis://:pw@h:1/0")
    assert "secret" not in out["event"] and "pw" not in out["target"]
    assert scrub_text("no credentials in here: 41.37 C000000012") == (
        "no credentials in here: 41.37 C000000012"
    )


def test_customer_attributes_of_the_contract_are_redacted_but_the_id_is_kept() -> None:
    fields = contract_customer_fields(SAAS)
    assert {"monthly_fee", "plan", "age", "region", "autopay", "tenure_days"} <= fields
    assert {"signup_date", "cancelled_at", "updated_at", "churned"} <= fields
    assert "customer_id" not in fields and "amount" not in fields
    out = redact(
        fields,
        customer_id="C000000012",
        monthly_fee=41.37,
        age=52,
        plan="premium",
        email="jane@example.com",
        phone_number="+44 20 7946 0000",
        features={"tenure_days": 398, "plan": "basic"},
        records=[{"customer_id": "C1"}],
        batch={"monthly_fee": 1.5, "version": 3},
        records_written=7,
    )
    assert out["customer_id"] == "C000000012" and out["records_written"] == 7
    for key in ("monthly_fee", "age", "plan", "email", "phone_number", "features", "records"):
        assert out[key] == REDACTED, key
    assert out["batch"] == {"monthly_fee": REDACTED, "version": 3}


def test_objects_rendered_as_text_are_scrubbed_too() -> None:
    class Remote:
        def __str__(self) -> str:
            return "sc://user:pw@spark:15002"  # pragma: allowlist secret

    out = redact(remote=Remote(), error=ValueError("redis://:pw@h:6379 refused"))
    assert out == {
        "remote": "sc://[redacted]@spark:15002",
        "error": "redis://[redacted]@h:6379 refused",
    }


def planted_leak() -> dict[str, str]:
    """A secret and customer values, logged the ways code tends to leak them."""
    log = get_logger("leaky")
    planted_url = "redis://default:planted-redis-pw@127.0.0.1:6379/0"  # pragma: allowlist secret
    log.info("settings", redis_url=planted_url)
    log.info("scored", customer_id="C000000012", monthly_fee=41.37, region="north")
    logging.getLogger("lib").warning("auth header was Bearer plantedtoken123456")
    return {
        "redis password": "planted-redis-pw",  # pragma: allowlist secret
        "bearer token": "plantedtoken123456",
        "monthly fee": "41.37",
        "region": '"north"',
    }


def test_the_scan_finds_a_planted_leak_without_the_redactor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Redactor, "__call__", lambda self, logger, method, event: event)
    configure_logging(
        "INFO",
        json=True,
        component="cli",
        file=file_settings(tmp_path),
        customer_fields=contract_customer_fields(SAAS),
    )
    forbidden = planted_leak()
    leaks = find_leaks(read_lines(log_files(tmp_path)), forbidden)
    assert {leak.what for leak in leaks} == set(forbidden)


def test_the_redactor_removes_the_planted_leak(tmp_path: Path) -> None:
    configure_logging(
        "INFO",
        json=True,
        component="cli",
        file=file_settings(tmp_path),
        customer_fields=contract_customer_fields(SAAS),
    )
    forbidden = planted_leak()
    lines = read_lines(log_files(tmp_path))
    assert find_leaks(lines, forbidden) == []
    scored = parse_json_lines(lines)[1]
    assert scored["customer_id"] == "C000000012" and scored["monthly_fee"] == REDACTED


# --- Ray workers ------------------------------------------------------------------------------


def test_ray_workers_get_the_drivers_setup_as_their_own_component(tmp_path: Path) -> None:
    assert ray_worker_hook() is None  # logging never configured: Ray gets no hook
    configure_logging(
        "INFO",
        json=True,
        component="cli",
        file=file_settings(tmp_path),
        fields={"job": "train", "job_id": "run-9"},
    )
    hook = ray_worker_hook()
    assert hook is not None and hook.__name__ == "churn_worker_logging"
    # As Ray ships it to a worker process: pickled with cloudpickle, then called there.
    pickle.loads(cloudpickle.dumps(hook))()
    get_logger("training.train").info("round", n=1)
    worker_files = [p for p in tmp_path.iterdir() if p.name.startswith("ray-worker-")]
    (line,) = parse_json_lines(read_lines(worker_files))
    assert (line["component"], line["job"], line["job_id"]) == ("ray-worker", "train", "run-9")


# --- HTTP requests ----------------------------------------------------------------------------


def request_app(echo_header: bool = True) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/things/{name}")
    async def thing(name: str) -> dict[str, str]:
        get_logger("handler").info("inside")
        note_request(prediction_ids=["p-1", "p-2"], model_version=3)
        return {"name": name}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(RequestContextMiddleware, echo_header=echo_header)
    return app


def configured_lines(tmp_path: Path) -> list[dict[str, Any]]:
    return parse_json_lines(read_lines(log_files(tmp_path)))


def test_a_request_gets_an_id_bound_to_its_lines_and_returned(tmp_path: Path) -> None:
    configure_logging("INFO", json=True, component="cli", file=file_settings(tmp_path))
    with TestClient(request_app()) as client:
        given = client.get("/v1/things/a?email=x@y.org", headers={"X-Request-ID": "abc-123"})
        made = client.get("/v1/things/b", headers={"X-Request-ID": "no spaces allowed"})
        client.get("/healthz")
    assert given.headers["x-request-id"] == "abc-123"
    new = made.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", new)
    lines = configured_lines(tmp_path)
    inside = [line for line in lines if line["event"] == "inside"]
    assert [line["request_id"] for line in inside] == ["abc-123", new]
    requests = [line for line in lines if line["event"] == "http_request"]
    assert [line["request_id"] for line in requests] == ["abc-123", new]  # probes at DEBUG
    first = requests[0]
    assert first["route"] == "/v1/things/{name}" and first["path"] == "/v1/things/a"
    assert first["status"] == 200 and first["prediction_ids"] == ["p-1", "p-2"]
    assert first["model_version"] == 3 and first["duration_ms"] >= 0
    assert all("x@y.org" not in str(line) for line in lines)  # no query strings


def test_behind_serve_the_header_is_left_to_serve_unless_the_id_was_refused(
    tmp_path: Path,
) -> None:
    configure_logging("INFO", json=True, component="serve", file=file_settings(tmp_path))
    with TestClient(request_app(echo_header=False)) as client:
        accepted = client.get("/v1/things/a", headers={"X-Request-ID": "abc-123"})
        refused = client.get("/v1/things/a", headers={"X-Request-ID": "x" * 300})
    assert "x-request-id" not in accepted.headers
    assert re.fullmatch(r"[0-9a-f]{32}", refused.headers["x-request-id"])


def test_the_api_logs_each_prediction_with_its_request_and_nothing_private(
    tmp_path: Path, tiny_model: ChurnModel
) -> None:
    from serve_apps.api import create_api
    from serve_apps.runtime import build_runtime
    from tests.unit.test_api import MemorySource, meta, serve_settings, token

    # The tiny contract's features are the customer attributes here.
    configure_logging(
        "INFO",
        json=True,
        component="cli",
        file=file_settings(tmp_path),
        customer_fields={"usage", "plan", "autopay", "fee"},
    )
    runtime = build_runtime(
        serve_settings(tmp_path), MemorySource(tiny_model, {1: meta(1)}), lambda p: p
    )
    features = {"usage": 3.14159, "plan": "premium", "autopay": False, "fee": 37.4219}
    with TestClient(create_api(runtime)) as client:
        headers = token(client, "predictor-client")
        single = client.post(
            "/v1/predict",
            json={"customer_id": "C000000042", "features": features},
            headers={**headers, "X-Request-ID": "req-single"},
        )
        batch = client.post(
            "/v1/batch_predict", json={"records": [{"features": features}] * 3}, headers=headers
        )
    assert single.status_code == 200 and batch.status_code == 200
    requests = {
        line["route"]: line
        for line in configured_lines(tmp_path)
        if line["event"] == "http_request"
    }
    assert requests["/v1/predict"]["request_id"] == "req-single"
    assert requests["/v1/predict"]["prediction_ids"] == [single.json()["prediction_id"]]
    assert requests["/v1/batch_predict"]["request_id"] == batch.headers["x-request-id"]
    assert requests["/v1/batch_predict"]["prediction_ids"] == [
        p["prediction_id"] for p in batch.json()["predictions"]
    ]
    forbidden = {
        "client secret": "predictor-client-secret",  # pragma: allowlist secret
        "access token": headers["Authorization"].split()[1],
        "usage": "3.14159",
        "fee": "37.4219",
    }
    assert find_leaks(read_lines(log_files(tmp_path)), forbidden) == []
