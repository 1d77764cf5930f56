"""The cold tier against a real S3 API server: moto (PyPI `moto[server]`,
its `moto_server` command, installed by deploy/setup.sh into .venv-moto/ of
the source tree) on a free loopback port. A log of several sealed segments
(log_writer) is shipped with `chatvault cold ship`, its local copies removed
(cold.hot_window = 0), and `log cat` / `log check` must still read every
record from the fetched copies; a tampered object is damage; a directory
target round-trips too; an unreachable endpoint and a missing bucket are
one-line errors that remove nothing; with moto checking signatures and
policies (INITIAL_NO_AUTH_ACTION_COUNT), chatvault's SigV4 requests must
pass and a wrong secret must be a one-line 403.

usage: test_cold.py CHATVAULT LOG_WRITER
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import motolib

CV, LW = sys.argv[1], sys.argv[2]

n = 0
failed = 0


def ok(cond, name, detail=""):
    global n, failed
    n += 1
    if cond:
        print(f"ok {n} - {name}")
    else:
        failed += 1
        print(f"not ok {n} - {name}")
        for line in str(detail).splitlines()[:20]:
            print(f"# {line}")
    sys.stdout.flush()


if not motolib.available():
    if os.environ.get("CI"):
        print("1..1\nnot ok 1 - moto_server not found at " + motolib.MOTO +
              " (deploy/setup.sh installs it)")
        sys.exit(1)
    print("1..0 # SKIP moto_server not found at " + motolib.MOTO + " (run deploy/setup.sh)")
    sys.exit(77)

free_port = motolib.free_port
# chatvault takes every CHATVAULT_* variable for a config key.
ENV = {k: v for k, v in os.environ.items() if not k.startswith("CHATVAULT_")}
work = tempfile.mkdtemp(prefix="cv-cold-")
moto = motolib.Moto(work)
endpoint = moto.endpoint
http = moto.request

try:
    st, _ = http("PUT", "/cvbucket")
    ok(st == 200, "moto is up and the bucket is created", st)

    key = os.path.join(work, "log.key")
    r = subprocess.run([CV, "keygen", "--set", "log.key_file=" + key],
                       capture_output=True, text=True, env=ENV)
    ok(r.returncode == 0, "keygen", r.stderr)
    cred = moto.credentials_file(os.path.join(work, "s3.cred"))

    def make_log(d):
        body = "x" * 300
        for i in range(3):
            subprocess.run([LW, key, d, "general", "0", str(i * 300), "300"], check=True,
                           stdout=subprocess.DEVNULL,
                           env=dict(ENV, CV_TEST_LOG_BODY_SUFFIX=body))

    def cv(log, *args, target=None, extra=()):
        env = dict(ENV)
        env.update(CHATVAULT_LOG_DIR=log, CHATVAULT_LOG_KEY_FILE=key,
                   CHATVAULT_POSTGRES_CONNINFO="host=/nonexistent connect_timeout=1")
        cmd = [CV] + list(args)
        if target is not None:
            cmd += ["--set", "cold.target=" + target]
        for e in extra:
            cmd += ["--set", e]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    def records(log, **kw):
        r = cv(log, "log", "cat", **kw)
        return r, [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]

    s3 = "s3://cvbucket/off-site"
    s3opts = ("cold.endpoint=" + endpoint, "cold.credentials_file=" + cred)
    log = os.path.join(work, "log")
    make_log(log)
    pdir = os.path.join(log, "chat.general-0")
    segs = sorted(x for x in os.listdir(pdir) if x.endswith(".cvlog"))
    ok(len(segs) >= 5, "the log has several segments", segs)
    _, before = records(log)
    ok(len(before) == 900, "900 records before shipping", len(before))

    # An unreachable endpoint: one line, exit 1, nothing shipped or removed.
    r = cv(log, "cold", "ship", target=s3,
           extra=("cold.endpoint=http://127.0.0.1:%d" % free_port(),
                  "cold.credentials_file=" + cred, "cold.hot_window=0"))
    lines = [l for l in r.stderr.splitlines() if l.startswith("chatvault")]
    ok(r.returncode == 1 and len(lines) == 1 and "127.0.0.1" in lines[0],
       "unreachable endpoint: exit 1 and a one-line error naming it", r.stderr)
    ok(sorted(x for x in os.listdir(pdir) if x.endswith(".cvlog")) == segs and
       not [x for x in os.listdir(pdir) if x.endswith(".cold")],
       "unreachable endpoint: no segment removed, none marked shipped", os.listdir(pdir))
    ok("testing-secret" not in r.stderr + r.stdout, "the secret key is never printed")

    # A file:// target that is log.dir (or holds it) would make each object
    # the segment itself: refused as a config error, nothing removed.
    def cvlogs(d):
        return sorted(x for x in os.listdir(d) if x.endswith(".cvlog"))
    for t in ("file://" + log, "file://" + pdir, "file://" + work):
        r = cv(log, "cold", "ship", target=t, extra=("cold.hot_window=0",))
        lines = [l for l in r.stderr.splitlines() if l.startswith("chatvault")]
        ok(r.returncode == 2 and len(lines) == 1 and "log.dir" in lines[0] and
           cvlogs(pdir) == segs and
           not [x for x in os.listdir(pdir) if x.endswith(".cold")],
           "target %s overlapping log.dir: exit 2, one line, nothing removed" % t, r.stderr)
    # The same with the log named by --log-dir (log.dir elsewhere).
    r = cv(os.path.join(work, "elsewhere"), "cold", "ship", "--log-dir", log,
           target="file://" + log, extra=("cold.hot_window=0",))
    ok(r.returncode == 2 and "log.dir" in r.stderr and cvlogs(pdir) == segs,
       "--log-dir overlapping the target: exit 2, nothing removed", r.stderr)
    # A cache directory that is log.dir would be pruned of live segments.
    old_t = time.time() - 7200
    for s_ in segs:
        os.utime(os.path.join(pdir, s_), (old_t, old_t))
    for cd in (log, pdir):
        r = cv(log, "cold", "ship", target="file://" + os.path.join(work, "cd-remote"),
               extra=("cold.cache_dir=" + cd, "cold.cache_keep=0", "cold.hot_window=off"))
        ok(r.returncode == 2 and "cold.cache_dir" in r.stderr and cvlogs(pdir) == segs,
           "cold.cache_dir %s inside or equal to the log: exit 2, nothing deleted" % cd,
           r.stderr)
    for s_ in segs:
        os.utime(os.path.join(pdir, s_), None)

    # A missing bucket.
    r = cv(log, "cold", "ship", target="s3://no-such-bucket", extra=s3opts)
    ok(r.returncode == 1 and "no such bucket" in r.stderr.lower(),
       "missing bucket: exit 1 and says so", r.stderr)

    # A dry run changes nothing.
    r = cv(log, "cold", "ship", "--dry-run", target=s3, extra=s3opts + ("cold.hot_window=0",))
    ok(r.returncode == 0 and r.stderr.count("would ship") == len(segs) - 1 and
       not [x for x in os.listdir(pdir) if x.endswith(".cold")] and
       not moto.objects("cvbucket"), "--dry-run says what it would ship and ships nothing",
       r.stderr)

    # Ship, keeping local copies.
    r = cv(log, "cold", "ship", target=s3, extra=s3opts)
    ok(r.returncode == 0, "cold ship exits 0", r.stderr)
    stubs = sorted(x for x in os.listdir(pdir) if x.endswith(".cvlog.cold"))
    ok(len(stubs) == len(segs) - 1, "every sealed segment but the open one is marked shipped",
       stubs)
    objs = moto.objects("cvbucket", "off-site/")
    want = {"off-site/chat.general-0/" + s: os.path.getsize(os.path.join(pdir, s))
            for s in segs[:-1]}
    ok(objs == want, "the bucket holds each sealed segment with its size", (objs, want))
    r = cv(log, "cold", "ship", target=s3, extra=s3opts)
    ok(r.returncode == 0 and "0 segments shipped" in r.stderr,
       "a second ship uploads nothing again", r.stderr)

    # A pass that stopped after an upload but before its stub: the object
    # with the same bytes is taken as shipped, not uploaded again.
    os.unlink(os.path.join(pdir, segs[0] + ".cold"))
    r = cv(log, "cold", "ship", target=s3, extra=s3opts)
    ok(r.returncode == 0 and os.path.exists(os.path.join(pdir, segs[0] + ".cold")),
       "a segment whose stub was lost is marked shipped again", r.stderr)

    # Another log shipping to the same place is refused, nothing overwritten.
    other = os.path.join(work, "other")
    make_log(other)
    r = cv(other, "cold", "ship", target=s3, extra=s3opts)
    lines = [l for l in r.stderr.splitlines() if l.startswith("chatvault")]
    ok(r.returncode == 1 and len(lines) == 1 and "not overwritten" in lines[0] and
       moto.objects("cvbucket", "off-site/") == want,
       "another log's segments never overwrite the objects", r.stderr)

    # A hot window not yet passed keeps the local copies.
    r = cv(log, "cold", "ship", target=s3, extra=s3opts + ("cold.hot_window=1h",))
    ok(r.returncode == 0 and
       sorted(x for x in os.listdir(pdir) if x.endswith(".cvlog")) == segs,
       "a hot window of 1h keeps the fresh local copies", r.stderr)

    # Remove the local copies (hot window 0) and read everything back.
    r = cv(log, "cold", "ship", target=s3, extra=s3opts + ("cold.hot_window=0",))
    left = sorted(x for x in os.listdir(pdir) if x.endswith(".cvlog"))
    ok(r.returncode == 0 and left == segs[-1:], "hot window 0 removes the shipped local copies",
       (r.stderr, left))
    r, after = records(log, target=s3, extra=s3opts)
    ok(r.returncode == 0 and after == before,
       "log cat reads every record back from the cold tier", r.stderr[-2000:])
    r = cv(log, "log", "check", target=s3, extra=s3opts)
    ok(r.returncode == 0 and "records=900" in r.stdout, "log check passes over cold segments",
       r.stdout + r.stderr)
    # The bucket gone (here: another name): the target is not there, which
    # is a runtime failure (exit 1), never damage (exit 3).
    empty_cache = ("cold.cache_dir=" + os.path.join(work, "empty-cache"),)
    r = cv(log, "log", "check", target="s3://no-such-bucket", extra=s3opts + empty_cache)
    ok(r.returncode == 1 and "no such bucket" in r.stderr and "damage" not in r.stderr,
       "log check with the bucket missing: exit 1, not damage", r.stdout + r.stderr)
    r = cv(log, "cold", "fetch", target="s3://no-such-bucket", extra=s3opts + empty_cache)
    ok(r.returncode == 1, "cold fetch with the bucket missing: exit 1", r.stderr)
    # The cache: copies not read for cold.cache_keep are pruned by a pass.
    cache = os.path.join(log, ".cold-cache", "off-site", "chat.general-0")
    cached = sorted(os.listdir(cache))
    ok(cached == segs[:-1], "every cold segment read is in the cache", cached)
    old = time.time() - 7200
    for name in cached[:2]:
        os.utime(os.path.join(cache, name), (old, old))
    r = cv(log, "cold", "ship", target=s3, extra=s3opts + ("cold.cache_keep=1h",))
    ok(r.returncode == 0 and sorted(os.listdir(cache)) == cached[2:] and
       "2 cached copies pruned" in r.stderr,
       "a pass prunes the copies not read for cold.cache_keep", (r.stderr, os.listdir(cache)))
    r, again = records(log, target=s3, extra=s3opts)
    ok(r.returncode == 0 and again == before, "pruned copies are fetched again when read",
       r.stderr[-1500:])
    r = cv(log, "log", "check")
    ok(r.returncode != 0 and "set cold.target" in r.stderr,
       "without cold.target a cold segment is an error, not skipped", r.stdout + r.stderr)
    r = cv(log, "cold", "list", target=s3, extra=s3opts)
    ok(r.stdout.count("cold ") == len(segs) - 1 and "active" in r.stdout, "cold list",
       r.stdout)

    # A tampered object is damage.
    shutil.rmtree(os.path.join(log, ".cold-cache"), ignore_errors=True)
    victim = "/cvbucket/off-site/chat.general-0/" + segs[2]
    st, data = http("GET", victim)
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 1
    http("PUT", victim, bytes(bad))
    r = cv(log, "log", "check", target=s3, extra=s3opts)
    ok(r.returncode == 3 and segs[2] in r.stderr and "not what was shipped" in r.stderr,
       "a tampered object is reported as damage (exit 3)", r.stdout + r.stderr)
    r = cv(log, "cold", "fetch", target=s3, extra=s3opts)
    ok(r.returncode == 3, "cold fetch reports the damaged copy (exit 3)", r.stderr)
    http("DELETE", victim)
    r = cv(log, "log", "check", target=s3, extra=s3opts)
    ok(r.returncode == 3 and segs[2] in r.stderr, "a missing object is reported as damage",
       r.stdout + r.stderr)

    # moto checking signatures and policies: chatvault's SigV4 must pass,
    # a wrong secret must be a one-line 403 that removes nothing.
    authwork = os.path.join(work, "auth")
    os.mkdir(authwork)
    amoto = motolib.Moto(authwork, env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    try:
        amoto.enforce_auth()
        st, _ = amoto.request("PUT", "/signed")
        ok(st == 200, "with auth enforced, a bucket is created with the user's keys", st)
        acred = amoto.credentials_file(os.path.join(authwork, "s3.cred"))
        log3 = os.path.join(work, "log3")
        make_log(log3)
        aopts = ("cold.endpoint=" + amoto.endpoint, "cold.credentials_file=" + acred)
        badcred = os.path.join(authwork, "bad.cred")
        with open(badcred, "w") as f:
            f.write("access_key_id = %s\nsecret_access_key = wrong\n" % amoto.access)
        os.chmod(badcred, 0o600)
        r = cv(log3, "cold", "ship", target="s3://signed",
               extra=("cold.endpoint=" + amoto.endpoint, "cold.credentials_file=" + badcred,
                      "cold.hot_window=0"))
        lines = [l for l in r.stderr.splitlines() if l.startswith("chatvault")]
        p3 = os.path.join(log3, "chat.general-0")
        ok(r.returncode == 1 and len(lines) == 1 and "403" in lines[0] and
           len([x for x in os.listdir(p3) if x.endswith(".cvlog")]) == len(segs),
           "a wrong secret: one line with the 403, nothing removed", r.stderr)
        r = cv(log3, "cold", "ship", target="s3://signed", extra=aopts + ("cold.hot_window=0",))
        ok(r.returncode == 0 and len(amoto.objects("signed")) == len(segs) - 1 and
           len([x for x in os.listdir(p3) if x.endswith(".cvlog")]) == 1,
           "chatvault's SigV4 requests pass moto's signature check", r.stderr)
        r, after3 = records(log3, target="s3://signed", extra=aopts)
        ok(r.returncode == 0 and len(after3) == 900, "and read back signed", r.stderr[-1500:])
    finally:
        amoto.close()

    # A directory target round-trips.
    log2 = os.path.join(work, "log2")
    make_log(log2)
    remote = os.path.join(work, "remote")
    r = cv(log2, "cold", "ship", target="file://" + remote, extra=("cold.hot_window=0",))
    p2 = os.path.join(log2, "chat.general-0")
    ok(r.returncode == 0 and len([x for x in os.listdir(p2) if x.endswith(".cvlog")]) == 1,
       "file:// target: shipped and local copies removed", r.stderr)
    ok(sorted(os.listdir(os.path.join(remote, "chat.general-0"))) == segs[:-1],
       "file:// target holds the sealed segments", os.listdir(remote))
    r, after2 = records(log2, target="file://" + remote)
    def proj(recs):
        return [(x["offset"], x["message_id"], x["body"]) for x in recs]

    ok(r.returncode == 0 and proj(after2) == proj(before),
       "file:// target: log cat reads everything",
       r.stderr[-2000:])
    # The directory target not mounted (gone, or an empty mount point
    # without its marker): exit 1, not damage.
    shutil.rmtree(os.path.join(log2, ".cold-cache"), ignore_errors=True)
    os.rename(remote, remote + ".away")
    r = cv(log2, "log", "check", target="file://" + remote)
    ok(r.returncode == 1 and "not there" in r.stderr,
       "file:// target missing: log check exits 1, not 3", r.stdout + r.stderr)
    os.mkdir(remote)
    r = cv(log2, "log", "check", target="file://" + remote)
    ok(r.returncode == 1 and ".chatvault-cold" in r.stderr,
       "file:// target empty, no marker: exit 1, not 3", r.stdout + r.stderr)
    # ... and shipping to it would put the "off-site" copies on this disk and
    # make the earlier ones look lost: refused, the empty directory untouched.
    r = cv(log2, "cold", "ship", target="file://" + remote, extra=("cold.hot_window=0",))
    ok(r.returncode == 1 and "shipped segments to it before" in r.stderr and
       os.listdir(remote) == [],
       "cold ship to an empty mount point of a target shipped to before: refused, "
       "nothing written", r.stdout + r.stderr)
    os.rmdir(remote)
    os.rename(remote + ".away", remote)
    os.unlink(os.path.join(remote, "chat.general-0", segs[1]))
    r = cv(log2, "log", "check", target="file://" + remote)
    ok(r.returncode == 3 and segs[1] in r.stderr,
       "file:// target there, an object missing: damage (exit 3)", r.stdout + r.stderr)
finally:
    moto.close()
    shutil.rmtree(work, ignore_errors=True)

print(f"1..{n}")
sys.exit(1 if failed else 0)
