"use strict";
// autolb's live dashboard, part 1: helpers, the admin token, the header and overview, pools
// and backends with their actions, and the autoscaler. Part 2 (dashboard_panels.js) draws
// the config view, limits, fleet, events and listeners, and runs the polling loop. Every
// value from the server goes into the page as text (textContent), never as HTML.
const params = new URLSearchParams(location.search);
const POLL_MS = Math.min(10000, Math.max(500, Number(params.get("interval")) || 1500));
const CERT_POLL_MS = 10000;
const HISTORY_MS = 10 * 60 * 1000;
const MAX_EVENTS = 60;
const DAY = 86400;
const NONE = "—";

const st = {
  prev: new Map(),      // "pool\0backend" -> { total, at }
  bytes: null,          // { in, out, at } of the previous poll
  history: new Map(),   // pool -> [{ at, ready, desired, load }]
  reloads: new Map(),   // at_ms -> last_reload record
  certs: new Map(),     // listener -> [{ path, notAfter }]
  limited: new Map(),   // pool -> requests refused by its rate_limit
  certsAt: 0,
  lastOk: 0,
  editing: null,        // "pool\0backend" whose weight is being typed: not redrawn
};

const $ = (id) => document.getElementById(id);
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "data") for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const svg = (tag, attrs) => {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
};
const td = (v, cls) => h("td", { class: cls }, v);
const num = (v) => td(v, "num");
const none = (v) => v === null || v === undefined || Number.isNaN(v);
const fmt = (v, digits = 0) => none(v) ? NONE :
  Number(v).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
const ms = (v) => (none(v) ? NONE : v < 10 ? fmt(v, 2) : v < 100 ? fmt(v, 1) : fmt(v, 0));
const pct = (v) => (none(v) ? NONE : fmt(v * 100, 2) + "%");
function bytes(n) {
  if (none(n)) return NONE;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${fmt(n, i === 0 ? 0 : 1)} ${units[i]}`;
}
const badge = (text, cls) => h("span", { class: "badge " + (cls || text) }, text);
function duration(secs) {
  secs = Math.max(0, Math.floor(secs));
  const d = Math.floor(secs / DAY), hh = Math.floor((secs % DAY) / 3600);
  const mm = Math.floor((secs % 3600) / 60), ss = secs % 60;
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${mm}m`;
  if (mm) return `${mm}m ${ss}s`;
  return `${ss}s`;
}
const clock = (atMs) => new Date(atMs).toLocaleTimeString([], { hour12: false });
const ago = (atMs) => duration((Date.now() - atMs) / 1000) + " ago";

// ---- the admin token --------------------------------------------------------------------
// With admin.read_token_env set, every JSON endpoint but /health needs a bearer token, and
// every POST needs the admin token: the page asks once and keeps it for this tab only
// (sessionStorage).
const TOKEN_KEY = "autolb-admin-token";
const token = () => { try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (_) { return ""; } };
function authHeaders(extra) {
  const headers = Object.assign({}, extra);
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  return headers;
}
class Unauthorized extends Error {}
function askToken(message) {
  $("login").hidden = false;
  $("login-msg").textContent = message;
}
$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const t = $("token").value.trim();
  if (!t) return;
  try { sessionStorage.setItem(TOKEN_KEY, t); } catch (_) { /* private mode: this poll only */ }
  $("token").value = "";
  $("login").hidden = true;
  st.certsAt = 0;
  pollNow();
});

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store", headers: authHeaders({ Accept: "application/json" }) });
  if (r.status === 401) throw new Unauthorized(path);
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function notice(text, ok) {
  const n = $("notice");
  n.hidden = false;
  n.className = "notice " + (ok ? "ok" : "failed");
  n.textContent = text;
}

// ---- backend actions: POST /backends/state ------------------------------------------------
async function setBackend(pool, backend, body) {
  const payload = Object.assign({ pool, backend }, body);
  let r;
  try {
    r = await fetch("/backends/state", {
      method: "POST", cache: "no-store",
      headers: authHeaders({ "Content-Type": "application/json", Accept: "application/json" }),
      body: JSON.stringify(payload),
    });
  } catch (e) {
    notice(`${backend}: ${e && e.message ? e.message : e}`, false);
    return;
  }
  let answer = {};
  try { answer = await r.json(); } catch (_) { /* no body */ }
  if (r.status === 401 || r.status === 403) {
    askToken("Backend actions need the admin token (admin.token_env): enter it, then try again.");
    notice(`${backend}: ${answer.error || "not allowed"} (HTTP ${r.status})`, false);
    return;
  }
  if (!r.ok) {
    notice(`${backend}: ${answer.error || "HTTP " + r.status}`, false);
    return;
  }
  notice(`${pool} / ${backend}: ${answer.state}, weight ${answer.weight}`, true);
  pollNow();
}

function actions(pool, b) {
  const key = pool + "\0" + b.address;
  const act = (state, label, title) => h("button", {
    type: "button", class: "act", title, disabled: b.state === state,
    data: { action: state },
    on: { click: () => setBackend(pool, b.address, { state }) },
  }, label);
  const weight = h("input", {
    type: "number", min: 1, max: 256, value: b.weight, class: "weight", "aria-label": `weight of ${b.address}`,
    on: {
      focus: () => { st.editing = key; },
      blur: () => { if (st.editing === key) st.editing = null; },
      keydown: (ev) => { if (ev.key === "Enter") setWeight(); },
    },
  });
  const setWeight = () => {
    const w = Number(weight.value);
    if (!Number.isInteger(w) || w < 1 || w > 256) { notice(`${b.address}: the weight is 1 to 256`, false); return; }
    st.editing = null;
    setBackend(pool, b.address, { state: b.state || "ready", weight: w });
  };
  return h("div", { class: "actions" },
    act("ready", "ready", "take requests again"),
    act("drain", "drain", "no new requests or sessions; pinned ones finish"),
    act("maint", "maint", "maintenance: no requests at all"),
    weight,
    h("button", { type: "button", class: "act", data: { action: "weight" }, on: { click: setWeight } }, "set"));
}

// ---- header and overview -------------------------------------------------------------------
function renderHeader(health) {
  $("version").textContent = "v" + health.version;
  const s = $("status");
  s.textContent = health.status;
  s.dataset.status = health.status;
  $("uptime").textContent = duration(health.uptime_seconds);
  $("workers").textContent = health.workers;
  const c = health.config || {};
  $("config").textContent = `generation ${c.generation ?? "?"}, hash ${(c.hash || "?").slice(0, 12)}`;
  const r = c.last_reload;
  const el = $("reload");
  el.replaceChildren();
  if (r) {
    st.reloads.set(r.at_ms, r);
    el.append(badge(r.result, r.result === "success" ? "up" : "failure"), ` ${r.trigger}, ${ago(r.at_ms)}`);
    if (r.errors) el.append(` (${r.errors} error${r.errors === 1 ? "" : "s"})`);
  } else {
    el.textContent = "none since start";
  }
}

function renderOverview(perf, lb, now) {
  const o = perf.overall;
  $("o-rps").textContent = fmt(o.rps_1s, 1);
  $("o-rps-more").textContent =
    `10 s ${fmt(o.rps_10s, 1)} · 1 min ${fmt(o.rps_60s, 1)} · peak ${fmt(o.peak_rps)}` +
    (o.peak_at_ms ? ` (${clock(o.peak_at_ms)})` : "");
  $("o-err").textContent = pct(o.error_rate);
  const lat = (l) => (l && !none(l.p50) ? `${ms(l.p50)} / ${ms(l.p95)} / ${ms(l.p99)}` : NONE);
  $("o-lat").textContent = lat(o.latency_ms);
  $("o-lat-10").textContent = `10 s: ${lat(o.latency_10s_ms)}`;
  $("o-active").textContent = fmt(o.active_requests);
  $("o-conns").textContent = fmt(o.active_connections);
  let up = 0, total = 0, bin = 0, bout = 0;
  for (const p of lb.pools) {
    for (const b of p.backends) { total++; if (b.health === "up") up++; }
    bin += (p.bytes ? p.bytes.in : 0) + (p.tcp ? p.tcp.bytes_in : 0);
    bout += (p.bytes ? p.bytes.out : 0) + (p.tcp ? p.tcp.bytes_out : 0);
  }
  $("o-up").textContent = `${up} / ${total}`;
  const prev = st.bytes;
  st.bytes = { in: bin, out: bout, at: now };
  if (prev && now > prev.at && bin >= prev.in && bout >= prev.out) {
    const secs = (now - prev.at) / 1000;
    $("o-bytes").textContent = `${bytes((bin - prev.in) / secs)} / ${bytes((bout - prev.out) / secs)}`;
  }
  $("o-bytes-total").textContent = `total ${bytes(bin)} in, ${bytes(bout)} out`;
}

// ---- pools and backends ----------------------------------------------------------------------
function backendRate(pool, b, now) {
  const key = pool + "\0" + b.address;
  const prev = st.prev.get(key);
  st.prev.set(key, { total: b.requests_total, at: now });
  if (!prev || now <= prev.at || b.requests_total < prev.total) return null;
  return (b.requests_total - prev.total) / ((now - prev.at) / 1000);
}

function lastCheck(c) {
  if (!c) return NONE;
  return `${c.ok ? "ok" : "failed"} ${ms(c.took_ms)} ms, ${ago(c.at_ms)}` + (c.detail ? ` (${c.detail})` : "");
}

function healthBadge(b) {
  const mode = b.state && b.state !== "ready" ? b.state : null;
  if (mode === "maint") return badge("maint", "disabled");
  if (mode === "drain" || b.draining) return badge(`${b.health}, draining`, b.health === "up" ? "draining" : b.health);
  return badge(b.health, b.health);
}

function queueStat(q) {
  if (!q) return null;
  const refused = (q.refused.full || 0) + (q.refused.timeout || 0);
  return h("span", { class: "stat", data: { field: "queue" } }, "slots ",
    h("b", {}, `${q.inflight}/${q.max_inflight}`), " queued ", h("b", {}, `${q.queued}/${q.max_queue}`),
    refused ? h("b", { class: "bad" }, ` ${fmt(refused)} refused`) : null);
}

function renderPools(lb, perf, now) {
  // Keep the row whose weight is being typed: redraw everything else.
  if (st.editing && document.activeElement && document.activeElement.classList.contains("weight")) return;
  const root = $("pools");
  const frag = document.createDocumentFragment();
  for (const p of lb.pools) {
    const pp = (perf.pools || {})[p.name] || { latency_ms: {} };
    const readyCls = p.ready === p.total ? "up" : p.ready === 0 ? "down" : "warn";
    const head = h("div", { class: "pool-head" },
      h("h3", {}, p.name),
      badge(`${p.ready}/${p.total} ready`, readyCls),
      p.panic ? badge("panic", "down") : null,
      h("span", { class: "stat" }, "algorithm ", h("b", {}, p.algorithm)),
      p.affinity ? h("span", { class: "stat" }, "affinity ", h("b", {}, p.affinity)) : null,
      h("span", { class: "stat" }, "req/s ", h("b", { data: { field: "rps1" } }, fmt(pp.rps_1s, 1)),
        h("span", { class: "muted" }, " (10 s ", h("span", { data: { field: "rps10" } }, fmt(pp.rps_10s, 1)),
          ", 1 min ", h("span", { data: { field: "rps60" } }, fmt(pp.rps_60s, 1)), ")")),
      h("span", { class: "stat" }, "p95 ", h("b", { data: { field: "p95" } }, ms((pp.latency_ms || {}).p95)), " ms"),
      h("span", { class: "stat" }, "errors ", h("b", {}, pct(pp.error_rate))),
      h("span", { class: "stat" }, "in flight ", h("b", {}, fmt(p.active_requests))),
      queueStat(p.queue),
      p.bytes ? h("span", { class: "stat", data: { field: "bytes" } }, "bytes in/out ", h("b", {}, `${bytes(p.bytes.in)} / ${bytes(p.bytes.out)}`)) : null,
      p.tcp ? h("span", { class: "stat" }, "TCP open ", h("b", {}, fmt(p.tcp.open_connections)),
        " in/out ", h("b", {}, `${bytes(p.tcp.bytes_in)} / ${bytes(p.tcp.bytes_out)}`)) : null,
      h("span", { class: "stat" }, "WebSockets ", h("b", {}, fmt(p.websockets))));
    const rows = p.backends.map((b) => {
      const rps = backendRate(p.name, b, now);
      const r = b.responses || {};
      return h("tr", { data: { backend: b.address, health: b.health, state: b.state || "ready" } },
        td(b.address),
        td(healthBadge(b)),
        num(b.config_weight && b.config_weight !== b.weight ? `${b.weight} (${b.config_weight})` : b.weight),
        num(fmt(b.active_requests)),
        num(fmt(b.websockets)),
        num(rps === null ? NONE : fmt(rps, 1)),
        num(ms(b.latency_ms.ewma)),
        num(fmt(b.requests_total)),
        num(fmt(r["2xx"])), num(fmt(r["3xx"])), num(fmt(r["4xx"])), num(fmt(r["5xx"])),
        num(fmt(b.failures)),
        num(fmt(b.ejections)),
        num(typeof b.slow_start_factor === "number" && b.slow_start_factor < 1 ? fmt(b.slow_start_factor * 100) + "%" : NONE),
        td(lastCheck(b.check), "wrap"),
        td(actions(p.name, b)));
    });
    const table = h("table", { class: "grid" },
      h("thead", {}, h("tr", {},
        ["backend", "health", "weight", "in flight", "WS", "req/s", "EWMA ms", "total",
         "2xx", "3xx", "4xx", "5xx", "failed", "ejections", "slow start", "last check", "actions"]
          .map((t, i) => h("th", { class: i >= 2 && i <= 14 ? "num" : null }, t)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 17, class: "muted" }, "No backends (yet)."))));
    frag.append(h("div", { class: "pool", data: { pool: p.name } }, head, h("div", { class: "table-wrap" }, table)));
  }
  root.replaceChildren(frag);
}

// ---- autoscaler ----------------------------------------------------------------------------
function recordHistory(scaling, now) {
  for (const p of scaling.pools) {
    let hist = st.history.get(p.pool);
    if (!hist) {
      hist = [];
      // Seed from the pool's scaling events, so that a fresh page shows the recent past.
      const evs = (p.events || []).slice().reverse().filter((e) => now - e.at_ms < HISTORY_MS);
      for (const e of evs) hist.push({ at: e.at_ms, ready: e.from, desired: e.to, load: null }, { at: e.at_ms + 1, ready: e.to, desired: e.to, load: null });
      st.history.set(p.pool, hist);
    }
    const s = p.signals || {};
    hist.push({ at: now, ready: p.current, desired: p.desired, load: s.inflight_per_instance ?? null });
    while (hist.length && now - hist[0].at > HISTORY_MS) hist.shift();
  }
}

function chart(hist, p, now) {
  const W = 600, H = 150, L = 30, R = 36, T = 8, B = 18;
  const el = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
    "aria-label": `instances and load of ${p.pool} over the last minutes` });
  // The last 2 to 10 minutes: as much as this page has seen (or the events told).
  const span = Math.min(HISTORY_MS, Math.max(120000, hist.length ? now - hist[0].at : 0));
  const t0 = now - span;
  const x = (t) => L + ((t - t0) / span) * (W - L - R);
  const maxN = Math.max(1, p.max, ...hist.map((q) => Math.max(q.ready, q.desired)));
  const yN = (n) => T + (1 - n / maxN) * (H - T - B);
  const loads = hist.map((q) => q.load).filter((v) => v !== null && v !== undefined);
  const maxL = Math.max(1, ...loads) * 1.1;
  const yL = (v) => T + (1 - v / maxL) * (H - T - B);
  el.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  for (const n of [0, Math.round(maxN / 2), maxN]) {
    el.append(svg("line", { class: "axis", x1: L, y1: yN(n), x2: W - R, y2: yN(n), "stroke-dasharray": "2 4" }));
    const t = svg("text", { x: L - 4, y: yN(n) + 3, "text-anchor": "end" }); t.textContent = n; el.append(t);
  }
  const tl = svg("text", { x: W - R + 4, y: T + 8 }); tl.textContent = fmt(maxL, 0); el.append(tl);
  const minutes = span / 60000;
  for (const m of [minutes, minutes / 2, 0]) {
    const t = svg("text", { x: x(now - m * 60000), y: H - 4, "text-anchor": m === 0 ? "end" : m === minutes ? "start" : "middle" });
    t.textContent = m === 0 ? "now" : `-${fmt(m, m < 3 ? 1 : 0)}m`; el.append(t);
  }
  if (hist.length) {
    // `lift` draws a line a little above its value, so that desired stays visible where it
    // equals ready.
    const step = (key, lift) => {
      let d = "";
      hist.forEach((q, i) => {
        const px = Math.max(L, x(q.at)).toFixed(1), py = (yN(q[key]) - lift).toFixed(1);
        d += i === 0 ? `M${px},${py}` : `H${px}V${py}`;
      });
      return d + `H${x(now).toFixed(1)}`;
    };
    const ready = step("ready", 0);
    el.append(svg("path", { class: "ready-area", d: `${ready}V${H - B}H${Math.max(L, x(hist[0].at)).toFixed(1)}Z` }));
    el.append(svg("path", { class: "ready", d: ready }));
    const pts = hist.filter((q) => q.load !== null && q.load !== undefined)
      .map((q) => `${Math.max(L, x(q.at)).toFixed(1)},${yL(q.load).toFixed(1)}`);
    if (pts.length > 1) el.append(svg("polyline", { class: "load", points: pts.join(" ") }));
    // Desired last: on top of everything.
    el.append(svg("path", { class: "desired", d: step("desired", 2.5) }));
  }
  return el;
}

function renderScaling(scaling, cluster, now) {
  const root = $("scaling");
  if (!scaling.pools.length) {
    root.replaceChildren(h("p", { class: "muted" }, "No autoscaled pool."));
    return;
  }
  const frag = document.createDocumentFragment();
  for (const p of scaling.pools) {
    const s = p.signals || {};
    const d = p.last_decision;
    const info = h("dl", { class: "kv" },
      h("dt", {}, "ready / desired"), h("dd", { data: { field: "current" } }, `${p.current} / ${p.desired}`),
      h("dt", {}, "min / max"), h("dd", {}, `${p.min} / ${p.max}`),
      h("dt", {}, "starting / draining"), h("dd", {}, `${p.starting} / ${p.draining}`),
      h("dt", {}, "in flight / instance"), h("dd", {}, fmt(s.inflight_per_instance, 2)),
      h("dt", {}, "req/s / instance"), h("dd", {}, fmt(s.rps_per_instance, 1)),
      h("dt", {}, "p95 ms"), h("dd", {}, ms(s.p95_latency_ms)),
      h("dt", {}, "CPU % / RSS MB"), h("dd", {}, `${fmt(s.cpu_percent, 1)} / ${fmt(s.memory_mb, 1)}`),
      p.manual_hold_seconds ? h("dt", {}, "manual hold") : null,
      p.manual_hold_seconds ? h("dd", {}, duration(p.manual_hold_seconds)) : null);
    const reason = h("div", { class: "reason" }, h("span", { class: "muted" }, "last decision: "),
      d ? `${d.desired} (${d.reason})${d.panic ? " [panic]" : ""}` : "none yet");
    const hist = st.history.get(p.pool) || [];
    const legend = h("div", { class: "legend" },
      h("span", {}, h("i", { class: "l-ready" }), `ready (${p.current})`),
      h("span", {}, h("i", { class: "l-desired" }), `desired (${p.desired})`),
      h("span", {}, h("i", { class: "l-load" }), "in flight per instance (right scale)"));
    const instances = (cluster.instances || []).filter((i) => i.pool === p.pool);
    const itable = h("table", { class: "grid" },
      h("thead", {}, h("tr", {}, ["instance", "state", "pid", "port", "uptime", "restarts", "CPU %", "RSS MB", "in flight", "WS"]
        .map((t, i) => h("th", { class: i >= 2 ? "num" : null }, t)))),
      h("tbody", {}, instances.length ? instances.map((i) => h("tr", { data: { instance: i.id, state: i.state } },
        td(i.id ?? i.address), td(badge(i.state, i.state === "ready" ? "up" : i.state)), num(i.pid ?? NONE), num(i.port ?? NONE),
        num(i.uptime_seconds === undefined ? NONE : duration(i.uptime_seconds)), num(i.restarts ?? NONE), num(fmt(i.cpu_percent, 1)),
        num(i.rss_bytes ? fmt(i.rss_bytes / 1048576, 1) : NONE), num(i.in_flight), num(i.websockets)))
        : h("tr", {}, h("td", { colspan: 10, class: "muted" }, "No instances."))));
    frag.append(h("div", { class: "scaler", data: { pool: p.pool } },
      h("div", { class: "pool-head" }, h("h3", {}, p.pool),
        badge(`${p.current} ready`, p.current >= p.min && p.current > 0 ? "up" : "warn"),
        p.desired >= p.max && p.max > 0 ? badge("at max", "warn") : null,
        d && d.panic ? badge("panic", "down") : null),
      h("div", { class: "scaler-body" }, h("div", {}, info, reason), h("div", { class: "chart-box" }, chart(hist, p, now), legend)),
      h("div", { class: "table-wrap" }, itable)));
  }
  root.replaceChildren(frag);
}
