"""The query API (``market-ingestor api``).

spec.py       routes and parameters, declared once; the OpenAPI document is generated from them
app.py        the aiohttp app: middlewares (errors, keys, rate limits, declared parameters) and handlers
params.py     request times, limits, cursors; response time formats
store.py      the PostgreSQL reads (keyset pagination)
render.py     rows and ticker states -> JSON bodies
catalog.py    which instruments exist (stored or live), for 404s and /symbols
ticker.py     the live ticker: a Faust agent and GlobalTable
keys.py       API keys: create/list/revoke, cached verification (shared with the push gateway)
ratelimit.py  per-key token buckets
monitor.py    the control panel's view of the bus: connector status, control state, offsets (offsets.py)
panel.py      the control panel's page (static/), its status endpoint and control commands
service.py    the process: Faust worker + web server
"""
