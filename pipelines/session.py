"""Spark session from settings: a remote Spark Connect endpoint, or an embedded Sail server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from churn_core.logging import get_logger
from churn_core.settings import SparkSettings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = get_logger(__name__)


@contextmanager
def spark_session(settings: SparkSettings) -> Iterator[SparkSession]:
    """Yield a Spark Connect session; an embedded Sail server is started and stopped if needed."""
    from pyspark.sql import SparkSession

    server = None
    remote = settings.remote
    if not remote:
        # Sail logs every session at INFO on stderr; warnings are what a job's reader needs.
        os.environ.setdefault("RUST_LOG", "warn")
        from pysail.spark import SparkConnectServer

        server = SparkConnectServer(settings.host, settings.port)
        server.start(background=True)
        host, port = server.listening_address
        remote = f"sc://{host}:{port}"
        log.info("sail started", remote=remote)
    # create(), not getOrCreate(): getOrCreate hands back any session already active in this
    # process (on another server), and stopping it below would stop it for its owner too.
    spark = SparkSession.builder.remote(remote).create()
    try:
        yield spark
    finally:
        spark.stop()
        if server is not None:
            server.stop()
