// The dashboard in a real browser while messages flow: started by
// run_dashboard.py (which owns the broker); prints one JSON line per check.
//
// History: messages flow for CV_DASHBOARD_TRAFFIC_S seconds (default 75)
// BEFORE the page is opened; the fresh page must chart those seconds (from
// /api/history), for the totals and for one channel picked by clicking its
// row. Issue 20's "a page loaded after 5 minutes of traffic shows 5 minutes
// of history" is this check with CV_DASHBOARD_TRAFFIC_S=300.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const URL = process.env.CV_URL;
const BIN = process.env.CV_BIN;
const CONFIG = process.env.CV_CONFIG;
const LOCKER = JSON.parse(process.env.CV_LOCKER);
const ART = process.env.CV_ARTIFACT_DIR;
const STALL_RGB = "rgb(240, 123, 45)";
const STOP_RGB = "rgb(181, 102, 232)";
const OK_RGB = "rgb(47, 184, 107)";
const TRAFFIC_S = Number(process.env.CV_DASHBOARD_TRAFFIC_S || 75);
let failures = 0;

function check(ok, name, diag) {
  if (!ok) failures++;
  console.log(JSON.stringify({ ok: !!ok, name, diag: ok ? undefined : String(diag ?? "") }));
  return ok;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// chatvault refuses CHATVAULT_* variables that name no key: none are passed.
const childEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("CHATVAULT_")));

function send(channel, bodies, waitAck) {
  return run(["send", "--channel", channel, ...(waitAck ? ["--wait-ack"] : []), ...bodies]);
}

function run(cmdArgs) {
  return new Promise((resolve) => {
    const args = [cmdArgs[0], "-c", CONFIG, ...cmdArgs.slice(1)];
    const p = spawn(BIN, args, { env: childEnv, stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    p.stderr.on("data", (d) => (err += d));
    p.on("close", (code) => resolve({ code, err }));
  });
}

async function apiLag() {
  const r = await fetch(URL + "/api/lag");
  return r.json();
}

async function apiHistory(query) {
  const r = await fetch(URL + "/api/history" + query);
  return { status: r.status, body: r.ok ? await r.json() : await r.text() };
}

// What the charts hold now: x in seconds, and each chart's series.
function chartData(page) {
  return page.evaluate(() => {
    const c = window.cvDashboard.charts;
    return { t: c.lag.data[0], lag: c.lag.data[1], p50: c.lat.data[1], p99: c.lat.data[2],
      age: c.age.data[1], rate: c.rate.data[1],
      latTicks: JSON.parse(document.getElementById("chart-lat").dataset.yticks || "[]"),
      lagTicks: JSON.parse(document.getElementById("chart-lag").dataset.yticks || "[]"),
      latEmpty: !document.getElementById("lat-empty").hidden };
  });
}

function waitView(page, key) {
  return page.waitForFunction((k) => document.body.dataset.historyLoaded === k, key, { timeout: 15000 });
}

const distinct = (a) => a.length > 1 && new Set(a).size === a.length;

async function waitFor(fn, timeoutMs, stepMs = 250) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last && last.ok) return last;
    await sleep(stepMs);
  }
  return last || { ok: false };
}

// The table as the page shows it: raw values kept in data-value.
function readTable(page) {
  return page.$$eval("#channels tbody tr", (rows) => rows.map((tr) => {
    const o = { channel: tr.dataset.channel, status: tr.dataset.status };
    for (const td of tr.querySelectorAll("td[data-field]")) o[td.dataset.field] = td.dataset.value;
    return o;
  }));
}

const profile = mkdtempSync(join(tmpdir(), "cv-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1440, height: 1000 },
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let locker = null;
let flowing = true;
try {
  const consoleErrors = [];
  const watch = (pg) => {
    pg.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
    pg.on("pageerror", (e) => consoleErrors.push(String(e)));
  };

  // Before any message: an empty latency chart must not read "0 µs" four times.
  const first = context.pages()[0] || (await context.newPage());
  watch(first);
  await first.goto(URL + "/");
  check(await first.title() === "chatvault · ack lag", "dashboard page loads", await first.title());
  await first.waitForFunction(() => Number(document.body.dataset.updates || 0) >= 1, null, { timeout: 15000 });
  check(true, "page polled /api/lag");
  await waitView(first, "|1h");
  const empty = await chartData(first);
  check(distinct(empty.latTicks), "empty latency axis: no two ticks read the same", JSON.stringify(empty.latTicks));
  check(empty.latEmpty, "empty latency chart says \"no acks yet\"");
  check(distinct(empty.lagTicks), "empty lag axis: no two ticks read the same", JSON.stringify(empty.lagTicks));
  await first.screenshot({ path: join(ART, "dashboard-empty.png"), fullPage: true });
  await first.close();

  // Bad parameters of /api/history.
  for (const [q, want] of [["?range=7d", 400], ["?range=%0A1h", 400], ["?channel=a%2Fb", 400],
    ["?foo=1", 400], ["?channel=alpha&channel=beta", 400], ["?channel=nosuch", 404]]) {
    const r = await apiHistory(q);
    check(r.status === want && typeof r.body === "string" && r.body.trim().split("\n").length === 1,
      `/api/history${q}: ${want} with a one-line message`, `${r.status} ${JSON.stringify(r.body)}`);
  }

  // Messages flow: alpha continuously, beta and gamma a few each ...
  let alphaSent = 0;
  const flow = (async () => {
    while (flowing) {
      const bodies = Array.from({ length: 5 }, (_, i) => `alpha ${alphaSent + i}`);
      const r = await send("alpha", bodies, false);
      if (r.code === 0) alphaSent += bodies.length;
      await sleep(200);
    }
  })();
  const trafficStart = Date.now();
  const sb = await send("beta", ["b1", "b2", "b3", "b4"], true);
  check(sb.code === 0, "beta messages acked", sb.err);
  const sg = await send("gamma", ["g1", "g2"], true);
  check(sg.code === 0, "gamma messages acked", sg.err);
  // ... for a while before the page is opened.
  await sleep(Math.max(0, trafficStart + TRAFFIC_S * 1000 - Date.now()));

  const loadedAt = Date.now() / 1000;
  const page = await context.newPage();
  watch(page);
  await page.goto(URL + "/");
  await waitView(page, "|1h");
  const h = await chartData(page);
  const before = h.t.filter((t) => t < loadedAt).length;
  check(h.t.length && h.t[0] <= loadedAt - TRAFFIC_S,
    `a fresh page charts history from before it was opened (earliest point ${TRAFFIC_S} s or more before)`,
    `earliest ${h.t[0]} loaded ${loadedAt} (${(loadedAt - h.t[0]).toFixed(1)} s)`);
  check(before >= TRAFFIC_S * 0.9, `at least ${Math.ceil(TRAFFIC_S * 0.9)} points before page load`, before);
  const acksBefore = h.t.filter((t, i) => t >= trafficStart / 1000 + 5 && t < loadedAt && h.rate[i] > 0).length;
  check(acksBefore >= (TRAFFIC_S - 5) * 0.8, "the rate chart shows the acks of the traffic before page load", acksBefore);
  const latBefore = h.t.filter((t, i) => t >= trafficStart / 1000 + 5 && t < loadedAt && h.p99[i] > 0).length;
  check(latBefore >= (TRAFFIC_S - 5) * 0.8, "the latency chart shows p99 before page load", latBefore);
  check(distinct(h.latTicks), "latency axis labels are not all identical", JSON.stringify(h.latTicks));
  check(!h.latEmpty, "\"no acks yet\" is gone once there are acks");
  const apiTot = (await apiHistory("?range=1h")).body;
  check(apiTot.t_ms && Math.abs(apiTot.t_ms[0] / 1000 - h.t[0]) < 0.001,
    "the chart starts where /api/history starts", `${apiTot.t_ms && apiTot.t_ms[0]} vs ${h.t[0]}`);
  await page.waitForFunction((n) => window.cvDashboard.charts.lag.data[0].length > n, h.t.length, { timeout: 10000 })
    .then(() => check(true, "polls append to the history"), (e) => check(false, "polls append to the history", e));

  const listed = await waitFor(async () => {
    const t = await readTable(page);
    const names = t.map((r) => r.channel).sort();
    return { ok: ["alpha", "beta", "gamma"].every((c) => names.includes(c)), names };
  }, 30000);
  check(listed.ok, "table lists the live channels alpha, beta, gamma", JSON.stringify(listed.names));
  const rate = await waitFor(async () => {
    const t = await readTable(page);
    const a = t.find((r) => r.channel === "alpha");
    return { ok: a && Number(a.rate) > 0, a };
  }, 20000);
  check(rate.ok, "alpha shows a non-zero ack rate while messages flow", JSON.stringify(rate.a));
  const charted = await page.$$eval(".uplot canvas", (cs) => cs.filter((c) => c.width > 100 && c.height > 100).length);
  check(charted === 4, "all four charts are drawn", charted);
  await page.screenshot({ path: join(ART, "dashboard-history.png"), fullPage: true });

  // One channel: click its row.
  await page.click('tr[data-channel="beta"] td.channel');
  await waitView(page, "beta|1h");
  const hb = await chartData(page);
  const apiBeta = (await apiHistory("?channel=beta&range=1h")).body;
  check(apiBeta.t_ms && Math.abs(apiBeta.t_ms[0] / 1000 - hb.t[0]) < 0.001 && hb.t[0] <= loadedAt - TRAFFIC_S + 2,
    "clicking beta charts beta's own history from before page load",
    `${apiBeta.t_ms && apiBeta.t_ms[0]} vs ${hb.t[0]}, loaded ${loadedAt}`);
  const maxOf = (a) => Math.max(0, ...a.filter((v) => v != null));
  check(maxOf(hb.rate) > 0 && maxOf(hb.rate) < maxOf(h.rate),
    "beta's rate is beta's (a few acks), not the totals'", `beta ${maxOf(hb.rate)} totals ${maxOf(h.rate)}`);
  const sel = await page.$eval("#sel-channel", (e) => e.value);
  check(sel === "beta" && (await page.evaluate(() => location.hash)).includes("channel=beta"),
    "the select box and the URL show beta", sel);
  const partsOk = await waitFor(async () => {
    const d = await apiLag();
    const want = d.channels.find((c) => c.channel === "beta").partitions;
    const got = await page.$$eval("#partitions tbody tr", (rows) => rows.map((tr) => {
      const o = {};
      for (const td of tr.querySelectorAll("td[data-field]")) o[td.dataset.field] = td.dataset.value;
      return o;
    }));
    const visible = await page.$eval("#partitions-panel", (e) => !e.hidden);
    const diffs = [];
    if (!visible) diffs.push("panel hidden");
    if (got.length !== want.length) diffs.push(`rows ${got.length} want ${want.length}`);
    for (const p of want) {
      const r = got.find((x) => Number(x.partition) === p.partition && x.topic === p.topic);
      if (!r) { diffs.push(`partition ${p.partition} missing`); continue; }
      for (const f of ["lag_messages", "end_offset", "acked_offset", "consumed_offset"])
        if (Number(r[f]) !== p[f]) diffs.push(`${p.partition}.${f}: page ${r[f]} api ${p[f]}`);
      if (r.assigned !== String(p.assigned)) diffs.push(`${p.partition}.assigned`);
    }
    return { ok: diffs.length === 0, diffs };
  }, 10000, 500);
  check(partsOk.ok, "beta's partitions table matches /api/lag (lag, end, acked, consumed, assigned)",
    (partsOk.diffs || []).join("; "));
  await page.screenshot({ path: join(ART, "dashboard-channel.png"), fullPage: true });

  // 24 h: minute points.
  await page.click('#range button[data-range="24h"]');
  await waitView(page, "beta|24h");
  const hm = await page.evaluate(() => window.cvDashboard.view.s.t);
  const steps = hm.slice(1).map((t, i) => t - hm[i]);
  check(hm.length >= 1 && steps.every((d) => d === 60), "24 h shows beta's minute points, 60 s apart",
    JSON.stringify(hm));
  check(hm.length && hm[0] <= loadedAt - TRAFFIC_S + 60, "the minute points reach back to the traffic",
    `${hm[0]} loaded ${loadedAt}`);
  await page.screenshot({ path: join(ART, "dashboard-24h.png"), fullPage: true });
  await page.click('#range button[data-range="1h"]');
  await page.selectOption("#sel-channel", "");
  await waitView(page, "|1h");
  check(!(await page.$eval("#partitions-panel", (e) => !e.hidden)), "back to the totals: partitions hidden");

  flowing = false;
  await flow;
  // Quiet: everything acked; the table must then show what /api/lag says.
  const quiet = await waitFor(async () => {
    const d = await apiLag();
    const a = d.channels.find((c) => c.channel === "alpha");
    return { ok: d.totals.lag_messages === 0 && a && a.acked >= alphaSent, d };
  }, 30000, 500);
  check(quiet.ok, `all ${alphaSent} alpha messages acked, lag 0`, JSON.stringify(quiet.d && quiet.d.totals));
  const fields = ["consumed", "acked", "lag_messages", "rejected", "duplicate", "inflight"];
  const match = await waitFor(async () => {
    const d = await apiLag();
    const t = await readTable(page);
    const diffs = [];
    for (const c of d.channels) {
      const r = t.find((x) => x.channel === c.channel);
      if (!r) { diffs.push(`${c.channel} missing`); continue; }
      for (const f of fields) if (Number(r[f]) !== c[f]) diffs.push(`${c.channel}.${f}: page ${r[f]} api ${c[f]}`);
      if (r.status !== c.status) diffs.push(`${c.channel}.status: page ${r.status} api ${c.status}`);
    }
    return { ok: diffs.length === 0 && t.length === d.channels.length, diffs };
  }, 10000, 400);
  check(match.ok, "table numbers match /api/lag", (match.diffs || []).join("; "));
  // A restore drill: the tile says how long ago a restore last worked.
  const never = await waitFor(async () => {
    const v = await page.$eval("#t-drill", (e) => e.textContent);
    return { ok: v === "never", v };
  }, 20000, 500);
  check(never.ok, "before any drill the restore tile says never", never.v);
  const dr = await run(["drill", "--sample", "20", "--quiet"]);
  check(dr.code === 0, "chatvault drill --sample 20 passes", dr.err);
  const tile = await waitFor(async () => {
    const v = await page.$eval("#t-drill", (e) => e.textContent);
    const n = await page.$eval("#t-drill-note", (e) => e.textContent);
    const bad = await page.$eval("#tile-drill", (e) => e.classList.contains("bad"));
    return { ok: / ago$/.test(v) && n.startsWith("passed: 20 messages") && !bad, v, n, bad };
  }, 40000, 500);
  check(tile.ok, "the restore tile shows the drill that just passed (\"… ago\", 20 messages, not red)",
    JSON.stringify(tile));
  const okColour = await page.$eval('tr[data-channel="alpha"] .pill', (e) => getComputedStyle(e).backgroundColor);
  check(okColour === OK_RGB, "an OK channel is painted green", okColour);
  await page.screenshot({ path: join(ART, "dashboard.png"), fullPage: true });

  // Stall beta: its records are consumed, the PostgreSQL write blocks.
  locker = spawn(LOCKER[0], LOCKER.slice(1), { stdio: ["pipe", "pipe", "inherit"] });
  const locked = await new Promise((resolve) => {
    let out = "";
    locker.stdout.on("data", (d) => { out += d; if (out.includes("locked")) resolve(true); });
    locker.on("close", () => resolve(false));
  });
  check(locked, "chatvault.messages locked by the test's own session");
  const sent = await send("beta", ["stuck 1", "stuck 2", "stuck 3"], false);
  check(sent.code === 0, "published to beta behind the lock", sent.err);
  const stalled = await waitFor(async () => {
    const t = await readTable(page);
    const b = t.find((r) => r.channel === "beta");
    return { ok: b && (b.status === "STALL" || b.status === "STOP"), b };
  }, 40000, 500);
  check(stalled.ok, "beta turns STALL on the page", JSON.stringify(stalled.b));
  const d = await apiLag();
  const beta = d.channels.find((c) => c.channel === "beta");
  check(beta && beta.status === stalled.b?.status && beta.lag_messages >= 3 && beta.lag_seconds > 5,
    "/api/lag agrees: beta stalled with 3 messages waiting for more than 5 s", JSON.stringify(beta));
  const colour = await page.$eval('tr[data-channel="beta"] .pill', (e) => getComputedStyle(e).backgroundColor);
  check(colour === STALL_RGB || colour === STOP_RGB, "stalled channel painted in the STALL/STOP colour", colour);
  const overall = await page.$eval("#overall", (e) => e.dataset.status);
  check(overall === "STALL" || overall === "STOP", "overall status shows the stall", overall);
  const alphaOk = (await readTable(page)).find((r) => r.channel === "alpha");
  check(alphaOk && alphaOk.status === "OK", "a channel with nothing waiting stays OK", JSON.stringify(alphaOk));
  await page.screenshot({ path: join(ART, "dashboard-stall.png"), fullPage: true });

  locker.stdin.end();
  const recovered = await waitFor(async () => {
    const t = await readTable(page);
    const b = t.find((r) => r.channel === "beta");
    return { ok: b && b.status === "OK" && Number(b.lag_messages) === 0, b };
  }, 30000, 500);
  check(recovered.ok, "beta back to OK with lag 0 after the lock is released", JSON.stringify(recovered.b));
  check(consoleErrors.length === 0, "no errors in the browser console", consoleErrors.join("\n"));
} catch (e) {
  check(false, "test body", e && e.stack);
} finally {
  flowing = false;
  if (locker && locker.exitCode === null) locker.kill();
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failures ? 1 : 0);
