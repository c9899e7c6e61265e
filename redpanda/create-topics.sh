#!/usr/bin/env bash
# Create the pipeline's Kafka topics on Redpanda.
#
# The cluster runs with auto_create_topics_enabled=false (redpanda/bootstrap.yaml), so every topic the
# services use must be listed here, with its partition count and retention chosen deliberately rather
# than inherited from cluster defaults.
#
# Idempotent: a topic that already exists is reported and left as it is, so this is safe to run on every
# `docker compose up` (the redpanda-init service) or by hand against any cluster:
#
#   RPK_BROKERS=localhost:19092 redpanda/create-topics.sh
#
# Existing topics are NOT altered: changing a row below does not change a topic that already exists.
# Use `rpk topic alter-config` / `rpk topic add-partitions` for that.
set -euo pipefail

# Where to reach the Kafka API. rpk's own variable wins; KAFKA_BOOTSTRAP is what the app services use.
BROKERS="${RPK_BROKERS:-${KAFKA_BOOTSTRAP:-localhost:19092}}"
# 1 for the single-node compose stack; a 3-broker cluster wants 3 (Redpanda requires an odd number).
REPLICAS="${TOPIC_REPLICAS:-1}"

readonly DAY_MS=$((24 * 60 * 60 * 1000))

# The one list of topics. Add a topic by adding a row; nothing else in this script names a topic.
#   name               partitions  retention_days  cleanup.policy
# retention_days "-" means no time-based retention: a compacted topic keeps the latest record per key.
TOPICS=(
    "market.trades      12  7   delete"
    "market.quotes      12  7   delete"
    "market.book        12  7   delete"
    "market.klines      12  30  delete"
    "market.indicators  12  30  delete"
    "market.control     1   -   compact"
    "market.deadletter  3   14  delete"
    "market.status      1   -   compact"
)

# create_topic NAME PARTITIONS RETENTION_DAYS CLEANUP_POLICY
create_topic() {
    local name=$1 partitions=$2 retention_days=$3 cleanup_policy=$4
    local args=(
        topic create "$name"
        -X "brokers=$BROKERS"
        --partitions "$partitions"
        --replicas "$REPLICAS"
        --topic-config "cleanup.policy=$cleanup_policy"
        # Store batches as the producer compressed them: no recompression on the broker.
        --topic-config "compression.type=producer"
    )
    if [[ $retention_days != "-" ]]; then
        args+=(--topic-config "retention.ms=$((retention_days * DAY_MS))")
    fi

    local output
    if output=$(rpk "${args[@]}" 2>&1); then
        echo "created  $name (partitions=$partitions, retention_days=$retention_days, cleanup.policy=$cleanup_policy)"
        return 0
    fi
    # rpk exits non-zero when the topic exists; that is the expected case on every run after the first.
    # Matching the Kafka error code (not rpk's wording) keeps this working across rpk versions.
    if grep -q "TOPIC_ALREADY_EXISTS" <<<"$output"; then
        echo "exists   $name (left unchanged)"
        return 0
    fi
    echo "failed   $name:" >&2
    echo "$output" >&2
    return 1
}

main() {
    echo "creating topics on $BROKERS (replicas=$REPLICAS)"
    local row name partitions retention_days cleanup_policy
    for row in "${TOPICS[@]}"; do
        read -r name partitions retention_days cleanup_policy <<<"$row"
        create_topic "$name" "$partitions" "$retention_days" "$cleanup_policy"
    done
}

main "$@"
