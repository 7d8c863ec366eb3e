"""Spark sessions configured from the settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from infra.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def spark_session(settings: Settings, app_name: str) -> SparkSession:
    """A Spark session on ``settings.spark.master`` with Arrow transfer enabled.

    Local sessions keep their scratch space under the streamrec home, bind to 127.0.0.1
    and run without the web UI. When the executors run on this machine (``local[*]`` or a
    standalone master on loopback, as the cluster profile starts) their Python workers run
    this interpreter (unless ``PYSPARK_PYTHON`` says otherwise), so they see the same
    packages as the driver; on a real cluster ``PYSPARK_PYTHON`` names the executors' Python.
    """
    from pyspark.sql import SparkSession

    if settings.spark.on_this_machine:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # no "hostname resolves to loopback" warning
    scratch = settings.home / "spark"
    scratch.mkdir(parents=True, exist_ok=True)
    java_options = f"-Dlog4j2.configurationFile={_driver_log_config(scratch)}"

    builder = (
        SparkSession.builder.appName(app_name)
        .master(settings.spark.master)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(settings.spark.shuffle_partitions))
    )
    if settings.spark.master.startswith("local"):
        java_options += f" -Dderby.system.home={scratch}"
        builder = (
            builder.config("spark.driver.memory", settings.spark.driver_memory)
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")  # jobs report their own progress
            .config("spark.local.dir", str(scratch))
            .config("spark.sql.warehouse.dir", str(scratch / "warehouse"))
        )
    return builder.config("spark.driver.extraJavaOptions", java_options).getOrCreate()


DRIVER_LOG_CONFIG = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
"""


def _driver_log_config(directory: Path) -> Path:
    """A log4j2 configuration for the driver JVM: errors only on the console (Spark's own
    default prints its profile, native-library and configuration warnings to every command)."""
    path = directory / "log4j2-driver.properties"
    if not path.exists() or path.read_text() != DRIVER_LOG_CONFIG:
        path.write_text(DRIVER_LOG_CONFIG)
    return path
