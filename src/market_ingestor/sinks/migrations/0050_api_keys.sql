-- API keys of the query API and the push gateway (market-ingestor apikeys create|list|revoke).
-- Only the SHA-256 of a key is stored; `id` is its public part, shown by `apikeys list`.
CREATE TABLE IF NOT EXISTS api_keys (
    id               text PRIMARY KEY,
    name             text NOT NULL,
    key_hash         bytea NOT NULL,
    rate_limit_per_s integer CHECK (rate_limit_per_s > 0),   -- NULL: the configured default
    rate_limit_burst integer CHECK (rate_limit_burst > 0),   -- NULL: the configured default
    created_at       timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz
);
