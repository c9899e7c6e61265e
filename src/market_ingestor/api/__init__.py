"""The query API (``market-ingestor api``).

spec.py          routes and parameters, declared once; the OpenAPI document is generated from them
app.py           the aiohttp app: middlewares (errors, keys, rate limits, declared parameters) and handlers
params.py        request times, limits, cursors; response time formats
store.py         the PostgreSQL reads (keyset pagination)
render.py        rows and ticker states -> JSON bodies
catalog.py       which instruments exist (stored or live), for 404s and /symbols
ticker_state.py  the live ticker's state and update rule (latest by exchange time), shared by both feeders
ticker.py        the live ticker on Kafka: a Faust agent and GlobalTable
ticker_nats.py   the live ticker on NATS: JetStream followers (LAST_PER_SUBJECT), every instrument per instance
keys.py          API keys: create/list/revoke, cached verification (shared with the push gateway)
ratelimit.py     per-key token buckets
monitor.py       the control panel's view of the bus: connector status, control state, throughput and lag
offsets.py       throughput and lag: the shapes, the sampling loop, Kafka offsets; offsets_nats.py: JetStream's
panel.py         the control panel's page (static/), its status endpoint and control commands
server.py        the web server with its database pool and panel monitor
service.py       the process on Kafka: Faust worker + web server; service_nats.py: on NATS, an asyncio runner
"""
