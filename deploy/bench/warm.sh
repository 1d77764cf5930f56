# deploy/bench/warm.sh — sourced by run.sh and stages.sh.
#
# warm_topics PASS CHANNELS PARTITIONS ACK_PARTITIONS
#
# Kafka stalls once per new partition when it writes the first entries of a
# segment's preallocated, memory-mapped index files: measured here at 30-60
# ms each, and for 256 new partitions seconds in which no produce request is
# answered (README "Where a message's time goes on real Kafka"). A segment
# gets its first entries on the first append after index.interval.bytes
# (4 KiB) of records, so two passes that are not measured go first: one
# that puts more than 4 KiB into every chat and ack partition, and a small
# one whose appends write the entries. PASS is a command that publishes
# --messages N through the broker and waits for every ack. Sets WARMED to
# the number of messages published.
warm_topics() {
    local pass=$1 channels=$2 partitions=$3 acks=$4 first second
    first=$((channels * partitions * 24))
    [ "$first" -ge $((acks * 100)) ] || first=$((acks * 100))
    second=$((channels * partitions * 2))
    [ "$second" -ge $((acks * 8)) ] || second=$((acks * 8))
    echo "warm-up: $first + $second messages (> 4 KiB per partition, then the index entries), not measured" >&2
    "$pass" --messages "$first" && "$pass" --messages "$second" || return 1
    WARMED=$((first + second))
}
