-- The market data tables. Prices and amounts are NUMERIC (exact, as the exchange sent them); times are
-- timestamptz (microseconds) plus, where a value can carry nanoseconds, the exact value in a *_ns bigint.
--
-- `/*@partition_by(<column>)*/` marks a time-partitioned table: on plain PostgreSQL the migration runner turns it
-- into `PARTITION BY RANGE (<column>)` (day partitions are created by sinks/partitions.py); with TimescaleDB the table
-- stays plain here and becomes a hypertable on that column right after this file. Run by hand it is a comment.
--
-- Key text columns compare bytewise (COLLATE "C"): they are ASCII identifiers, and a locale's collation would
-- make every index comparison several times slower.
--
-- A unique index of a partitioned table (or a hypertable) must contain the partition column, so every key
-- below includes its time column. That keeps it idempotent: a re-delivered event carries the same time.

CREATE TABLE market_trades (
    exchange text COLLATE "C" NOT NULL,
    symbol text COLLATE "C" NOT NULL,
    trade_id text COLLATE "C" NOT NULL,
    ts timestamptz NOT NULL,  -- the exchange's time, truncated to the microsecond
    ts_ns bigint NOT NULL,  -- the same, exact (ns since the epoch, as in the model)
    price numeric NOT NULL,
    qty numeric NOT NULL,
    side text NOT NULL CHECK (side IN ('buy', 'sell'))  -- the taker's side
) /*@partition_by(ts)*/;

-- Idempotence: one row per (exchange, symbol, trade_id); the same trade always has the same ts, so adding ts
-- (required by partitioning) changes nothing. Leading with (exchange, symbol, ts) lets this one index also
-- serve "one instrument, a time range, newest first" (a backward scan), so no second index slows the inserts.
CREATE UNIQUE INDEX market_trades_key ON market_trades (exchange, symbol, ts, trade_id);

CREATE TABLE market_klines (
    exchange text COLLATE "C" NOT NULL,
    symbol text COLLATE "C" NOT NULL,
    interval text COLLATE "C" NOT NULL,  -- as configured: 1m, 4h, 1d, 1w...
    open_time timestamptz NOT NULL,  -- exact: windows start on whole seconds
    close_time timestamptz NOT NULL,  -- the window's last microsecond (the model's is its last ns: open + length - 1 ns)
    open numeric NOT NULL,
    high numeric NOT NULL,
    low numeric NOT NULL,
    close numeric NOT NULL,
    volume numeric NOT NULL,
    quote_volume numeric NOT NULL,
    trade_count bigint NOT NULL,
    taker_buy_volume numeric NOT NULL,
    taker_buy_quote_volume numeric NOT NULL,
    first_trade_id text,  -- NULL for a flat kline (a window without trades)
    last_trade_id text,
    vwap numeric NOT NULL,
    closed boolean NOT NULL,
    revision integer NOT NULL,
    PRIMARY KEY (exchange, symbol, interval, open_time)
) /*@partition_by(open_time)*/;

CREATE TABLE indicator_values (
    exchange text COLLATE "C" NOT NULL,
    symbol text COLLATE "C" NOT NULL,
    interval text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,  -- e.g. rsi_14, macd_12_26_9
    open_time timestamptz NOT NULL,  -- the kline's
    outputs jsonb NOT NULL,  -- IndicatorValue.values: {"macd": "1.25", ...}, exact decimal strings
    revision integer NOT NULL,
    PRIMARY KEY (exchange, symbol, interval, name, open_time)
) /*@partition_by(open_time)*/;

-- Written only when storage.store_quotes is on; the table always exists so queries need no mode switch.
CREATE TABLE market_quotes (
    exchange text COLLATE "C" NOT NULL,
    symbol text COLLATE "C" NOT NULL,
    ts timestamptz NOT NULL,
    ts_ns bigint NOT NULL,
    recv_ts_ns bigint NOT NULL,
    bid_price numeric NOT NULL,
    bid_qty numeric NOT NULL,
    ask_price numeric NOT NULL,
    ask_qty numeric NOT NULL,
    seq bigint  -- the exchange's update id, where it sends one
) /*@partition_by(ts)*/;

-- A quote has no id of its own: the model identifies it by its exchange and receipt times (model.event_id).
CREATE UNIQUE INDEX market_quotes_key ON market_quotes (exchange, symbol, ts, ts_ns, recv_ts_ns);
