/* chatvault dashboard: polls /api/lag every second and updates the page in
 * place; keeps the last five minutes of totals for the charts (uPlot). */
"use strict";
(function () {
  const POLL_MS = 1000;
  const KEEP_S = 300;
  const ORDER = { ERR: 0, STALL: 1, STOP: 2, WARN: 3, OK: 4 };
  const $ = (id) => document.getElementById(id);
  const series = { t: [], lag: [], p50: [], p99: [] };

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

  // Tick steps for counts: whole numbers only.
  const INT_INCRS = [];
  for (let m = 1; m <= 1e9; m *= 10) INT_INCRS.push(m, 2 * m, 5 * m);

  function makeChart(target, labels, colors, yFmt, integer) {
    const opts = {
      width: target.clientWidth || 600,
      height: 220,
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      scales: {
        // At least a minute wide, so the time axis reads in seconds, not ms.
        x: { time: true, range: (u, min, max) => [Math.min(min, max - 60), max] },
        y: { range: (u, min, max) => [0, Math.max(max, 1e-9) * 1.15] },
      },
      axes: [
        { stroke: "#8796a6", grid: { stroke: "#26313d" }, ticks: { stroke: "#26313d" } },
        { stroke: "#8796a6", grid: { stroke: "#26313d" }, ticks: { stroke: "#26313d" },
          size: 70, values: (u, vals) => vals.map(yFmt), incrs: integer ? INT_INCRS : undefined },
      ],
      series: [{}].concat(labels.map((l, i) => ({
        label: l, stroke: colors[i], width: 2, fill: i === 0 ? colors[i] + "22" : undefined,
        points: { show: false },
        value: (u, v) => (v == null ? "–" : yFmt(v)),
        spanGaps: false,
      }))),
    };
    return new uPlot(opts, [[]].concat(labels.map(() => [])), target);
  }

  const lagChart = makeChart($("chart-lag"), ["ack lag"], ["#4ea1f3"], (v) => fmtInt(v), true);
  const latChart = makeChart($("chart-lat"), ["p50", "p99"], ["#2fb86b", "#f07b2d"], (v) => fmtSecs(v));
  window.addEventListener("resize", () => {
    for (const [c, id] of [[lagChart, "chart-lag"], [latChart, "chart-lat"]])
      c.setSize({ width: $(id).clientWidth, height: 220 });
  });

  function pushPoint(d) {
    series.t.push(d.time_ms / 1000);
    series.lag.push(d.totals.lag_messages);
    series.p50.push(d.latency.p50_s);
    series.p99.push(d.latency.p99_s);
    while (series.t.length && series.t[0] < d.time_ms / 1000 - KEEP_S)
      for (const k of Object.keys(series)) series[k].shift();
    lagChart.setData([series.t, series.lag]);
    latChart.setData([series.t, series.p50, series.p99]);
  }

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
        const fields = [["channel", "channel"], ["status", ""], ["rate", "num"], ["lag_messages", "num"],
          ["lag_seconds", "num"], ["inflight", "num"], ["consumed", "num"], ["acked", "num"],
          ["rejected", "num"], ["duplicate", "num"], ["why", "why"]];
        for (const [f, cls] of fields) {
          const td = el("td", cls);
          td.dataset.field = f;
          if (f === "status") td.appendChild(el("span", "pill"));
          tr.appendChild(td);
        }
      }
      rows.delete(c.channel);
      tr.className = "st-" + c.status;
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
  }

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

  function render(d) {
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
    $("banner-degraded").hidden = !d.degraded;
    $("degraded-since").textContent = d.degraded && d.degraded_since_ms
      ? "since " + new Date(d.degraded_since_ms).toLocaleTimeString() : "";
    $("channels-note").textContent = d.channels_overflow
      ? "more channels than metrics.max_channels: the rest are summed under _other" : "";
    renderChannels(d.channels);
    renderStores(d);
    renderRejects(d);
    pushPoint(d);
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
  poll();
  setInterval(poll, POLL_MS);
})();
