"use strict";
// autolb's live dashboard: polls the admin JSON endpoints and redraws. Every value from the
// server goes into the page as text (textContent), never as HTML.
(() => {
  const params = new URLSearchParams(location.search);
  const POLL_MS = Math.min(10000, Math.max(500, Number(params.get("interval")) || 1500));
  const CERT_POLL_MS = 10000;
  const HISTORY_MS = 10 * 60 * 1000;
  const MAX_EVENTS = 60;
  const DAY = 86400;

  const st = {
    prev: new Map(),      // "pool\0backend" -> { total, at }
    history: new Map(),   // pool -> [{ at, ready, desired, load }]
    reloads: new Map(),   // at_ms -> last_reload record
    certs: new Map(),     // listener -> [{ path, notAfter }]
    certsAt: 0,
    lastOk: 0,
  };

  const $ = (id) => document.getElementById(id);
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "data") for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
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
  const fmt = (v, digits = 0) =>
    v === null || v === undefined || Number.isNaN(v) ? "-" :
    Number(v).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
  const ms = (v) => (v === null || v === undefined ? "-" : v < 10 ? fmt(v, 2) : v < 100 ? fmt(v, 1) : fmt(v, 0));
  const pct = (v) => (v === null || v === undefined ? "-" : fmt(v * 100, 2) + "%");
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

  // ---- the admin token ------------------------------------------------------------------
  // With admin.read_token_env set, every JSON endpoint but /health needs a bearer token: the
  // page asks for it once and keeps it for this tab only (sessionStorage).
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

  // ---- header and overview ----------------------------------------------------------
  function renderHeader(health) {
    $("version").textContent = "v" + health.version;
    const s = $("status");
    s.textContent = health.status;
    s.dataset.status = health.status;
    $("uptime").textContent = duration(health.uptime_seconds);
    $("workers").textContent = health.workers;
    const c = health.config || {};
    $("config").textContent = `${c.source || "?"} (generation ${c.generation ?? "?"})`;
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

  function renderOverview(perf, lb) {
    const o = perf.overall;
    $("o-rps").textContent = fmt(o.rps, 1);
    $("o-err").textContent = pct(o.error_rate);
    $("o-lat").textContent = `${ms(o.latency_ms.p50)} / ${ms(o.latency_ms.p95)} / ${ms(o.latency_ms.p99)}`;
    $("o-active").textContent = fmt(o.active_requests);
    $("o-conns").textContent = fmt(o.active_connections);
    let up = 0, total = 0;
    for (const p of lb.pools) for (const b of p.backends) { total++; if (b.health === "up") up++; }
    $("o-up").textContent = `${up} / ${total}`;
  }

  // ---- pools and backends -------------------------------------------------------------
  function backendRate(pool, b, now) {
    const key = pool + "\0" + b.address;
    const prev = st.prev.get(key);
    st.prev.set(key, { total: b.requests_total, at: now });
    if (!prev || now <= prev.at || b.requests_total < prev.total) return null;
    return (b.requests_total - prev.total) / ((now - prev.at) / 1000);
  }

  function lastCheck(c) {
    if (!c) return "-";
    return `${c.ok ? "ok" : "failed"} ${ms(c.took_ms)} ms, ${ago(c.at_ms)}` + (c.detail ? ` (${c.detail})` : "");
  }

  function renderPools(lb, perf, now) {
    const root = $("pools");
    const frag = document.createDocumentFragment();
    for (const p of lb.pools) {
      const pp = (perf.pools || {})[p.name] || { rps: 0, error_rate: 0, latency_ms: {} };
      const readyCls = p.ready === p.total ? "up" : p.ready === 0 ? "down" : "warn";
      const head = h("div", { class: "pool-head" },
        h("h3", {}, p.name),
        badge(`${p.ready}/${p.total} ready`, readyCls),
        p.panic ? badge("panic", "down") : null,
        h("span", { class: "stat" }, "algorithm ", h("b", {}, p.algorithm)),
        p.affinity ? h("span", { class: "stat" }, "affinity ", h("b", {}, p.affinity)) : null,
        h("span", { class: "stat" }, "req/s ", h("b", { data: { field: "rps" } }, fmt(pp.rps, 1))),
        h("span", { class: "stat" }, "p95 ", h("b", { data: { field: "p95" } }, ms(pp.latency_ms.p95)), " ms"),
        h("span", { class: "stat" }, "errors ", h("b", {}, pct(pp.error_rate))),
        h("span", { class: "stat" }, "in flight ", h("b", {}, fmt(p.active_requests))),
        h("span", { class: "stat" }, "WebSockets ", h("b", {}, fmt(p.websockets))));
      const rows = p.backends.map((b) => {
        const rps = backendRate(p.name, b, now);
        const r = b.responses || {};
        return h("tr", { data: { backend: b.address, health: b.health } },
          td(b.address),
          td(badge(b.draining ? `${b.health}, draining` : b.health, b.draining && b.health === "up" ? "draining" : b.health)),
          num(b.weight),
          num(fmt(b.active_requests)),
          num(fmt(b.websockets)),
          num(rps === null ? "-" : fmt(rps, 1)),
          num(ms(b.latency_ms.ewma)),
          num(fmt(b.requests_total)),
          num(fmt(r["2xx"])), num(fmt(r["3xx"])), num(fmt(r["4xx"])), num(fmt(r["5xx"])),
          num(fmt(b.failures)),
          num(fmt(b.ejections)),
          num(typeof b.slow_start_factor === "number" && b.slow_start_factor < 1 ? fmt(b.slow_start_factor * 100) + "%" : "-"),
          td(lastCheck(b.check), "wrap"));
      });
      const table = h("table", { class: "grid" },
        h("thead", {}, h("tr", {},
          ["backend", "health", "weight", "in flight", "WS", "req/s", "EWMA ms", "total",
           "2xx", "3xx", "4xx", "5xx", "failed", "ejections", "slow start", "last check"]
            .map((t, i) => h("th", { class: i >= 2 && i <= 14 ? "num" : null }, t)))),
        h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 16, class: "muted" }, "No backends (yet)."))));
      frag.append(h("div", { class: "pool", data: { pool: p.name } }, head, h("div", { class: "table-wrap" }, table)));
    }
    root.replaceChildren(frag);
  }

  // ---- autoscaler -----------------------------------------------------------------------
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
      hist.push({ at: now, ready: p.current, desired: p.desired, load: s.inflight_per_instance ?? null, rps: s.rps_per_instance ?? null });
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
      const step = (key) => {
        let d = "";
        hist.forEach((q, i) => {
          const px = Math.max(L, x(q.at)).toFixed(1), py = yN(q[key]).toFixed(1);
          d += i === 0 ? `M${px},${py}` : `H${px}V${py}`;
        });
        return d + `H${x(now).toFixed(1)}`;
      };
      const ready = step("ready");
      el.append(svg("path", { class: "ready-area", d: `${ready}V${H - B}H${Math.max(L, x(hist[0].at)).toFixed(1)}Z` }));
      el.append(svg("path", { class: "ready", d: ready }));
      el.append(svg("path", { class: "desired", d: step("desired") }));
      const pts = hist.filter((q) => q.load !== null && q.load !== undefined)
        .map((q) => `${Math.max(L, x(q.at)).toFixed(1)},${yL(q.load).toFixed(1)}`);
      if (pts.length > 1) el.append(svg("polyline", { class: "load", points: pts.join(" ") }));
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
        h("span", {}, h("i", { class: "l-ready" }), "ready instances"),
        h("span", {}, h("i", { class: "l-desired" }), "desired"),
        h("span", {}, h("i", { class: "l-load" }), "in flight per instance (right scale)"));
      const instances = (cluster.instances || []).filter((i) => i.pool === p.pool);
      const itable = h("table", { class: "grid" },
        h("thead", {}, h("tr", {}, ["instance", "state", "pid", "port", "uptime", "restarts", "CPU %", "RSS MB", "in flight", "WS"]
          .map((t, i) => h("th", { class: i >= 2 ? "num" : null }, t)))),
        h("tbody", {}, instances.length ? instances.map((i) => h("tr", { data: { instance: i.id, state: i.state } },
          td(i.id), td(badge(i.state, i.state === "ready" ? "up" : i.state)), num(i.pid ?? "-"), num(i.port),
          num(duration(i.uptime_seconds)), num(i.restarts), num(fmt(i.cpu_percent, 1)),
          num(i.rss_bytes ? fmt(i.rss_bytes / 1048576, 1) : "-"), num(i.in_flight), num(i.websockets)))
          : h("tr", {}, h("td", { colspan: 10, class: "muted" }, "No instances."))));
      frag.append(h("div", { class: "scaler", data: { pool: p.pool } },
        h("div", { class: "pool-head" }, h("h3", {}, p.pool),
          badge(`${p.current} ready`, p.current >= p.min && p.current > 0 ? "up" : "warn"),
          d && d.panic ? badge("panic", "down") : null),
        h("div", { class: "scaler-body" }, h("div", {}, info, reason), h("div", {}, chart(hist, p, now), legend)),
        h("div", { class: "table-wrap" }, itable)));
    }
    root.replaceChildren(frag);
  }

  // ---- events -------------------------------------------------------------------------
  const HEALTH_CLASS = { down: "down", up: "up", ejected: "ejected", ejection_lifted: "info" };
  function renderEvents(lb, scaling) {
    const all = [];
    for (const e of lb.events || []) {
      all.push({ at: e.at_ms, kind: badge(e.event, HEALTH_CLASS[e.event] || "info"), pool: e.pool, what: e.backend, detail: e.detail });
    }
    for (const p of scaling.pools) {
      for (const e of p.events || []) {
        const dir = e.to > e.from ? "scale up" : "scale down";
        all.push({ at: e.at_ms, kind: badge(dir, "scale"), pool: p.pool, what: `${e.from} → ${e.to}`, detail: e.reason });
      }
    }
    for (const r of st.reloads.values()) {
      all.push({ at: r.at_ms, kind: badge("reload " + r.result, r.result === "success" ? "up" : "failure"), pool: "",
        what: r.trigger, detail: r.errors ? `${r.errors} error(s): the running config kept serving` : "" });
    }
    all.sort((a, b) => b.at - a.at);
    const rows = all.slice(0, MAX_EVENTS).map((e) => h("tr", {},
      td(clock(e.at)), td(e.kind), td(e.pool), td(e.what), td(e.detail, "wrap")));
    $("events").replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No events yet."))]));
  }

  // ---- listeners and certificates -------------------------------------------------------
  async function pollCerts(now) {
    if (now - st.certsAt < CERT_POLL_MS) return;
    st.certsAt = now;
    try {
      const r = await fetch("/metrics", { cache: "no-store", headers: authHeaders() });
      if (!r.ok) return;
      const text = await r.text();
      const certs = new Map();
      const re = /^autolb_tls_certificate_expiry_timestamp_seconds\{([^}]*)\}\s+(\S+)/gm;
      for (const m of text.matchAll(re)) {
        const labels = {};
        for (const l of m[1].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2].replace(/\\(.)/g, "$1");
        const list = certs.get(labels.listener) || [];
        list.push({ path: labels.certificate, notAfter: Number(m[2]) });
        certs.set(labels.listener, list);
      }
      st.certs = certs;
    } catch (_) { /* the next poll tries again */ }
  }

  function certCell(listener) {
    const list = st.certs.get(listener.name);
    if (!list || !list.length) return td(listener.protocol === "https" ? "-" : "", "wrap");
    return td(list.map((c) => {
      const days = (c.notAfter - Date.now() / 1000) / DAY;
      const cls = days < 0 ? "expired" : days < 7 ? "soon" : days < 21 ? "near" : "";
      const when = new Date(c.notAfter * 1000).toISOString().slice(0, 10);
      const left = days < 0 ? `expired ${fmt(-days, 0)} days ago` : `${fmt(days, 0)} days left`;
      return h("span", { class: "cert " + cls, data: { days: Math.floor(days) } }, `${c.path}: ${when} (${left})`);
    }), "wrap");
  }

  function renderListeners(lb) {
    const rows = (lb.listeners || []).map((l) => h("tr", { data: { listener: l.name } },
      td(l.name), td(l.listen), td(l.protocol), td(l.pool || "-"), num(fmt(l.connections)), num(fmt(l.accepted)), certCell(l)));
    $("listeners").replaceChildren(...rows);
  }

  // ---- the loop -------------------------------------------------------------------------
  function setLive(ok, message) {
    $("live-dot").className = "dot " + (ok ? "ok" : "stale");
    $("live").textContent = ok ? `live, ${clock(st.lastOk)}` : `stale since ${st.lastOk ? clock(st.lastOk) : "start"}`;
    const err = $("error");
    err.hidden = ok;
    err.textContent = ok ? "" : `Cannot reach the admin API: ${message}. Retrying every ${POLL_MS / 1000} s.`;
  }

  let timer = null;
  function pollNow() {
    clearTimeout(timer);
    tick();
  }

  async function tick() {
    const now = Date.now();
    try {
      const [health, perf, lb, scaling, cluster] = await Promise.all([
        getJSON("/health"), getJSON("/health/performance"), getJSON("/loadbalancer/status"),
        getJSON("/scaling/status"), getJSON("/cluster/status"), pollCerts(now)]);
      recordHistory(scaling, now);
      renderHeader(health);
      renderOverview(perf, lb);
      renderPools(lb, perf, now);
      renderScaling(scaling, cluster, now);
      renderEvents(lb, scaling);
      renderListeners(lb);
      st.lastOk = now;
      document.body.dataset.updated = String(now);
      setLive(true);
    } catch (e) {
      if (e instanceof Unauthorized) {
        const refused = token() !== "";
        if (refused) { try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* nothing kept */ } }
        askToken(refused ? "The token was refused: enter the admin read token again."
          : "This admin API needs a bearer token (admin.read_token_env, or the admin token).");
        setLive(false, "a bearer token is needed");
      } else {
        setLive(false, e && e.message ? e.message : String(e));
      }
    } finally {
      clearTimeout(timer);
      timer = setTimeout(tick, POLL_MS);
    }
  }

  $("interval").textContent = `${POLL_MS / 1000} s`;
  tick();
})();
