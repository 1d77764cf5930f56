"""Kafka's offsets start over while the stores are kept: the quick start run
twice in one checkout. Run 1 stores messages; the mock Kafka cluster is then
replaced by a new one (every topic starts again at offset 0, the consumer
group's offsets are gone) and the broker restarted on the same log.dir and
database. Run 2's messages land on offsets the log already holds with other
messages. Every ack that names the log must be for a record `log cat` shows
(same message id, offset and digest), nothing of run 1 may be lost, the
broker says once per partition that the offsets started over, and `verify`
exits 0. Then the log is put back in the state an older broker left it in
(run 2 missing: the new generations moved aside): `verify` names exactly the
missing messages, `verify --repair` writes them back and its second pass, and
one more `verify`, exit 0.

The same on real Kafka (the `kafka` suite, deploy/kafka.sh): run the broker
on a topic, delete the topic with the admin API, create it again with the
same partitions, publish again, and apply check_in_log, the warning and the
verify checks below. Nothing else changes: the broker sees the same thing
(a held offset arriving with another message). What differs is Kafka's
group offset: the cluster drops it with the topic or it is out of range and
auto.offset.reset applies; a stale one handed to cv_applog_set_committed is
only ever larger than the new incarnation's offsets, which makes recovery
refuse, never cut, a torn tail of the new generation."""
import base64
import json
import os
import shutil
import time

import cvtest

TOPIC = 'chat.qs'
PARTS = 2
RUN1 = 40
RUN2 = 14  # fewer than run 1: run 2's offsets stay below run 1's


def send_and_ack(h, n, tag):
    """Publishes n messages, returns {message_id: (body, ack)}."""
    prod = h.producer()
    sent = {}
    for i in range(n):
        body = ('%s message %d' % (tag, i)).encode()
        mid, value = cvtest.chat_message('qs', body)
        sent[mid] = body
        prod.send(TOPIC, value=value, partition=i % PARTS)
    prod.flush(timeout=60)
    acks_c = h.consumer('chatvault.acks')
    out = h.drain(acks_c, lambda recs: sum(
        1 for r in recs if cvtest.parse_ack(r.value).message_id in sent) >= n,
        timeout=120)
    acks = {}
    for r in out:
        a = cvtest.parse_ack(r.value)
        if a.message_id in sent:
            acks[a.message_id] = a
    return {mid: (body, acks.get(mid)) for mid, body in sent.items()}


def log_cat(h):
    r = h.run('log', 'cat', timeout=120)
    recs = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    return r, recs


def verify(h, *args):
    r = h.run('verify', '--quiet', '--json', *args, timeout=300)
    lines = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    return r, [l for l in lines if 'kind' in l], [l for l in lines if 'summary' in l]


def restart_kafka(h):
    """Replaces the mock cluster by a new one: offsets start over."""
    h.kafka.close()
    h.procs.remove(h.kafka)
    h.bootstrap = None
    h._start_kafka()
    h.write_config()


def check_in_log(h, run, recs, what):
    by_id = {}
    for rec in recs:
        by_id.setdefault(rec.get('message_id'), []).append(rec)
    bad = []
    for mid, (body, ack) in run.items():
        held = by_id.get(mid, [])
        if not any(base64.b64decode(x['body']) == body for x in held):
            bad.append('%s not in log cat' % mid)
            continue
        if ack is not None and ack.stores & 2:
            want = ack.log_digest.hex()
            if not any(x['digest'] == want and x['offset'] == ack.offset and
                       x['partition'] == ack.partition for x in held):
                bad.append('%s: ack names digest %s at %d/%d, log cat has %s' % (
                    mid, want, ack.partition, ack.offset,
                    [(x['partition'], x['offset'], x['digest']) for x in held]))
    h.is_(bad[:5], [], what)


with cvtest.Harness('offsets_restart', topics={TOPIC: PARTS}, partitions=2) as h:
    h.migrate()
    h.start_broker()
    run1 = send_and_ack(h, RUN1, 'run1')
    acked1 = [a for _, a in run1.values() if a is not None]
    h.is_(len(acked1), RUN1, 'run 1: every message acked')
    h.ok(all(cvtest.STATUS[a.status] == 'PERSISTED' and a.stores == 3 for a in acked1),
         'run 1: all PERSISTED with both stores')
    h.wait_committed([TOPIC])
    h.is_(h.broker.stop(), 0, 'run 1: broker stopped with SIGTERM')

    restart_kafka(h)
    h.start_broker()
    run2 = send_and_ack(h, RUN2, 'run2')
    acked2 = [a for _, a in run2.values() if a is not None]
    h.is_(len(acked2), RUN2, 'run 2: every message acked')
    h.ok(all(cvtest.STATUS[a.status] == 'PERSISTED' and a.stores == 3 for a in acked2),
         'run 2: all PERSISTED with both stores',
         [(cvtest.STATUS[a.status], a.stores) for a in acked2])
    h.ok(max(a.offset for a in acked2) < RUN1 // PARTS,
         'run 2 reused offsets run 1 holds (up to %d)' % max(a.offset for a in acked2))
    h.wait_committed([TOPIC])
    h.is_(h.broker.stop(), 0, 'run 2: broker stopped with SIGTERM')

    r, recs = log_cat(h)
    h.is_(r.returncode, 0, 'log cat exits 0')
    h.is_(len(recs), RUN1 + RUN2, 'log cat shows run 1 and run 2 (%d records)' % len(recs))
    check_in_log(h, run1, recs, 'every run 1 message is still in the log, as acked')
    check_in_log(h, run2, recs, 'every run 2 ack naming the log names a record log cat shows')
    gens = {}
    for x in recs:
        gens.setdefault((x['partition'], x['generation']), set()).add(
            x['message_id'] in run2)
    h.ok(len(gens) == 2 * PARTS and all(len(v) == 1 for v in gens.values()) and
         all((g != 0) == (True in v) for (_, g), v in gens.items()),
         'each partition holds run 1 in generation 0 and run 2 in a new one',
         sorted(gens.items()))

    log = h.broker_log()
    starts = [l for l in log.splitlines() if 'kafka offsets started over' in l]
    h.is_(len(starts), PARTS, 'the broker said once per partition that offsets started over',)
    h.ok(starts and 'level=warn' in starts[0] and 'expected_offset=' in starts[0]
         and 'topic=%s' % TOPIC in starts[0], 'in one warn line with topic and offsets',
         starts[:1])

    rows = h.query("SELECT topic, kafka_partition, next_offset FROM chatvault.kafka_offsets"
                   " WHERE consumer_group = 'chatvault' ORDER BY 2")
    want = {}
    for a in acked2:
        want[a.partition] = max(want.get(a.partition, 0), a.offset + 1)
    h.is_({p: o for _, p, o in rows}, want,
          'chatvault.kafka_offsets follows run 2, not the larger offsets of run 1')

    r, findings, summary = verify(h)
    h.is_(r.returncode, 0, 'verify exits 0: both stores hold both runs')
    h.ok(summary and summary[-1]['summary']['matched'] == RUN1 + RUN2,
         'verify matched all %d messages by identity' % (RUN1 + RUN2),
         r.stdout[-3000:] + r.stderr)

    # A row edited at an offset both runs share: "different" for that
    # message, not a message missing from the log. Every such row of both
    # runs gets one edit in turn; an edited row moves behind the other row
    # of its offset in PostgreSQL's order, so a run 1 row meets run 2's log
    # record first (the path that matches by identity at one offset).
    conn = h.pg()
    cur = conn.cursor()
    wrong = []
    shared = max(a.offset for a in acked2)
    edits = sorted((mid, v) for mid, v in list(run1.items()) + list(run2.items())
                   if v[1].offset <= shared)
    for mid, (body, ack) in edits:
        cur.execute("UPDATE chatvault.messages SET body = %s WHERE channel = 'qs'"
                    " AND message_id = %s", (b'edited', mid))
        r, findings, summary = verify(h)
        got = [(f['kind'], f['message_id']) for f in findings]
        if r.returncode != 3 or got != [('different', mid)]:
            wrong.append((mid, r.returncode, got))
        cur.execute("UPDATE chatvault.messages SET body = %s WHERE channel = 'qs'"
                    " AND message_id = %s", (body, mid))
    h.is_(wrong[:3], [], 'an edited row at a shared offset is reported "different", '
          'alone, for each of the %d rows at shared offsets' % len(edits))
    r, findings, summary = verify(h)
    h.is_(r.returncode, 0, 'and verify exits 0 once the rows are put back')

    # Replay by offset range takes the range from every generation.
    at = [((v[1].partition, v[1].offset), m)
          for m, v in list(run1.items()) + list(run2.items()) if v[1]]
    r = h.run('replay', '--dry-run', '--quiet', '--source', 'log', '--partition', '0',
              '--from-offset', '0', '--to-offset', '2')
    got = sorted(l.split('message_id=')[1].split()[0] for l in r.stdout.splitlines()
                 if l.startswith('would send'))
    want_ids = sorted(mid for (p, o), mid in at if p == 0 and o <= 2)
    h.ok(r.returncode == 0 and len(want_ids) == 6 and 'selected=6 ' in r.stderr and
         set(got) <= set(want_ids) and set(got) & set(run1) and set(got) & set(run2),
         'replay --source log of offsets 0..2 selects both runs\' 6 messages there',
         r.stdout + r.stderr)
    r = h.run('replay', '--dry-run', '--quiet', '--source', 'auto')
    h.ok(r.returncode == 0 and 'selected=%d ' % (RUN1 + RUN2) in r.stderr and
         'from_log=0 ' in r.stderr,
         'replay --source auto selects all %d messages, each once, from PostgreSQL'
         % (RUN1 + RUN2), r.stderr[-1500:])

    # The log an older broker left: run 2 missing (it skipped held offsets).
    aside = os.path.join(h.tmp, 'generations-aside')
    os.mkdir(aside)
    logdir = h.config_values['log.dir']
    for p in range(PARTS):
        pdir = os.path.join(logdir, '%s-%d' % (TOPIC, p))
        for name in os.listdir(pdir):
            if name.startswith('gen-'):
                shutil.move(os.path.join(pdir, name), os.path.join(aside, '%d-%s' % (p, name)))
    r, findings, summary = verify(h)
    h.is_(r.returncode, 3, 'verify exits 3 on the log that lacks run 2')
    named = sorted(f['message_id'] for f in findings if f['kind'] == 'only_in_postgres')
    h.is_(named, sorted(run2), 'verify names exactly run 2 as only_in_postgres')
    h.is_([f['kind'] for f in findings if f['kind'] != 'only_in_postgres'], [],
          'and nothing else')
    r, findings, summary = verify(h, '--repair')
    h.is_(r.returncode, 0, 'verify --repair exits 0 (its second pass is clean)')
    if r.returncode:
        h.diag(r.stdout[-3000:] + r.stderr)
    r, findings, summary = verify(h)
    h.is_(r.returncode, 0, 'a second verify exits 0: the repair converged')
    r, recs = log_cat(h)
    check_in_log(h, {k: (v[0], None) for k, v in run2.items()}, recs,
                 'log cat shows every run 2 message again, from the repair')
    check_in_log(h, {k: (v[0], None) for k, v in run1.items()}, recs,
                 'and every run 1 message')
    r = h.run('log', 'check', timeout=120)
    h.is_(r.returncode, 0, 'log check passes')
    if r.returncode:
        h.diag(r.stdout[-2000:] + r.stderr)
