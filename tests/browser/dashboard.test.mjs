// The dashboard in a real browser while messages flow: started by
// run_dashboard.py (which owns the broker); prints one JSON line per check.
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
  return new Promise((resolve) => {
    const args = ["send", "-c", CONFIG, "--channel", channel, ...(waitAck ? ["--wait-ack"] : []), ...bodies];
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
  const page = context.pages()[0] || (await context.newPage());
  const consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  await page.goto(URL + "/");
  check(await page.title() === "chatvault · ack lag", "dashboard page loads", await page.title());
  await page.waitForFunction(() => Number(document.body.dataset.updates || 0) >= 1, null, { timeout: 15000 });
  check(true, "page polled /api/lag");

  // Messages flow: alpha continuously, beta and gamma a few each.
  let alphaSent = 0;
  const flow = (async () => {
    while (flowing) {
      const bodies = Array.from({ length: 5 }, (_, i) => `alpha ${alphaSent + i}`);
      const r = await send("alpha", bodies, false);
      if (r.code === 0) alphaSent += bodies.length;
      await sleep(200);
    }
  })();
  const sb = await send("beta", ["b1", "b2", "b3", "b4"], true);
  check(sb.code === 0, "beta messages acked", sb.err);
  const sg = await send("gamma", ["g1", "g2"], true);
  check(sg.code === 0, "gamma messages acked", sg.err);

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
  check(charted === 2, "both charts are drawn", charted);

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
