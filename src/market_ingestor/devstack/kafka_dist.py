"""The Apache Kafka jars, resolved once from Maven Central with ``mvn`` and cached outside the work tree.

The cache (``$XDG_CACHE_HOME`` or ``~/.cache``, then ``market-ingestor/kafka-<version>/libs``) survives
``dev down`` and fresh clones, so only the very first ``up`` on a machine pays for the download.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from market_ingestor.devstack.process import fail, run_tool
from market_ingestor.errors import DevStackError

ENV_KAFKA_VERSION = "MARKET_INGESTOR_KAFKA_VERSION"
# Newest 4.x whose whole runtime closure is on Maven Central (4.4.0 lacks kafka-tools-api there).
KAFKA_VERSION = "4.3.1"
# The Kafka distribution ships an SLF4J-to-log4j2 binding that its POM does not declare; without it the
# broker logs nothing. Same log4j2 line as the one kafka_2.13 depends on.
LOG4J_VERSION = "2.25.4"

_COMPLETE_MARKER = ".complete"
_MVN_TIMEOUT = 900.0

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>market-ingestor.devstack</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{kafka}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
      <scope>runtime</scope>
    </dependency>
  </dependencies>
</project>
"""


def kafka_version() -> str:
    return os.environ.get(ENV_KAFKA_VERSION) or KAFKA_VERSION


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "market-ingestor"


def kafka_libs(version: str) -> Path:
    """The directory holding every runtime jar of Kafka ``version``, resolving it with Maven if needed."""
    target = cache_root() / f"kafka-{version}" / "libs"
    if (target / _COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Resolve into a private staging dir and rename it into place, so a concurrent or interrupted run never
    # leaves a half-filled libs/ that looks usable.
    staging = Path(tempfile.mkdtemp(prefix=".resolve-", dir=target.parent))
    try:
        _resolve_into(staging / "libs", version, logfile=target.parent / "mvn.log")
        if not (target / _COMPLETE_MARKER).exists():  # else a concurrent resolver finished first
            shutil.rmtree(target, ignore_errors=True)  # an unfinished leftover
            (staging / "libs").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _resolve_into(libs: Path, version: str, *, logfile: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise DevStackError("mvn is not installed: apt-get install maven, or set KAFKA_BOOTSTRAP")
    pom = libs.parent / "pom.xml"
    pom.write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION))
    argv = [
        mvn, "-B", "-q", "-f", str(pom),
        "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={libs}",
    ]  # fmt: skip
    run_tool(argv, what=f"resolving Apache Kafka {version} with Maven", logfile=logfile, timeout=_MVN_TIMEOUT)
    if not (libs / f"kafka_2.13-{version}.jar").exists():
        raise fail(f"Maven finished but kafka_2.13-{version}.jar is missing from {libs}", [logfile])
    (libs / _COMPLETE_MARKER).touch()
