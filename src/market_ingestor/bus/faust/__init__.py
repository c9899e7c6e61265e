"""The Faust layer our Kafka services share: the app class and how it starts (``app.py``) and the one module that
touches Faust's and aiokafka's private internals (``internals.py``). Each service keeps its own agents and tables
(the stream worker in ``streams/``, the ticker table in ``api/ticker.py``). Why each piece exists: docs/faust.md."""
