-- market_vwap(quote_volume, volume, fallback): quote_volume / volume rounded exactly as the stream rounds it
-- (streams/klines.py: decimal Context(prec=34, ROUND_HALF_EVEN)), or `fallback` (the close) when volume is 0.
-- PostgreSQL's own numeric division picks its result scale by a rule of its own and round() rounds half away
-- from zero, so the quotient is built from exact integer steps instead: find the exponent of its leading digit,
-- take 34 digits by truncating division, round half to even on the exact remainder. An exact quotient keeps the
-- fewest digits down to Python's "ideal exponent" (10 / 4 = 2.5), so the stored text matches too.
CREATE FUNCTION market_vwap(quote_volume numeric, volume numeric, fallback numeric) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    n numeric := abs(quote_volume);
    d numeric := abs(volume);
    e integer;  -- 10^e <= n / d < 10^(e + 1)
    s integer;  -- the scale that leaves 34 significant digits
    scaled numeric;
    t numeric;
    r numeric;
    result numeric;
BEGIN
    IF volume IS NULL OR quote_volume IS NULL THEN
        RETURN NULL;
    END IF;
    IF volume = 0 THEN
        RETURN fallback;
    END IF;
    IF n = 0 THEN
        RETURN round(0::numeric, greatest(scale(quote_volume) - scale(volume), 0));
    END IF;
    -- log() only estimates (it may round up just below a power of ten); the loops make e exact.
    e := floor(log(n))::integer - floor(log(d))::integer;
    WHILE n >= d * ('1e' || (e + 1))::numeric LOOP
        e := e + 1;
    END LOOP;
    WHILE n < d * ('1e' || e)::numeric LOOP
        e := e - 1;
    END LOOP;
    s := 33 - e;
    scaled := n * ('1e' || s)::numeric;
    t := div(scaled, d);  -- exact, truncated
    r := scaled - t * d;
    IF 2 * r > d OR (2 * r = d AND mod(t, 2) = 1) THEN
        t := t + 1;
        IF t = 1e34 THEN  -- rounded up to the next power of ten: still 34 digits, one place further left
            t := 1e33;
            s := s - 1;
        END IF;
    END IF;
    result := t * ('1e' || -s)::numeric;
    IF r = 0 THEN
        result := round(result, greatest(min_scale(result), scale(quote_volume) - scale(volume), 0));
    END IF;
    IF sign(quote_volume) * sign(volume) < 0 THEN
        result := -result;
    END IF;
    RETURN result;
END
$$;
