"""Checks the deploy/ artefacts of the observability work (TAP):

- deploy/prometheus/alerts.yml parses, every rule is complete, and every
  chatvault_* metric it names is one the broker exports (consumer/obs/);
  with promtool installed (Debian's prometheus package) also
  `promtool check rules` and `promtool test rules tests/deploy/alerts_test.yml`;
- deploy/grafana/chatvault.json parses, panels do not overlap, and every
  query names exported metrics only;
- deploy/systemd/chatvault.service carries the hardening it promises and,
  with systemd-analyze installed, passes `systemd-analyze verify`.
Needs /usr/bin/python3 with python3-yaml.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.environ.get('CV_SOURCE_ROOT') or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, 'tests', 'deploy')
n = 0
failed = 0


def ok(cond, name, diag=''):
    global n, failed
    n += 1
    print('%s %d - %s' % ('ok' if cond else 'not ok', n, name), flush=True)
    if not cond:
        failed += 1
        for line in str(diag).splitlines():
            print('# ' + line)


def skip(name, why):
    global n
    n += 1
    print('ok %d - %s # SKIP %s' % (n, name, why), flush=True)


exported = set()
for path in glob.glob(os.path.join(ROOT, 'consumer', 'obs', '*.c')):
    with open(path) as f:
        exported |= set(re.findall(r'"(chatvault_[a-z_]+)', f.read()))
families = set()
for m in exported:
    families.add(m)
    families.update(m + s for s in ('_bucket', '_sum', '_count'))


def unknown_metrics(expr):
    return sorted(set(re.findall(r'\bchatvault_[a-z_]+', expr)) - families)


ok(len(exported) >= 15, 'found the exported metric names in consumer/obs/',
   sorted(exported))

# --- alerts -------------------------------------------------------------
alerts_path = os.path.join(ROOT, 'deploy', 'prometheus', 'alerts.yml')
with open(alerts_path) as f:
    alerts = yaml.safe_load(f)
rules = [r for g in alerts['groups'] for r in g['rules']]
ok(len(rules) >= 6, 'alerts.yml has rules (%d)' % len(rules))
names = {r.get('alert') for r in rules}
for want in ('ChatvaultAckLagHigh', 'ChatvaultChannelStalled', 'ChatvaultStoreDown',
             'ChatvaultDegraded', 'ChatvaultRejectedRate'):
    ok(want in names, 'alert %s is defined' % want)
for r in rules:
    complete = all(k in r for k in ('alert', 'expr', 'for', 'labels', 'annotations')) \
        and r['labels'].get('severity') in ('warning', 'critical') \
        and r['annotations'].get('summary') and r['annotations'].get('description')
    ok(complete, '%s: expr, for, severity, summary and description' % r.get('alert'), r)
    bad = unknown_metrics(r.get('expr', ''))
    ok(not bad, '%s: names only exported metrics' % r.get('alert'), bad)

promtool = shutil.which('promtool')
if promtool:
    p = subprocess.run([promtool, 'check', 'rules', alerts_path], capture_output=True, text=True)
    ok(p.returncode == 0, 'promtool check rules', p.stdout + p.stderr)
    p = subprocess.run([promtool, 'test', 'rules', 'alerts_test.yml'], cwd=HERE,
                       capture_output=True, text=True)
    ok(p.returncode == 0, 'promtool test rules (alerts fire on synthetic series)',
       p.stdout + p.stderr)
else:
    skip('promtool check rules', 'promtool not installed (Debian package prometheus)')
    skip('promtool test rules', 'promtool not installed (Debian package prometheus)')

# --- grafana ------------------------------------------------------------
with open(os.path.join(ROOT, 'deploy', 'grafana', 'chatvault.json')) as f:
    dash = json.load(f)
ok(dash.get('uid') and dash.get('title'), 'dashboard has a uid and a title')
tvars = {v['name'] for v in dash.get('templating', {}).get('list', [])}
ok({'datasource', 'instance', 'channel'} <= tvars, 'dashboard variables datasource, instance, channel', tvars)
panels = [p for p in dash['panels'] if p['type'] != 'row']
exprs = [(p['title'], t['expr']) for p in panels for t in p.get('targets', [])]
ok(len(exprs) >= 10, 'dashboard has queries (%d)' % len(exprs))
bad = [(t, unknown_metrics(e)) for t, e in exprs if unknown_metrics(e)]
ok(not bad, 'dashboard queries name only exported metrics', bad)
cells = {}
overlap = []
for p in dash['panels']:
    g = p['gridPos']
    for x in range(g['x'], g['x'] + g['w']):
        for y in range(g['y'], g['y'] + g['h']):
            if (x, y) in cells:
                overlap.append((p['title'], cells[(x, y)]))
            cells[(x, y)] = p['title']
ok(not overlap and all(p['gridPos']['x'] + p['gridPos']['w'] <= 24 for p in dash['panels']),
   'dashboard panels fit the 24-column grid without overlapping', overlap[:5])
ids = [p['id'] for p in dash['panels']]
ok(len(ids) == len(set(ids)), 'panel ids are unique')

# --- systemd ------------------------------------------------------------
unit_path = os.path.join(ROOT, 'deploy', 'systemd', 'chatvault.service')
with open(unit_path) as f:
    unit = f.read()
directives = {}
for line in unit.splitlines():
    if '=' in line and not line.lstrip().startswith('#'):
        k, v = line.split('=', 1)
        directives.setdefault(k.strip(), []).append(v.strip())
for k, want in [('DynamicUser', 'yes'), ('ProtectSystem', 'strict'), ('NoNewPrivileges', 'yes'),
                ('ProtectHome', 'yes'), ('PrivateTmp', 'yes'), ('MemoryDenyWriteExecute', 'yes'),
                ('CapabilityBoundingSet', '')]:
    ok(want in directives.get(k, []), 'unit sets %s=%s' % (k, want), directives.get(k))
ok(any(v.startswith('log.key:') for v in directives.get('LoadCredential', [])),
   'unit passes the log key as a credential')
ok('CHATVAULT_LOG_KEY_FILE=%d/log.key' in directives.get('Environment', []),
   'the broker reads the key from the credentials directory')
ok(directives.get('ReadWritePaths') and directives.get('StateDirectory'),
   'the log directory is writable (StateDirectory, ReadWritePaths)')
analyze = shutil.which('systemd-analyze')
binary = os.environ.get('CHATVAULT_BIN')
if analyze and binary:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'chatvault.service')
        with open(path, 'w') as f:
            f.write(unit.replace('/usr/local/bin/chatvault', binary))
        p = subprocess.run([analyze, 'verify', path], capture_output=True, text=True)
        ok(p.returncode == 0 and not p.stderr.strip(), 'systemd-analyze verify', p.stdout + p.stderr)
else:
    skip('systemd-analyze verify', 'systemd-analyze or CHATVAULT_BIN missing')

print('1..%d' % n)
sys.exit(1 if failed else 0)
