#!/usr/bin/python3
"""deploy/bench/pg_waits.py CONNINFO DBNAME [SECONDS] — what PostgreSQL's
backends for DBNAME did.

Reads pg_stat_activity every 4 ms for SECONDS (or until SIGTERM or SIGINT)
and prints the share of samples in each state: on a CPU (active, no wait
event), in a wait event (IO:WALWrite, Client:ClientRead inside a
transaction, ...), or idle between transactions, waiting for the client's
next one. Needs Debian's python3-psycopg2 (/usr/bin/python3). run.sh
--sample runs it beside the benchmark.
"""
import collections
import signal
import sys
import time

import psycopg2


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit('usage: pg_waits.py CONNINFO DBNAME [SECONDS]')
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    conn = psycopg2.connect(sys.argv[1])
    conn.autocommit = True
    cur = conn.cursor()
    counts = collections.Counter()
    end = time.monotonic() + float(sys.argv[3]) if len(sys.argv) == 4 else None
    try:
        while end is None or time.monotonic() < end:
            cur.execute("SELECT state, coalesce(wait_event_type || ':' || wait_event, 'CPU') "
                        "FROM pg_stat_activity WHERE datname = %s "
                        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                        (sys.argv[2],))
            rows = cur.fetchall()
            for state, what in rows:
                counts['idle between transactions' if state == 'idle' else what] += 1
            time.sleep(0.004)
    except KeyboardInterrupt:
        pass
    total = sum(counts.values()) or 1
    for what, n in counts.most_common(12):
        print(f'{100 * n / total:5.1f}%  {what}')


main()
