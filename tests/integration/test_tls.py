"""TLS in transit against real servers on loopback, with certificates this test makes itself.

A CA of our own signs the servers' certificates and a client certificate; a second CA (never
trusted) signs a rogue server's. Each store runs here with TLS on a free port:

* Redis 7 (``--tls-port``, ``--port 0``: no plaintext at all);
* PostgreSQL, a throwaway cluster (``initdb``/``pg_ctl``, run as ``postgres`` when we are root:
  PostgreSQL refuses to run as root), ``hostssl`` only, one database requiring client certs;
* MongoDB protocol: SecantusDB with its own TLS and ``--tls-require-client-cert``;
* Kafka protocol: Tansu behind a TLS terminator of this test (Tansu 0.6's own ``--cert`` and
  ``--key`` cannot be given together, and ``--cert`` alone still speaks plaintext), so the
  handshake librdkafka makes is with Python's OpenSSL, which then forwards to the broker;
* the API: ``python -m serve_apps.standalone`` (plain uvicorn) with ``serve.tls_*``.

For each: the project's own client, built from settings, (a) works with the right CA, (b)
refuses a server its CA did not sign, with an error saying so, and (c) a server requiring
client certificates refuses a client without one. Servers are started in fixtures, awaited by
polling with a deadline, and stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pyarrow as pa
import pytest
import redis
from pydantic import SecretStr

from churn_core.backup.postgres import postgres_targets, relations
from churn_core.contract import FeatureContract
from churn_core.registry import LocalRegistry, MongoMetadataStore, RegistryError
from churn_core.settings import (
    KafkaSourceSettings,
    MonitoringSettings,
    PostgresSourceSettings,
    TlsSettings,
    load_settings,
)
from churn_core.tls import postgres_params, redis_options
from monitoring.drift_job import DriftJobError, write_results_mongo
from pipelines.sources.kafka import KafkaSourceError, list_partitions, produce_records
from pipelines.sources.postgres import PostgresSourceError, load_table, read_postgres_batch
from serve_apps.redis_link import RedisLink
from tests.fixtures.certs import Authority, Issued, make_authority
from tests.fixtures.kafka import TansuBroker
from tests.fixtures.mongo import secantus_binary

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
# What OpenSSL says when a chain does not lead to a trusted CA (Python and librdkafka alike).
UNTRUSTED = "certificate verify failed"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(ready: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll ``ready`` until it is true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s:g} s")
        time.sleep(0.02)


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on ``port``."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((HOST, port)) == 0


def stop_process(process: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """SIGTERM by PID, SIGKILL after ``timeout_s``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class Pki:
    """Our CA and what it signed, and a rogue CA with a server certificate of its own."""

    ca: Authority
    server: Issued
    # Signed by our CA, but for a name that is not the address the clients dial.
    wrong_name: Issued
    client: Issued
    rogue_ca: Authority
    rogue_server: Issued

    def tls(self, *, client: bool = False, **changes: Any) -> TlsSettings:
        """Client TLS settings trusting our CA (with our client certificate if ``client``)."""
        values: dict[str, Any] = {"enabled": True, "ca_file": self.ca.cert}
        if client:
            values.update(cert_file=self.client.cert, key_file=self.client.key)
        return TlsSettings(**{**values, **changes})


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    # Not under pytest's tmp_path: its folders are 0700 root, and PostgreSQL runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="churn-tls-"))
    folder.chmod(0o755)
    try:
        ca = make_authority(folder / "ca", "churn-test-ca")
        rogue = make_authority(folder / "rogue", "rogue-ca")
        yield Pki(
            ca=ca,
            server=ca.issue("server"),
            wrong_name=ca.issue("wrong-name", hosts=("db.example.internal",)),
            client=ca.issue("churn-client", client=True),
            rogue_ca=rogue,
            rogue_server=rogue.issue("server"),
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- Redis ---------------------------------------------------------------------------------------


class TlsRedis:
    """``redis-server`` answering only TLS on a free port."""

    def __init__(self, cert: Issued, ca: Path, *, client_certs: bool) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("no redis-server (apt-get install redis-server)")
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                binary,
                "--bind",
                HOST,
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(cert.cert),
                "--tls-key-file",
                str(cert.key),
                "--tls-ca-cert-file",
                str(ca),
                "--tls-auth-clients",
                "yes" if client_certs else "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: self._alive() and port_open(self.port), f"redis-server on {self.port}", 20
        )

    def _alive(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        return True

    @property
    def url(self) -> str:
        """A plain ``redis://`` URL: the TLS settings turn it into ``rediss://``."""
        return f"redis://{HOST}:{self.port}/0"


@pytest.fixture(scope="module")
def start_redis() -> Iterator[Callable[..., TlsRedis]]:
    servers: list[TlsRedis] = []

    def start(cert: Issued, ca: Path, *, client_certs: bool = False) -> TlsRedis:
        server = TlsRedis(cert, ca, client_certs=client_certs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        stop_process(server.process)


def sync_redis(url: str, tls: TlsSettings) -> redis.Redis:
    """A sync client the way ``churn materialize`` builds one (``churn_core.tls``)."""
    url, options = redis_options(url, tls, "serve.online_store.redis_tls")
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, **options)


def link_round_trip(url: str, tls: TlsSettings) -> tuple[bool, str, bytes | None]:
    """The Serve replica's Redis link: ping, then a write and a read; its status after."""

    async def run() -> tuple[bool, str, bytes | None]:
        link = RedisLink(url, 5.0, tls=tls)
        try:
            up = await link.ping()
            await link.call(lambda client: client.set("churn:tls", b"ok"))
            value = await link.call(lambda client: client.get("churn:tls"))
            return up, link.status(), value
        finally:
            await link.close()

    return asyncio.run(run())


def test_redis_with_the_trusted_ca(pki: Pki, start_redis: Callable[..., TlsRedis]) -> None:
    server = start_redis(pki.server, pki.ca.cert)
    assert link_round_trip(server.url, pki.tls()) == (True, "ok", b"ok")
    client = sync_redis(server.url, pki.tls())
    assert client.get("churn:tls") == b"ok"
    # There is no plaintext port: a client without TLS settings gets nowhere.
    plain = redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
    with pytest.raises(redis.ConnectionError):
        plain.ping()


def test_redis_refuses_a_server_of_an_untrusted_ca(
    pki: Pki, start_redis: Callable[..., TlsRedis]
) -> None:
    rogue = start_redis(pki.rogue_server, pki.rogue_ca.cert)
    with pytest.raises(redis.ConnectionError, match=UNTRUSTED):
        sync_redis(rogue.url, pki.tls()).ping()
    # The API's link degrades (answers uncached) and says why in /readyz.
    up, status, value = link_round_trip(rogue.url, pki.tls())
    assert not up and value is None
    assert status.startswith("down: ") and UNTRUSTED in status


def test_redis_checks_the_host_name_unless_told_to_check_the_ca_only(
    pki: Pki, start_redis: Callable[..., TlsRedis]
) -> None:
    server = start_redis(pki.wrong_name, pki.ca.cert)
    with pytest.raises(redis.ConnectionError, match="IP address mismatch"):
        sync_redis(server.url, pki.tls()).ping()
    assert sync_redis(server.url, pki.tls(verify="ca")).ping()


def test_redis_mutual_tls(pki: Pki, start_redis: Callable[..., TlsRedis]) -> None:
    server = start_redis(pki.server, pki.ca.cert, client_certs=True)
    with pytest.raises(redis.ConnectionError):
        sync_redis(server.url, pki.tls()).ping()
    assert link_round_trip(server.url, pki.tls())[0] is False
    assert sync_redis(server.url, pki.tls(client=True)).ping()
    assert link_round_trip(server.url, pki.tls(client=True)) == (True, "ok", b"ok")


# --- PostgreSQL ----------------------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@dataclass(frozen=True)
class TlsPostgres:
    """A throwaway PostgreSQL cluster accepting TLS connections only."""

    port: int
    pid: int

    def url(self, database: str = "postgres") -> str:
        """URL of ``database`` as the superuser (trust authentication, over TLS only)."""
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"


@pytest.fixture(scope="module")
def tls_postgres(pki: Pki) -> Iterator[TlsPostgres]:
    binaries = _postgres_bin()
    if binaries is None:
        pytest.fail("no PostgreSQL server binaries under /usr/lib/postgresql")
    as_postgres: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="churn-pg-tls-"))
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: the cluster belongs to the postgres user.
        as_postgres = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    data = folder / "data"
    try:
        initdb = [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        subprocess.run(
            [*as_postgres, *initdb, "--no-sync", "--no-instructions"],
            check=True,
            capture_output=True,
        )
        for source, name in (
            (pki.server.cert, "server.crt"),
            (pki.server.key, "server.key"),
            (pki.ca.cert, "ca.crt"),
        ):
            target = data / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            if as_postgres:
                shutil.chown(target, "postgres")
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
                f"ssl_ca_file = 'ca.crt'\nlisten_addresses = '{HOST}'\n"
                f"unix_socket_directories = '{folder}'\nfsync = off\n"
            )
        # hostssl only: a plaintext connection matches no line and is refused. Database
        # "mtls" also wants a client certificate signed by our CA.
        (data / "pg_hba.conf").write_text(
            f"hostssl mtls all {HOST}/32 trust clientcert=verify-ca\n"
            f"hostssl all all {HOST}/32 trust\n"
        )
        port = free_port()
        # -w: pg_ctl itself polls until the server accepts connections.
        pg_ctl = [str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "log")]
        subprocess.run(
            [*as_postgres, *pg_ctl, "-o", f"-p {port}", "-w", "-t", "60", "start"],
            check=True,
            capture_output=True,
        )
        pid = int((data / "postmaster.pid").read_text().split()[0])
        server = TlsPostgres(port, pid)
        try:
            with psycopg.connect(
                server.url(), autocommit=True, **postgres_params(pki.tls(), "test")
            ) as conn:
                conn.execute("CREATE DATABASE mtls")
            yield server
        finally:
            os.kill(pid, signal.SIGINT)  # "fast" shutdown
            wait_until(lambda: not Path(f"/proc/{pid}").exists(), "PostgreSQL shutdown", 30)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_postgres_source_over_verified_tls(pki: Pki, tls_postgres: TlsPostgres, spark: Any) -> None:
    source = PostgresSourceSettings(
        url=SecretStr(tls_postgres.url()), table="tls_customers", tls=pki.tls()
    )
    rows = pa.table(
        {
            "customer_id": ["C1", "C2", "C3"],
            "plan": ["basic", "premium", "basic"],
            "updated_at": pa.array([1_700_000_000_000_000] * 3, pa.timestamp("us")),
        }
    )
    # psycopg (COPY), then the Spark read: inspected over psycopg, rows through Sail's
    # connectorx reader, both with the source's TLS settings.
    assert load_table(source.url, source.table, rows, "customer_id", tls=source.tls) == 3
    frame = read_postgres_batch(spark, source, ["customer_id", "plan"], None)
    assert sorted(r["customer_id"] for r in frame.collect()) == ["C1", "C2", "C3"]
    with psycopg.connect(tls_postgres.url(), **postgres_params(source.tls, "test")) as conn:
        row = conn.execute(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert row is not None and row[0] is True and row[1] in ("TLSv1.2", "TLSv1.3")


def test_postgres_refuses_a_server_of_an_untrusted_ca(pki: Pki, tls_postgres: TlsPostgres) -> None:
    trusting_rogue = TlsSettings(enabled=True, ca_file=pki.rogue_ca.cert)
    rows = pa.table({"id": [1]})
    with pytest.raises(PostgresSourceError, match=UNTRUSTED) as caught:
        load_table(tls_postgres.url(), "never_written", rows, "id", tls=trusting_rogue)
    assert "\n" not in str(caught.value)
    # And the host name: the server's certificate names localhost and 127.0.0.1 only, so the
    # same server dialled as another name (hostaddr: where to connect) is refused.
    with pytest.raises(psycopg.OperationalError, match=r'does not match host name "db\.example"'):
        psycopg.connect(
            tls_postgres.url(),
            host="db.example",
            hostaddr=HOST,
            connect_timeout=5,
            **postgres_params(pki.tls(), "test"),
        )
    with psycopg.connect(
        tls_postgres.url(),
        host="db.example",
        hostaddr=HOST,
        **postgres_params(pki.tls(verify="ca"), "test"),
    ) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_postgres_mutual_tls_and_the_backup_path(pki: Pki, tls_postgres: TlsPostgres) -> None:
    url = tls_postgres.url("mtls")
    with pytest.raises(psycopg.OperationalError, match="requires a valid client certificate"):
        psycopg.connect(url, connect_timeout=5, **postgres_params(pki.tls(), "test"))
    with psycopg.connect(url, **postgres_params(pki.tls(client=True), "test")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # Backups reach a database with the TLS settings next to its URL (libpq parameters in
    # the URL, so pg_dump and pg_restore get them too).
    base = load_settings("test")
    settings = base.model_copy(
        update={
            "scoring": base.scoring.model_copy(
                update={"postgres_url": SecretStr(url), "postgres_tls": pki.tls(client=True)}
            )
        }
    )
    [target] = postgres_targets(settings)
    assert relations(target.url) == []


# --- MongoDB ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_mongo(pki: Pki) -> Iterator[str]:
    try:
        binary = secantus_binary()
    except FileNotFoundError as error:
        pytest.fail(str(error))
    port = free_port()
    storage = Path(tempfile.mkdtemp(prefix="churn-mongo-tls-"))
    process = subprocess.Popen(
        [
            str(binary),
            "--host",
            HOST,
            "--port",
            str(port),
            "--storage-path",
            str(storage),
            "--standalone",
            "--log-level",
            "ERROR",
            "--tls-cert-file",
            str(pki.server.cert),
            "--tls-key-file",
            str(pki.server.key),
            "--tls-ca-file",
            str(pki.ca.cert),
            "--tls-require-client-cert",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: process.poll() is None and port_open(port), "SecantusDB", 120)
        yield f"mongodb://{HOST}:{port}"
    finally:
        stop_process(process, 30)
        shutil.rmtree(storage, ignore_errors=True)


def monitoring(url: str, tls: TlsSettings) -> MonitoringSettings:
    return MonitoringSettings(
        mongodb_url=SecretStr(url),
        mongodb_database="churn_tls",
        mongodb_timeout_s=3,
        mongodb_tls=tls,
    )


def test_mongodb_with_the_trusted_ca_and_a_client_certificate(pki: Pki, tls_mongo: str) -> None:
    tls = pki.tls(cert_file=pki.client.combined)
    store = MongoMetadataStore.connect(tls_mongo, "churn_tls_registry", 10.0, tls)
    try:
        assert store.allocate_version("tls-model") == 1
        assert store.version_numbers("tls-model") == []  # allocated, nothing registered yet
    finally:
        store.close()
    write_results_mongo(monitoring(tls_mongo, tls), {"_id": "tls-run", "ok": True})


def test_mongodb_refuses_an_untrusted_ca_and_requires_our_certificate(
    pki: Pki, tls_mongo: str
) -> None:
    trusting_rogue = TlsSettings(
        enabled=True, ca_file=pki.rogue_ca.cert, cert_file=pki.client.combined
    )
    with pytest.raises(DriftJobError, match=UNTRUSTED):
        write_results_mongo(monitoring(tls_mongo, trusting_rogue), {"_id": "never"})
    with pytest.raises(DriftJobError) as caught:
        write_results_mongo(monitoring(tls_mongo, pki.tls()), {"_id": "never"})
    assert "\n" not in str(caught.value)
    store = MongoMetadataStore.connect(tls_mongo, "churn_tls_registry", 3.0, pki.tls())
    try:
        with pytest.raises(RegistryError):
            store.version_numbers("tls-model")
    finally:
        store.close()


# --- Kafka -------------------------------------------------------------------------------------


class TlsTerminator:
    """TLS on ``port`` (Python's OpenSSL via asyncio), plaintext to ``target_port``."""

    def __init__(self, target_port: int, port: int, context: ssl.SSLContext) -> None:
        self.target_port = target_port
        self.port = port
        self._context = context
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> TlsTerminator:
        """Listen (returns once listening)."""
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, HOST, self.port, ssl=self._context), self._loop
        ).result(timeout=10)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, upstream_writer),
            self._pipe(upstream_reader, writer),
            return_exceptions=True,
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def close(self) -> None:
        """Stop listening and stop the loop."""
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


@dataclass(frozen=True)
class TlsKafka:
    """Bootstrap addresses of one broker behind TLS: with and without client certificates."""

    one_way: str
    mutual: str
    rogue: str


@pytest.fixture(scope="module")
def tls_kafka(pki: Pki) -> Iterator[TlsKafka]:
    def context(cert: Issued, require_client: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert.cert, cert.key)
        if require_client:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(pki.ca.cert)
        return ctx

    stack = contextlib.ExitStack()
    with stack:
        addresses = []
        for cert, mutual in ((pki.server, False), (pki.server, True), (pki.rogue_server, False)):
            # The broker advertises the terminator's port, so every connection librdkafka
            # opens after bootstrap goes through TLS too.
            port = free_port()
            broker = stack.enter_context(TansuBroker(advertised_port=port))
            terminator = TlsTerminator(broker.port, port, context(cert, mutual)).start()
            stack.callback(terminator.close)
            addresses.append(f"{HOST}:{port}")
        yield TlsKafka(*addresses)


def test_kafka_produce_and_read_metadata_over_tls(
    pki: Pki, tls_kafka: TlsKafka, spark: Any
) -> None:
    from pipelines.sources.kafka import read_kafka_batch

    for bootstrap, tls in (
        (tls_kafka.one_way, pki.tls()),
        (tls_kafka.mutual, pki.tls(client=True)),
    ):
        records = [json.dumps({"id": str(i)}) for i in range(5)]
        placed = produce_records(bootstrap, "tls-events", records, partitions=1, tls=tls)
        assert [offset for _, offset in placed] == [0, 1, 2, 3, 4]
        source = KafkaSourceSettings(bootstrap_servers=bootstrap, topic="tls-events", tls=tls)
        assert list_partitions(source, request_timeout_s=10) == [0]
    # The read itself, in the Spark data source's reader, with the TLS options it was given.
    frame = read_kafka_batch(spark, source, ["id"], {})
    assert sorted(r["id"] for r in frame.collect()) == [str(i) for i in range(5)]


def test_kafka_refuses_an_untrusted_ca_and_requires_our_certificate(
    pki: Pki, tls_kafka: TlsKafka
) -> None:
    rogue = KafkaSourceSettings(bootstrap_servers=tls_kafka.rogue, topic="t", tls=pki.tls())
    with pytest.raises(KafkaSourceError, match=UNTRUSTED):
        list_partitions(rogue, request_timeout_s=5)
    no_cert = KafkaSourceSettings(bootstrap_servers=tls_kafka.mutual, topic="t", tls=pki.tls())
    with pytest.raises(KafkaSourceError, match="metadata request failed"):
        list_partitions(no_cert, request_timeout_s=5)


# --- HTTPS of the API ----------------------------------------------------------------------------


def _register_tiny_model(root: Path, name: str) -> None:
    """Version 1 of a model trained on the unit tests' tiny contract, as champion."""
    import xgboost as xgb

    from churn_core.model import FeatureEncoder
    from tests.unit.conftest import TINY_CONTRACT, tiny_frame

    contract = FeatureContract.model_validate(TINY_CONTRACT)
    frame = tiny_frame(500)
    encoder = FeatureEncoder(contract)
    dmatrix = encoder.dmatrix(encoder.encode_frame(frame), frame["churned"].to_numpy())
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2, "nthread": 1}, dmatrix, 5)
    registry = LocalRegistry(root)
    registry.register(
        name,
        bytes(booster.save_raw("ubj")),
        contract,
        params={},
        metrics={"roc_auc": 0.8},
        lineage={},
        feature_importance={},
    )
    registry.set_alias(name, "champion", 1)


def _standalone(tmp: Path, port: int, cert: Path, key: Path) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "CHURN_REGISTRY__ROOT": str(tmp / "registry"),
        "CHURN_REGISTRY__MODEL_NAME": "tls-tiny",
        "CHURN_LAKE_DIR": str(tmp / "lake"),
        "CHURN_MONITORING__PREDICTION_LOG__ENABLED": "false",
        "CHURN_SERVE__AUTH__KEYS_DIR": str(tmp / "keys"),
        "CHURN_SERVE__TLS_CERT_FILE": str(cert),
        "CHURN_SERVE__TLS_KEY_FILE": str(key),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "serve_apps.standalone", "--env", "test", "--port", str(port)],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_standalone_api_serves_https(pki: Pki, tmp_path: Path) -> None:
    _register_tiny_model(tmp_path / "registry", "tls-tiny")
    port = free_port()
    process = _standalone(tmp_path, port, pki.server.cert, pki.server.key)
    trusted = ssl.create_default_context(cafile=str(pki.ca.cert))
    base = f"https://{HOST}:{port}"
    try:

        def answers() -> bool:
            if process.poll() is not None:
                assert process.stderr is not None
                raise RuntimeError(f"standalone exited: {process.stderr.read().decode()[-2000:]}")
            try:
                return httpx.get(f"{base}/healthz", verify=trusted, timeout=2).status_code == 200
            except httpx.ConnectError as error:
                if "CERTIFICATE_VERIFY_FAILED" in str(error):
                    raise
                return False

        wait_until(answers, "standalone HTTPS API", 90)
        assert httpx.get(f"{base}/v1/model_metrics", verify=trusted).status_code == 401
        # A client that does not trust our CA (certifi's roots) refuses the server.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{base}/healthz", timeout=5)
        # And nothing answers plain HTTP on that port.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{HOST}:{port}/healthz", timeout=5)
    finally:
        stop_process(process)


def test_standalone_names_a_missing_certificate(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "tls" / "api.crt"
    process = _standalone(tmp_path, free_port(), missing, pki.server.key)
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        stop_process(process)
    assert process.returncode == 1
    lines = stderr.decode().strip().splitlines()
    assert lines[-1] == f"serve_apps.standalone: serve.tls_cert_file: {missing} does not exist"
