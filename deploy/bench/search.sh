#!/bin/bash
# deploy/bench/search.sh — how fast `chatvault search` answers on a large
# archive, and how fast the search indexer indexes.
#
#   deploy/bench/search.sh [--rows N] [--index-rows M] [--keep]
#
# 1. The indexer: a scratch database cv_bench_search_ix with M synthetic
#    rows (default 1,000,000) of chatvault.messages, indexed by
#    `chatvault search --reindex`: the indexer's own code (rows read, bodies
#    checked for UTF-8 in C, to_tsvector(simple) and the GIN index kept up
#    to date by every INSERT), timed as rows/s.
# 2. The queries: a scratch database cv_bench_search with N rows (default
#    10,000,000) filled with generate_series, its search documents made in
#    SQL (to_tsvector in one INSERT … SELECT, the indexes created after it:
#    the bulk way, not the indexer's), ANALYZEd; then each representative
#    search is run through `chatvault search` (wall time, 3 runs, the
#    process included) and its SQL under EXPLAIN (ANALYZE, BUFFERS).
#
# Rows: 200 channels ch-0 … ch-199, 5,000 senders, one message every 10 ms
# of sent_at, bodies of 6 to 20 words: 90% from a list of 300 common English
# words, skewed so the first words are the most frequent (word rank r is
# drawn as 1 + floor(300 u²)), 10% from 200,000 rare words zx0 … zx199999
# (about 65 rows each at 10M rows).
#
# CV_BENCH_PG: the libpq conninfo of the server, without dbname (default:
# deploy/pg.sh's). CV_BUILD_DIR: the build (default build). The databases
# are dropped at the end unless --keep. Output goes to standard output and
# deploy/bench/results/search-<UTC time>.txt.
set -euo pipefail

rows=10000000
index_rows=1000000
keep=false
while [ $# -gt 0 ]; do
    case $1 in
    --rows) rows=$2; shift 2 ;;
    --index-rows) index_rows=$2; shift 2 ;;
    --keep) keep=true; shift ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
    *) echo "search.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${CV_BUILD_DIR:-$root/build}
cv=$build/broker/chatvault
if [ -z "${CV_BENCH_PG:-}" ]; then
    eval "$("$root/deploy/pg.sh" env)"
    CV_BENCH_PG=$CV_TEST_PG
fi
mkdir -p "$here/results"
out=$here/results/search-$(date -u +%Y%m%dT%H%M%SZ).txt
exec > >(tee "$out") 2>&1
tmp=$(mktemp -d)
cleanup() {
    if ! $keep; then
        for db in cv_bench_search cv_bench_search_ix; do
            psql "$CV_BENCH_PG dbname=postgres" -qXc "DROP DATABASE IF EXISTS $db" || true
        done
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

ms() { date +%s%3N; }
q() { psql "$CV_BENCH_PG dbname=$1" -qXAt -v ON_ERROR_STOP=1 -c "$2"; }

words="the a to and of i you it in is that for on this we my be have with are so not
but just me at was can do your what all if get like no will they out up know
one about how good time now there he think here go see when she want would
yes ok then did from back more got today really some day them too people
going need make only new well work still much right tomorrow also take week
lol been let going thanks please sorry great call home night morning love
meeting coffee lunch dinner team project deadline release build test deploy
server client bug fix issue ticket review merge branch commit push pull main
update version feature design plan idea question answer problem solution
office remote train bus car late early weekend holiday vacation trip flight
hotel city music movie game book news weather rain sun cold hot snow
birthday party friend family kids school class teacher doctor store shop
price money pay bill card bank account password login email phone message
chat channel group photo video link file document report slide notes list
agenda schedule calendar invite room zoom screen share audio camera mute
happy sad tired busy free ready done started finished waiting almost soon
maybe sure definitely probably never always sometimes often usually again
first last next previous other same different big small long short fast
slow easy hard simple important urgent quick minute hour month year"
wl=$(echo $words | tr ' ' '\n' | awk 'NF{printf "%s\x27%s\x27", (n++?",":""), $1}')
nw=$(echo $words | wc -w)
base_us=$(( ($(date +%s) - 30 * 86400) * 1000000 ))

# fill DB N: N rows in chunks of a million, in one session each.
fill() {
    local db=$1 n=$2 lo=1 chunk=1000000
    psql "$CV_BENCH_PG dbname=postgres" -qXc "DROP DATABASE IF EXISTS $db" \
        -c "CREATE DATABASE $db"
    printf 'postgres.conninfo = %s dbname=%s\nlog.dir =\nhttp.listen =\n' \
        "$CV_BENCH_PG" "$db" >"$tmp/$db.conf"
    "$cv" migrate -c "$tmp/$db.conf" 2>/dev/null
    local t0
    t0=$(ms)
    while [ "$lo" -le "$n" ]; do
        local hi=$((lo + chunk - 1))
        [ "$hi" -gt "$n" ] && hi=$n
        q "$db" "INSERT INTO chatvault.messages (channel, message_id, kafka_topic,
              kafka_partition, kafka_offset, sender_id, sent_at_us, body, content_type)
            SELECT 'ch-' || (g % 200), 'm' || g, 'chat.ch-' || (g % 200),
              (g / 200) % 16, g / 3200, 'user' || ((g * 7919) % 5000),
              $base_us + g * 10000,
              convert_to(array_to_string(ARRAY(
                SELECT CASE WHEN random() < 0.9
                  THEN w[1 + floor(power(random(), 2) * $nw)::int]
                  ELSE 'zx' || floor(random() * 200000)::int END
                FROM generate_series(1, 6 + (g % 15))), ' '), 'UTF8'),
              'text/plain'
            FROM generate_series($lo::bigint, $hi) g, (SELECT ARRAY[$wl] AS w) c"
        lo=$((hi + 1))
    done
    q "$db" "VACUUM ANALYZE chatvault.messages"
    echo "filled $db: $n rows in $(( ($(ms) - t0) / 1000 )) s" \
        "($(q "$db" "SELECT pg_size_pretty(pg_total_relation_size('chatvault.messages'))"))"
}

echo "== chatvault search benchmark, $(date -u +%FT%TZ), $(nproc) cores"
echo "   PostgreSQL $(q postgres 'SHOW server_version'), shared_buffers" \
    "$(q postgres 'SHOW shared_buffers')"

echo
echo "== 1. the indexer: chatvault search --reindex of $index_rows rows"
fill cv_bench_search_ix "$index_rows"
t0=$(ms)
"$cv" search -c "$tmp/cv_bench_search_ix.conf" --reindex --quiet 2>&1 | grep 'reindex done'
t=$(( $(ms) - t0 ))
echo "indexer: $index_rows rows in $((t / 1000)).$(( t % 1000 / 100 )) s =" \
    "$(( index_rows * 1000 / (t > 0 ? t : 1) )) rows/s"
$keep || psql "$CV_BENCH_PG dbname=postgres" -qXc "DROP DATABASE cv_bench_search_ix"

echo
echo "== 2. queries on $rows rows"
fill cv_bench_search "$rows"
db=cv_bench_search
conf=$tmp/$db.conf
t0=$(ms)
q $db "DROP INDEX chatvault.search_docs_tsv_idx, chatvault.search_docs_time_idx,
         chatvault.search_docs_sender_idx, chatvault.search_docs_id_idx"
q $db "INSERT INTO chatvault.search_docs (channel, message_id, sent_at_us, sender_id,
         text_len, tsv)
       SELECT channel, message_id, sent_at_us, sender_id, octet_length(body),
         to_tsvector('simple', convert_from(body, 'UTF8')) FROM chatvault.messages"
t1=$(ms)
q $db "SET maintenance_work_mem = '512MB';
       CREATE INDEX search_docs_tsv_idx ON chatvault.search_docs USING gin (tsv)"
q $db "CREATE INDEX search_docs_time_idx
         ON chatvault.search_docs (sent_at_us, channel, message_id)"
q $db "CREATE INDEX search_docs_sender_idx ON chatvault.search_docs (sender_id, sent_at_us)"
q $db "CREATE INDEX search_docs_id_idx ON chatvault.search_docs (message_id)"
q $db "VACUUM ANALYZE chatvault.search_docs"
echo "documents in SQL: $(( (t1 - t0) / 1000 )) s, indexes: $(( ($(ms) - t1) / 1000 )) s;" \
    "search_docs $(q $db "SELECT pg_size_pretty(pg_table_size('chatvault.search_docs'))")," \
    "GIN $(q $db "SELECT pg_size_pretty(pg_relation_size('chatvault.search_docs_tsv_idx'))")"
rare=$(q $db "SELECT w FROM (SELECT 'zx' || (g * 7) AS w FROM generate_series(1, 50) g) x
              ORDER BY (SELECT count(*) FROM chatvault.search_docs
                        WHERE tsv @@ to_tsquery('simple', w)) = 0, w LIMIT 1")
echo "rare word: $rare ($(q $db "SELECT count(*) FROM chatvault.search_docs
      WHERE tsv @@ to_tsquery('simple', '$rare')") rows);" \
    "'coffee meeting': $(q $db "SELECT count(*) FROM chatvault.search_docs
      WHERE tsv @@ websearch_to_tsquery('simple', 'coffee meeting')") rows;" \
    "'the': $(q $db "SELECT count(*) FROM chatvault.search_docs
      WHERE tsv @@ to_tsquery('simple', 'the')") rows"

# The SQL of pgsearch.c's cv_pgsearch_run for the conditions in $1 and
# the excerpt in $2.
search_sql() {
    echo "WITH page AS MATERIALIZED (SELECT d.channel, d.message_id, d.sender_id,
      d.sent_at_us, d.text_len FROM chatvault.search_docs d WHERE true $1
      ORDER BY d.sent_at_us DESC, d.channel DESC, d.message_id DESC LIMIT 50)
      SELECT p.channel, p.message_id, p.sender_id, m.kafka_topic, m.content_type,
      m.kafka_partition, m.kafka_offset, p.sent_at_us,
      (extract(epoch FROM m.persisted_at) * 1000000)::bigint,
      octet_length(m.body)::bigint, $2, m.channel IS NOT NULL
      FROM page p LEFT JOIN chatvault.messages m
      ON m.channel = p.channel AND m.message_id = p.message_id
      ORDER BY p.sent_at_us DESC, p.channel DESC, p.message_id DESC"
}
headline() {
    echo "ts_headline('simple', convert_from(substring(m.body FROM 1 FOR p.text_len),
      'UTF8'), websearch_to_tsquery('simple', '$1'),
      'MaxWords=20, MinWords=10, StartSel=**, StopSel=**')"
}
plain="CASE WHEN p.text_len IS NOT NULL THEN left(convert_from(substring(m.body
      FROM 1 FOR p.text_len), 'UTF8'), 100) END"
tq() { echo "AND d.tsv @@ websearch_to_tsquery('simple', '$1')"; }

mid_us=$((base_us + rows / 2 * 10000))
page1=$("$cv" search -c "$conf" --text coffee --format jsonl 2>/dev/null |
    tail -1 | sed 's/.*"next_before":"\([^"]*\)".*/\1/')
padded=$page1
while [ $(( ${#padded} % 4 )) -ne 0 ]; do padded="$padded="; done
cur=$(echo "$padded" | tr '_-' '/+' | base64 -d 2>/dev/null || true)
cur_at=$(echo "$cur" | sed -n 1p)
cur_ch=$(echo "$cur" | sed -n 2p)
cur_id=$(echo "$cur" | sed -n 3p)

bench() { # name, chatvault search args (one string), SQL conditions, excerpt
    local name=$1 args=$2 cond=$3 ex=$4 best=999999 all=""
    for i in 1 2 3; do
        local t0 t
        t0=$(ms)
        eval "\"$cv\" search -c \"$conf\" $args --format jsonl" >"$tmp/out" 2>/dev/null ||
            echo "($name: chatvault search failed)"
        t=$(( $(ms) - t0 ))
        all="$all $t"
        [ "$t" -lt "$best" ] && best=$t
    done
    local n
    n=$(grep -c '"message_id"' "$tmp/out" || true)
    local plan
    plan=$(q $db "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) $(search_sql "$cond" "$ex")")
    printf '%-34s results=%-3s chatvault search ms:%s  SQL: %s\n' "$name" "$n" "$all" \
        "$(echo "$plan" | grep 'Execution Time' | sed 's/ *Execution Time: //')"
    echo "$plan" | grep -E 'Scan|Sort Method|Nested|Hash Join|Merge Join' | head -6 |
        sed 's/^ */      /; s/(cost=[^)]*) //'
}

echo
bench "text: coffee meeting" "--text 'coffee meeting'" "$(tq 'coffee meeting')" \
    "$(headline 'coffee meeting')"
bench "text: rare word $rare" "--text $rare" "$(tq "$rare")" "$(headline "$rare")"
bench "text: the (half the rows)" "--text the" "$(tq the)" "$(headline the)"
bench "sender + time range (1 h)" \
    "--sender user42 --since $(( mid_us / 1000 )) --until $(( mid_us / 1000 + 3600000 ))" \
    "AND d.sender_id = 'user42' AND d.sent_at_us >= $mid_us
     AND d.sent_at_us < $((mid_us + 3600000000))" "$plain"
bench "sender, all time" "--sender user42" "AND d.sender_id = 'user42'" "$plain"
bench "channel pattern ch-1?" "--channel 'ch-1?'" \
    "AND (d.channel = ANY('{}'::text[]) OR d.channel ~ ANY('{^ch-1.\$}'::text[]))" "$plain"
bench "channel + text" "--channel ch-7 --text coffee" \
    "$(tq coffee) AND (d.channel = ANY('{ch-7}'::text[]) OR d.channel ~ ANY('{}'::text[]))" \
    "$(headline coffee)"
bench "message id" "--id m4242424" "AND d.message_id = 'm4242424'" "$plain"
bench "page 2 of coffee" "--text coffee --before $page1" \
    "$(tq coffee) AND (d.sent_at_us, d.channel, d.message_id) <
     ($cur_at, '$cur_ch', '$cur_id')" "$(headline coffee)"
bench "newest 50, no condition" "" "" "$plain"
echo
echo "results in $out"
