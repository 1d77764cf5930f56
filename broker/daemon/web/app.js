/* chatvault dashboard: polls /api/lag every second and updates the page in
 * place. The charts start from the broker's own history (/api/history: the
 * last hour at one point a second, or the last 24 h at one a minute) and
 * then append what each poll says, for the totals or for one channel
 * (picked in the select box or by clicking its row; kept in the URL's
 * #channel=NAME&range=1h|24h). */
"use strict";
(function () {
  const POLL_MS = 1000;
  const RANGE_S = { "1h": 3600, "24h": 86400 };
  const REFETCH_24H_MS = 60000; // minute points: fetch them again each minute
  const ORDER = { ERR: 0, STALL: 1, STOP: 2, WARN: 3, OK: 4 };
  const $ = (id) => document.getElementById(id);

  const fmtInt = (n) => (n == null ? "–" : Math.round(n).toLocaleString("en-US"));
  const fmtRate = (n) => (n == null ? "–" : n < 10 ? n.toFixed(1) : fmtInt(n));
  function fmtSecs(s) {
    if (s == null) return "–";
    if (s === 0) return "0";
    if (s < 0.001) return (s * 1e6).toFixed(0) + " µs";
    if (s < 1) return (s * 1e3).toFixed(s < 0.01 ? 2 : s < 0.1 ? 1 : 0) + " ms";
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }
  function fmtUptime(s) {
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600),
      m = Math.floor((s % 3600) / 60);
    return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${Math.floor(s % 60)}s` : `${Math.floor(s)}s`;
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }

  // ---- axis labels: one unit per axis, as many decimals as the tick step
  // needs, so that no two ticks read the same ("0 µs" four times).
  function decimalsFor(step) {
    if (!(step > 0)) return 0;
    return Math.max(0, Math.min(6, Math.ceil(-Math.log10(step) - 1e-9)));
  }
  function uniqueLabels(vals, fmt, dec) {
    let labels = vals.map((v) => fmt(v, dec));
    while (new Set(labels).size < labels.length && dec < 6) labels = vals.map((v) => fmt(v, ++dec));
    return labels;
  }
  function stepOf(vals, incr) {
    if (incr > 0) return incr;
    return vals.length > 1 ? Math.abs(vals[1] - vals[0]) : 1;
  }
  function secsTicks(u, vals, axisIdx, space, incr) {
    const max = Math.max(0, ...vals.map((v) => Math.abs(v)));
    const [unit, div] = max < 1e-3 ? ["µs", 1e-6] : max < 1 ? ["ms", 1e-3] : max < 120 ? ["s", 1]
      : max < 7200 ? ["min", 60] : ["h", 3600];
    return uniqueLabels(vals, (v, dec) => (v === 0 ? "0" : (v / div).toFixed(dec) + " " + unit),
      decimalsFor(stepOf(vals, incr) / div));
  }
  function numTicks(u, vals, axisIdx, space, incr) {
    return uniqueLabels(vals, (v, dec) => (dec === 0 ? fmtInt(v) : v.toFixed(dec)), decimalsFor(stepOf(vals, incr)));
  }
  // Time ticks as local HH:MM:SS (HH:MM from one-minute steps up): uPlot's
  // default puts a date under the first tick, which collides with the next.
  const pad2 = (n) => String(n).padStart(2, "0");
  function timeTicks(u, vals, axisIdx, space, incr) {
    return vals.map((v) => {
      const d = new Date(v * 1000);
      const hm = pad2(d.getHours()) + ":" + pad2(d.getMinutes());
      return incr < 60 ? hm + ":" + pad2(d.getSeconds()) : hm;
    });
  }
  // Tick steps for counts: whole numbers only.
  const INT_INCRS = [];
  for (let m = 1; m <= 1e9; m *= 10) INT_INCRS.push(m, 2 * m, 5 * m);

  function makeChart(target, labels, colors, opts) {
    const ticks = (u, vals, ...rest) => {
      const out = opts.ticks(u, vals, ...rest);
      target.dataset.yticks = JSON.stringify(out); // what the axis shows, for tests
      return out;
    };
    return new uPlot({
      width: target.clientWidth || 600,
      height: 180,
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      scales: {
        // At least a minute wide, so the time axis reads in seconds, not ms.
        x: { time: true, range: (u, min, max) => (min == null ? [Date.now() / 1000 - 60, Date.now() / 1000]
          : [Math.min(min, max - 60), max]) },
        // From 0 to a little above the top; an empty chart gets a sensible
        // span (1 message, 1 ms, ...) instead of a degenerate one.
        y: { range: (u, min, max) => [0, Math.max(max == null || !isFinite(max) ? 0 : max, opts.minTop) * 1.15] },
      },
      axes: [
        { stroke: "#8796a6", grid: { stroke: "#26313d" }, ticks: { stroke: "#26313d" },
          space: 70, values: timeTicks },
        { stroke: "#8796a6", grid: { stroke: "#26313d" }, ticks: { stroke: "#26313d" },
          size: 70, values: ticks, incrs: opts.integer ? INT_INCRS : undefined },
      ],
      series: [{}].concat(labels.map((l, i) => ({
        label: l, stroke: colors[i], width: 2, fill: i === 0 && opts.fill ? colors[i] + "22" : undefined,
        points: { show: false },
        value: (u, v) => (v == null ? "–" : opts.fmt(v)),
        spanGaps: false,
      }))),
    }, [[]].concat(labels.map(() => [])), target);
  }

  const charts = {
    lag: makeChart($("chart-lag"), ["ack lag"], ["#4ea1f3"],
      { fmt: fmtInt, ticks: numTicks, integer: true, minTop: 1, fill: true }),
    lat: makeChart($("chart-lat"), ["p50", "p99"], ["#2fb86b", "#f07b2d"],
      { fmt: fmtSecs, ticks: secsTicks, minTop: 0.001 }),
    age: makeChart($("chart-age"), ["oldest unacked"], ["#e0b232"],
      { fmt: fmtSecs, ticks: secsTicks, minTop: 1, fill: true }),
    rate: makeChart($("chart-rate"), ["acks / s"], ["#b566e8"],
      { fmt: fmtRate, ticks: numTicks, minTop: 1, fill: true }),
  };
  const chartIds = { lag: "chart-lag", lat: "chart-lat", age: "chart-age", rate: "chart-rate" };
  window.addEventListener("resize", () => {
    for (const [k, c] of Object.entries(charts)) c.setSize({ width: $(chartIds[k]).clientWidth, height: 180 });
  });

  // ---- what the charts show
  const view = {
    channel: "", // "" = the totals
    range: "1h",
    gen: 0, // bumped by every switch: answers for an older view are dropped
    loaded: false,
    fetchedAt: 0,
    s: { t: [], lag: [], age: [], rate: [], p50: [], p99: [] },
    tail: null, // 24 h: the newest poll, drawn after the minute points
    error: "",
  };
  const KEYS = ["t", "lag", "age", "rate", "p50", "p99"];

  function readHash() {
    const q = new URLSearchParams(location.hash.slice(1));
    view.channel = q.get("channel") || "";
    view.range = q.get("range") === "24h" ? "24h" : "1h";
  }
  function writeHash() {
    const q = new URLSearchParams();
    if (view.channel) q.set("channel", view.channel);
    if (view.range !== "1h") q.set("range", view.range);
    const h = q.toString();
    history.replaceState(null, "", h ? "#" + h : location.pathname + location.search);
  }

  function draw() {
    const s = view.s;
    const cols = {};
    for (const k of KEYS) cols[k] = view.tail ? s[k].concat([view.tail[k]]) : s[k];
    charts.lag.setData([cols.t, cols.lag]);
    charts.lat.setData([cols.t, cols.p50, cols.p99]);
    charts.age.setData([cols.t, cols.age]);
    charts.rate.setData([cols.t, cols.rate]);
    const anyLat = cols.p50.some((v) => v != null) || cols.p99.some((v) => v != null);
    $("lat-empty").hidden = anyLat || !view.loaded;
    const who = view.channel ? `channel ${view.channel}` : "all channels";
    const span = view.range === "24h" ? "last 24 h, per minute (maximum; rate: mean)" : "last hour, per second";
    const first = cols.t.length ? new Date(cols.t[0] * 1000).toLocaleTimeString() : null;
    $("history-note").textContent = view.error ? `${who}: ${view.error}`
      : !view.loaded ? `${who}: loading…`
      : `${who} · ${span}` + (first ? ` · since ${first}` : " · no data yet");
    const root = document.body.dataset;
    root.view = `${view.channel}|${view.range}`;
    root.historyPoints = String(cols.t.length);
  }

  async function loadHistory() {
    const gen = ++view.gen;
    view.loaded = false;
    view.error = "";
    view.tail = null;
    for (const k of KEYS) view.s[k] = [];
    draw();
    const q = new URLSearchParams({ range: view.range });
    if (view.channel) q.set("channel", view.channel);
    try {
      const res = await fetch("api/history?" + q, { cache: "no-store" });
      const body = res.ok ? await res.json() : (await res.text()).trim();
      if (gen !== view.gen) return;
      if (!res.ok) throw new Error(body || "HTTP " + res.status);
      view.s = { t: body.t_ms.map((x) => x / 1000), lag: body.lag_messages, age: body.lag_seconds,
        rate: body.rate, p50: body.p50_s, p99: body.p99_s };
      view.fetchedAt = Date.now();
    } catch (e) {
      if (gen !== view.gen) return;
      view.error = "no history (" + e.message + ")";
    }
    view.loaded = true;
    document.body.dataset.historyLoaded = `${view.channel}|${view.range}`;
    draw();
  }

  function select(channel, range) {
    if (channel === view.channel && (range || view.range) === view.range) return;
    view.channel = channel;
    if (range) view.range = range;
    writeHash();
    syncControls();
    loadHistory();
    if (lastData) renderPartitions(lastData);
  }

  function syncControls() {
    const sel = $("sel-channel");
    if (view.channel && ![...sel.options].some((o) => o.value === view.channel))
      sel.appendChild(new Option(view.channel, view.channel));
    sel.value = view.channel;
    for (const b of document.querySelectorAll("#range button")) b.classList.toggle("on", b.dataset.range === view.range);
    for (const tr of document.querySelectorAll("#channels tbody tr"))
      tr.classList.toggle("selected", tr.dataset.channel === view.channel);
  }

  // One poll's numbers for what the charts show, or null.
  function livePoint(d) {
    let v;
    if (!view.channel) {
      v = { lag: d.totals.lag_messages, age: d.totals.lag_seconds, rate: d.totals.rate,
        p50: d.latency.p50_s, p99: d.latency.p99_s };
    } else {
      const c = d.channels.find((x) => x.channel === view.channel);
      if (!c) return null;
      v = { lag: c.lag_messages, age: c.lag_seconds, rate: c.rate, p50: c.p50_s, p99: c.p99_s };
    }
    v.t = d.time_ms / 1000;
    return v;
  }

  function appendLive(d) {
    if (!view.loaded || view.error) return;
    const v = livePoint(d);
    if (!v) return;
    const s = view.s;
    if (s.t.length && v.t <= s.t[s.t.length - 1]) return;
    if (view.range === "24h") {
      if (Date.now() - view.fetchedAt > REFETCH_24H_MS) {
        view.fetchedAt = Date.now();
        refetch24h();
      }
      view.tail = v;
    } else {
      for (const k of KEYS) s[k].push(v[k]);
      const oldest = v.t - RANGE_S["1h"];
      let n = 0;
      while (n < s.t.length && s.t[n] < oldest) n++;
      if (n) for (const k of KEYS) s[k].splice(0, n);
    }
    draw();
  }

  // The minute points again, without blanking the charts meanwhile.
  async function refetch24h() {
    const gen = view.gen;
    const q = new URLSearchParams({ range: "24h" });
    if (view.channel) q.set("channel", view.channel);
    try {
      const res = await fetch("api/history?" + q, { cache: "no-store" });
      if (!res.ok) return;
      const body = await res.json();
      if (gen !== view.gen) return;
      view.s = { t: body.t_ms.map((x) => x / 1000), lag: body.lag_messages, age: body.lag_seconds,
        rate: body.rate, p50: body.p50_s, p99: body.p99_s };
      draw();
    } catch (e) { /* the next minute tries again */ }
  }

  $("sel-channel").addEventListener("change", (e) => select(e.target.value));
  for (const b of document.querySelectorAll("#range button"))
    b.addEventListener("click", () => select(view.channel, b.dataset.range));
  window.addEventListener("hashchange", () => {
    const before = `${view.channel}|${view.range}`;
    readHash();
    if (`${view.channel}|${view.range}` !== before) {
      syncControls();
      loadHistory();
    }
  });

  // ---- tables

  function renderChannels(channels) {
    const tbody = document.querySelector("#channels tbody");
    channels = channels.slice().sort((a, b) =>
      (ORDER[a.status] - ORDER[b.status]) || (b.lag_messages - a.lag_messages) ||
      a.channel.localeCompare(b.channel));
    const rows = new Map();
    for (const tr of tbody.querySelectorAll("tr")) rows.set(tr.dataset.channel, tr);
    channels.forEach((c, i) => {
      let tr = rows.get(c.channel);
      if (!tr) {
        tr = el("tr");
        tr.dataset.channel = c.channel;
        tr.title = "show " + c.channel + "'s charts and partitions";
        tr.addEventListener("click", () => select(view.channel === c.channel ? "" : c.channel));
        const fields = [["channel", "channel"], ["status", ""], ["rate", "num"], ["lag_messages", "num"],
          ["lag_seconds", "num"], ["p99_s", "num"], ["inflight", "num"], ["consumed", "num"], ["acked", "num"],
          ["rejected", "num"], ["duplicate", "num"], ["why", "why"]];
        for (const [f, cls] of fields) {
          const td = el("td", cls);
          td.dataset.field = f;
          if (f === "status") td.appendChild(el("span", "pill"));
          tr.appendChild(td);
        }
      }
      rows.delete(c.channel);
      tr.className = "st-" + c.status + (c.channel === view.channel ? " selected" : "");
      tr.dataset.status = c.status;
      const set = (f, text, raw) => {
        const td = tr.querySelector(`td[data-field="${f}"]`);
        const target = f === "status" ? td.firstChild : td;
        if (target.textContent !== text) target.textContent = text;
        td.dataset.value = raw;
      };
      set("channel", c.channel, c.channel);
      set("status", c.status, c.status);
      set("rate", fmtRate(c.rate), c.rate);
      set("lag_messages", fmtInt(c.lag_messages), c.lag_messages);
      set("lag_seconds", fmtSecs(c.lag_seconds), c.lag_seconds);
      set("p99_s", fmtSecs(c.p99_s), c.p99_s);
      set("inflight", fmtInt(c.inflight), c.inflight);
      set("consumed", fmtInt(c.consumed), c.consumed);
      set("acked", fmtInt(c.acked), c.acked);
      set("rejected", fmtInt(c.rejected), c.rejected);
      set("duplicate", fmtInt(c.duplicate), c.duplicate);
      set("why", c.status === "OK" ? "" : c.why, c.why);
      tr.querySelector('td[data-field="why"]').title = c.why;
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    });
    for (const tr of rows.values()) tr.remove();
    $("no-channels").hidden = channels.length > 0;
    // The select box: "all channels" and every channel, in name order.
    const sel = $("sel-channel");
    const names = channels.map((c) => c.channel).sort();
    if (view.channel && !names.includes(view.channel)) names.push(view.channel);
    const have = [...sel.options].slice(1).map((o) => o.value);
    if (have.join("\n") !== names.join("\n")) {
      while (sel.options.length > 1) sel.remove(1);
      for (const n of names) sel.appendChild(new Option(n, n));
      sel.value = view.channel;
    }
  }

  function renderPartitions(d) {
    const panel = $("partitions-panel");
    panel.hidden = !view.channel;
    if (!view.channel) return;
    $("partitions-channel").textContent = view.channel;
    const c = d.channels.find((x) => x.channel === view.channel);
    const parts = c ? c.partitions.slice().sort((a, b) => a.topic.localeCompare(b.topic) || a.partition - b.partition) : [];
    const tbody = document.querySelector("#partitions tbody");
    tbody.textContent = "";
    for (const p of parts) {
      const tr = el("tr");
      tr.dataset.partition = String(p.partition);
      tr.dataset.topic = p.topic;
      const cells = [["topic", p.topic, "", p.topic], ["partition", String(p.partition), "num", p.partition],
        ["assigned", p.assigned ? "yes" : "no", p.assigned ? "" : "dim", p.assigned],
        ["lag_messages", fmtInt(p.lag_messages), "num", p.lag_messages],
        ["lag_seconds", fmtSecs(p.lag_seconds), "num", p.lag_seconds],
        ["inflight", fmtInt(p.inflight), "num", p.inflight],
        ["end_offset", offs(p.end_offset), "num", p.end_offset],
        ["acked_offset", offs(p.acked_offset), "num", p.acked_offset],
        ["consumed_offset", offs(p.consumed_offset), "num", p.consumed_offset],
        ["high_watermark", offs(p.high_watermark), "num", p.high_watermark]];
      for (const [f, text, cls, raw] of cells) {
        const td = el("td", cls, text);
        td.dataset.field = f;
        td.dataset.value = String(raw);
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
    $("no-partitions").hidden = parts.length > 0;
  }
  const offs = (n) => (n == null || n < 0 ? "–" : String(n));

  function renderStores(d) {
    const tbody = document.querySelector("#stores tbody");
    tbody.textContent = "";
    const down = [];
    for (const s of d.stores) {
      const tr = el("tr");
      tr.dataset.store = s.name;
      tr.appendChild(el("td", "", s.name === "postgres" ? "PostgreSQL" : "encrypted log"));
      tr.appendChild(el("td", s.up ? "up" : "down", s.up ? "up" : "DOWN"));
      tr.appendChild(el("td", "num", fmtInt(s.errors)));
      const err = el("td", "err", s.last_error ? s.last_error : "");
      err.title = s.last_error;
      tr.appendChild(err);
      tbody.appendChild(tr);
      if (!s.up) down.push(s.last_error.startsWith(s.name) ? s.last_error : `${s.name}: ${s.last_error}`);
    }
    const b = $("banner-stores");
    b.hidden = down.length === 0;
    b.textContent = !down.length ? ""
      : (d.degraded ? "STORE DOWN — acking with the other store only. "
                    : "STORE DOWN — acks are held until it is back. ") + down.join(" · ");
  }

  function renderRejects(d) {
    const tbody = document.querySelector("#rejects tbody");
    tbody.textContent = "";
    for (const r of d.rejected_recent) {
      const tr = el("tr");
      tr.appendChild(el("td", "", new Date(r.time_ms).toLocaleTimeString()));
      tr.appendChild(el("td", "", r.channel));
      tr.appendChild(el("td", "", r.reason));
      const e = el("td", "err", r.error);
      e.title = r.error;
      tr.appendChild(e);
      tbody.appendChild(tr);
    }
    $("no-rejects").hidden = d.rejected_recent.length > 0;
  }

  // The canary: last publish → durable ack time; red when none came back
  // for three times the window while probes are being sent.
  function renderProbe(d) {
    const p = d.probe;
    const tile = $("tile-probe");
    if (!p) {
      $("t-probe").textContent = "off";
      $("t-probe-note").textContent = "probe.interval_ms = 0";
      tile.classList.remove("bad");
      return;
    }
    const since = p.last_ack_ms ? (d.time_ms - p.last_ack_ms) / 1000 : null;
    const stale = p.sent > 0 && (since == null ? d.uptime_s > 3 * d.window_s : since > 3 * d.window_s);
    $("t-probe").textContent = p.last_latency_s == null ? "–" : fmtSecs(p.last_latency_s);
    $("t-probe-note").textContent = stale
      ? (since == null ? "no probe acked yet" : `no ack for ${fmtSecs(since)}`)
      : `p99 ${fmtSecs(p.p99_s)} · ${fmtInt(p.acked)}/${fmtInt(p.sent)} acked`;
    tile.classList.toggle("bad", stale);
  }

  // Restore drills: how long ago a restore last worked. Red when the newest
  // drill failed, or when none passed for twice drill.interval_s.
  function renderDrill(d) {
    const r = d.drill;
    const tile = $("tile-drill");
    if (!r) return; // not read yet
    const ago = (ms) => fmtSecs((d.time_ms - ms) / 1000) + " ago";
    $("t-drill").textContent = r.last_success_ms ? ago(r.last_success_ms) : "never";
    let note;
    if (!r.last_ms) note = r.interval_s ? `first drill due within ${fmtSecs(r.interval_s)}` : "no drill yet: chatvault drill";
    else if (r.last_passed) note = `passed: ${fmtInt(r.last_sampled)} messages in ${fmtSecs(r.last_seconds)}`;
    else note = `last drill FAILED ${ago(r.last_ms)}: ${r.last_detail}`;
    const note_el = $("t-drill-note");
    note_el.textContent = note;
    note_el.title = note;
    const overdue = r.interval_s > 0 && r.last_ms &&
      (!r.last_success_ms || d.time_ms - r.last_success_ms > 2000 * r.interval_s);
    tile.classList.toggle("bad", (r.last_ms && !r.last_passed) || !!overdue);
  }

  let lastData = null;
  function render(d) {
    lastData = d;
    $("version").textContent = d.version;
    $("uptime").textContent = fmtUptime(d.uptime_s);
    $("window").textContent = d.window_s + " s";
    const o = $("overall");
    o.textContent = d.status;
    o.className = "pill st-" + d.status;
    o.dataset.status = d.status;
    $("t-lag").textContent = fmtInt(d.totals.lag_messages);
    $("t-age").textContent = fmtSecs(d.totals.lag_seconds);
    $("t-rate").textContent = fmtRate(d.totals.rate);
    $("t-p50").textContent = fmtSecs(d.latency.p50_s);
    $("t-p99").textContent = fmtSecs(d.latency.p99_s);
    $("t-rejected").textContent = fmtInt(d.totals.rejected);
    renderProbe(d);
    renderDrill(d);
    $("banner-degraded").hidden = !d.degraded;
    $("degraded-since").textContent = d.degraded && d.degraded_since_ms
      ? "since " + new Date(d.degraded_since_ms).toLocaleTimeString() : "";
    $("channels-note").textContent = d.channels_overflow
      ? "more channels than metrics.max_channels: the rest are summed under _other"
      : "click a row for its charts and partitions";
    renderChannels(d.channels);
    renderPartitions(d);
    renderStores(d);
    renderRejects(d);
    appendLive(d);
  }

  let inFlight = false;
  async function poll() {
    if (inFlight) return;
    inFlight = true;
    const conn = $("conn");
    try {
      const res = await fetch("api/lag", { cache: "no-store" });
      if (!res.ok) throw new Error("HTTP " + res.status);
      const d = await res.json();
      render(d);
      conn.textContent = "updated " + new Date(d.time_ms).toLocaleTimeString();
      conn.className = "meta";
      document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    } catch (e) {
      conn.textContent = "broker unreachable (" + e.message + ") — retrying";
      conn.className = "meta lost";
    } finally {
      inFlight = false;
    }
  }

  // For the browser test and the curious: the charts and what they show.
  window.cvDashboard = { charts, view };

  readHash();
  syncControls();
  loadHistory().then(poll);
  setInterval(poll, POLL_MS);
})();
