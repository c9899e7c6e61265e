"""The dev stack's Kafka cluster id, pure: never one that ``kafka-storage format -t`` takes for an option."""

from __future__ import annotations

import base64

from market_ingestor.devstack.apache_kafka import _cluster_id


def test_an_id_that_would_start_with_a_dash_is_drawn_again():
    # 0xf8 puts 62 in the first six bits: "-" in URL-safe base64. A test run failed on such an id.
    draws = iter([b"\xf8" + bytes(15), b"\x01" * 16])
    cluster_id = _cluster_id(lambda: next(draws))
    assert cluster_id == base64.urlsafe_b64encode(b"\x01" * 16).decode().rstrip("=")


def test_ids_are_22_characters_of_url_safe_base64_and_differ():
    ids = {_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and not i.startswith("-") and set(i) <= set(ALPHABET) for i in ids)


ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
