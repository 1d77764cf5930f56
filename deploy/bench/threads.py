#!/usr/bin/python3
"""deploy/bench/threads.py [SECONDS] — where the machine's CPU went.

Samples every thread on the machine every 0.3 s for SECONDS (or until
SIGTERM or SIGINT) and prints, per process and thread name (digits folded
to #, chatvault processes told apart by their command), the CPU seconds
each group used and the seconds it was runnable but waited for a CPU
(run-queue delay), from /proc/<pid>/task/<tid>/schedstat. A thread counts from its first sample to its last, so one that
lives less than a sampling interval is missed. run.sh --sample runs it
beside the benchmark.
"""
import collections
import os
import re
import signal
import sys
import time


def sample(first, last):
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            proc = open(f'/proc/{pid}/comm').read().strip()
            if proc == 'chatvault':
                proc += ' ' + open(f'/proc/{pid}/cmdline').read().split('\0')[1]
            for tid in os.listdir(f'/proc/{pid}/task'):
                run_ns, wait_ns = open(f'/proc/{pid}/task/{tid}/schedstat').read().split()[:2]
                name = open(f'/proc/{pid}/task/{tid}/comm').read().strip()
                key = (tid, proc + '/' + name)
                first.setdefault(key, (int(run_ns), int(wait_ns)))
                last[key] = (int(run_ns), int(wait_ns))
        except (OSError, IndexError, ValueError):
            pass  # the process or thread ended meanwhile


def main():
    if len(sys.argv) > 2:
        sys.exit('usage: threads.py [SECONDS]')
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    first, last = {}, {}
    end = time.monotonic() + float(sys.argv[1]) if len(sys.argv) == 2 else None
    try:
        while end is None or time.monotonic() < end:
            sample(first, last)
            time.sleep(0.3)
    except KeyboardInterrupt:
        pass
    groups = collections.defaultdict(lambda: [0.0, 0.0])
    for key, (run_ns, wait_ns) in last.items():
        g = groups[re.sub(r'\d+', '#', key[1])]
        g[0] += (run_ns - first[key][0]) / 1e9
        g[1] += (wait_ns - first[key][1]) / 1e9
    print(f'{"process/thread":44s} {"CPU s":>7s} {"wait s":>7s}')
    for name, (cpu, wait) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:25]:
        print(f'{name[:44]:44s} {cpu:7.2f} {wait:7.2f}')
    print(f'{"all threads":44s} {sum(g[0] for g in groups.values()):7.2f}')


main()
