#!/bin/bash
# TAP test of `chatvault keygen` and `chatvault log list|cat|check` on real
# files: a clean log checks with exit 0, a flipped byte makes `log check`
# exit 3 naming file and byte offset, key problems (world-readable, missing,
# wrong key) exit 2 with one line. Needs no services.
#   test_log_cli.sh CHATVAULT LOG_WRITER
set -u
CV=$1
WRITER=$2
T=$(mktemp -d /tmp/cv-test-log-cli-XXXXXX)
trap 'rm -rf "$T"' EXIT
n=0
failed=0
ok() { # ok COND-EXIT-STATUS NAME
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed + 1)); fi
}
is() { # is GOT WANT NAME
    n=$((n + 1))
    if [ "$1" = "$2" ]; then echo "ok $n - $3"; else
        echo "not ok $n - $3"; echo "#   got '$1', expected '$2'"; failed=$((failed + 1)); fi
}

cat >"$T/chatvault.conf" <<EOF
log.dir = $T/log
log.key_file = $T/log.key
EOF
C=(-c "$T/chatvault.conf")

# keygen
out=$("$CV" keygen "${C[@]}" 2>"$T/err"); rc=$?
is "$rc:$out" "0:1" "keygen creates the key file and prints key id 1"
is "$(stat -c %a "$T/log.key")" "600" "the key file has mode 0600"
out=$("$CV" keygen "${C[@]}" 2>/dev/null)
is "$out" "2" "a second keygen prints key id 2"
out=$("$CV" keygen --key-file "$T/other.key" "${C[@]}" 2>/dev/null); rc=$?
is "$rc:$out" "0:1" "keygen --key-file writes another file"

# a log of two partitions, several segments, written in two sessions
"$WRITER" "$T/log.key" "$T/log" general 0 0 600 50 >/dev/null &&
    "$WRITER" "$T/log.key" "$T/log" general 0 600 400 50 >/dev/null &&
    "$WRITER" "$T/log.key" "$T/log" random 1 0 100 10 >/dev/null
ok $? "the test writer fills a log"

"$CV" log check "${C[@]}" >"$T/out" 2>"$T/err"; rc=$?
is "$rc" "0" "log check of a clean log exits 0"
grep -q "^ok   chat.general-0 records=1000 first=0 last=999" "$T/out"
ok $? "log check reports 1000 records of chat.general-0"
grep -q "^ok   chat.random-1 records=100 " "$T/out"
ok $? "log check reports 100 records of chat.random-1"

"$CV" log list "${C[@]}" >"$T/out" 2>"$T/err"; rc=$?
is "$rc" "0" "log list exits 0"
segs=$(grep -c "^chat.general-0 " "$T/out")
[ "$segs" -ge 3 ]; ok $? "log list shows several segments of chat.general-0 ($segs)"
grep -q "sealed" "$T/out" && grep -q " open " "$T/out"
ok $? "log list marks sealed and open segments"

"$CV" log cat "${C[@]}" --channel general --from-offset 990 >"$T/out" 2>"$T/err"; rc=$?
is "$rc:$(wc -l <"$T/out")" "0:10" "log cat --channel --from-offset prints 10 records"
/usr/bin/python3 - "$T/out" <<'EOF'
import base64, json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
r = recs[0]
assert r["topic"] == "chat.general" and r["partition"] == 0 and r["offset"] == 990, r
assert r["channel"] == "general" and r["message_id"] == "m990", r
assert r["sent_at_us"] == 1700000000000990, r
assert base64.b64decode(r["body"]) == b"body 990", r
assert [x["offset"] for x in recs] == list(range(990, 1000))
EOF
ok $? "log cat prints topic, partition, offset, channel, message_id, sent_at_us, body (base64)"
"$CV" log cat "${C[@]}" --since 1700000000995 --partition 0 >"$T/out" 2>/dev/null
is "$(wc -l <"$T/out")" "5" "log cat --since (Unix ms) filters by timestamp"
"$CV" log cat "${C[@]}" --channel random >"$T/out" 2>/dev/null
is "$(wc -l <"$T/out")" "100" "log cat --channel random prints only that channel"

# key problems: exit 2, one line
chmod 644 "$T/log.key"
"$CV" log check "${C[@]}" >/dev/null 2>"$T/err"; rc=$?
is "$rc:$(wc -l <"$T/err")" "2:1" "a world-readable key file: exit 2, one line"
grep -q "0644" "$T/err" && grep -q "$T/log.key" "$T/err"
ok $? "the error names the key file and its mode: $(cat "$T/err")"
chmod 600 "$T/log.key"
"$CV" log cat "${C[@]}" --set log.key_file="$T/nope.key" >/dev/null 2>"$T/err"; rc=$?
is "$rc:$(wc -l <"$T/err")" "2:1" "a missing key file: exit 2, one line"
"$CV" log check "${C[@]}" --key-file "$T/other.key" >/dev/null 2>"$T/err"; rc=$?
is "$rc" "2" "a key file without the log's key ids: exit 2"
grep -q "key id 2 is not in the key file" "$T/err"
ok $? "the error names the missing key id: $(head -1 "$T/err")"
"$CV" keygen --key-file "$T/other.key" "${C[@]}" >/dev/null 2>&1
"$CV" log check "${C[@]}" --key-file "$T/other.key" >/dev/null 2>"$T/err"; rc=$?
is "$rc" "2" "a wrong key under the right id: exit 2"
grep -q "wrong key" "$T/err"
ok $? "the error says wrong key: $(head -1 "$T/err")"

# a flipped byte in the middle of the first segment
seg=$(ls "$T/log/chat.general-0"/*.cvlog | head -1)
pos=2000
printf '\x5a' | dd of="$seg" bs=1 seek=$pos conv=notrunc status=none
"$CV" log check "${C[@]}" >"$T/out" 2>"$T/err"; rc=$?
is "$rc" "3" "log check exits 3 on a flipped byte"
grep -q "log segment $seg at byte [0-9]*:" "$T/err"
ok $? "the error names file and byte offset: $(cat "$T/err")"
grep -q "^ok   chat.random-1" "$T/out"
ok $? "the other partition is still checked"
"$CV" log list "${C[@]}" >"$T/out" 2>/dev/null; rc=$?
is "$rc" "3" "log list exits 3 and marks the damage"
grep -q "DAMAGED@" "$T/out"; ok $? "log list shows DAMAGED@<byte>"

# many instances: a second log dir with an overlapping history
"$WRITER" "$T/log.key" "$T/log2" random 1 50 100 10 >/dev/null
"$CV" log check "${C[@]}" --log-dir "$T/log" --log-dir "$T/log2" --topic chat.random >"$T/out" 2>"$T/err"; rc=$?
is "$rc" "0" "log check merges two instances' directories"
grep -q "^ok   chat.random-1 records=150 first=0 last=149 dirs=2" "$T/out"
ok $? "the merged history has offsets 0..149 once: $(cat "$T/out")"

# compression: an uncompressed session, then compressed ones, read as one log
Z=(-c "$T/chatvault.conf" --set log.dir="$T/zlog")
sfx=" -- see you at the standup, the notes are at https://wiki.example.org/standup"
"$WRITER" "$T/log.key" "$T/zlog" general 0 0 300 50 >/dev/null &&
    CV_TEST_LOG_ZSTD=3 CV_TEST_LOG_BODY_SUFFIX="$sfx" \
        "$WRITER" "$T/log.key" "$T/zlog" general 0 300 300 50 >/dev/null &&
    CV_TEST_LOG_ZSTD=19 CV_TEST_LOG_BODY_SUFFIX="$sfx" \
        "$WRITER" "$T/log.key" "$T/zlog" general 0 600 100 50 >/dev/null
ok $? "the test writer fills a log: one session off, two with zstd"
v1=0 v2=0
for f in "$T/zlog/chat.general-0"/*.cvlog; do
    case $(od -An -tu1 -j9 -N1 "$f" | tr -d ' ') in 1) v1=$((v1 + 1)) ;; 2) v2=$((v2 + 1)) ;; esac
done
[ "$v1" -ge 1 ] && [ "$v2" -ge 2 ]
ok $? "segments of format version 1 ($v1) and 2 ($v2)"
"$CV" log check "${Z[@]}" >"$T/out" 2>"$T/err"; rc=$?
is "$rc" "0" "log check of a mixed compressed log exits 0"
grep -q "^ok   chat.general-0 records=700 first=0 last=699" "$T/out"
ok $? "log check reports its 700 records: $(head -1 "$T/out")"
"$CV" log cat "${Z[@]}" --from-offset 295 >"$T/out" 2>"$T/err"; rc=$?
is "$rc:$(wc -l <"$T/out")" "0:405" "log cat reads across the uncompressed and compressed segments"
/usr/bin/python3 - "$T/out" "$sfx" <<'EOF'
import base64, json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
assert [r["offset"] for r in recs] == list(range(295, 700))
for r in recs:
    want = b"body %d" % r["offset"] + (sys.argv[2].encode() if r["offset"] >= 300 else b"")
    assert base64.b64decode(r["body"]) == want, r
    assert r["message_id"] == "m%d" % r["offset"], r
EOF
ok $? "log cat returns every body and message id as written"
zseg=$(ls "$T/zlog/chat.general-0"/*.cvlog | tail -1)
zsize=$(stat -c %s "$zseg")
printf '\x5a' | dd of="$zseg" bs=1 seek=$((zsize - 30)) conv=notrunc status=none
"$CV" log check "${Z[@]}" >"$T/out" 2>"$T/err"; rc=$?
is "$rc" "3" "log check exits 3 on a flipped byte in the last record of a compressed segment"
grep -q "log segment $zseg at byte [0-9]*:" "$T/err"
ok $? "the error names file and byte offset: $(cat "$T/err")"

"$CV" log frobnicate "${C[@]}" >/dev/null 2>&1; rc=$?
is "$rc" "2" "an unknown subcommand exits 2"
"$CV" log list "${C[@]}" --set log.dir= >/dev/null 2>"$T/err"; rc=$?
is "$rc:$(wc -l <"$T/err")" "2:1" "no log.dir and no --log-dir: exit 2, one line"
grep -q "set log.dir (or give --log-dir)" "$T/err"
ok $? "the error says what to set: $(cat "$T/err")"
dirs=()
for _ in $(seq 33); do dirs+=(--log-dir "$T/log"); done
"$CV" log list "${C[@]}" "${dirs[@]}" >/dev/null 2>"$T/err"; rc=$?
is "$rc:$(cat "$T/err")" "2:chatvault log list: more than 32 --log-dir" "33 --log-dir: exit 2, one line"

echo "1..$n"
[ "$failed" -eq 0 ]
