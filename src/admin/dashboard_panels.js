// autolb's live dashboard, part 2: the HTTP cache, events, the config view (listeners -> routes -> pools,
// hash and generation, reload history), limits and rate limits, the fleet and its shared
// state, listeners and certificates, and the polling loop.

// ---- the HTTP cache --------------------------------------------------------------------------
// Shown only when a pool (or one of its routes) has a cache.
function renderCache(lb) {
  const pools = (lb.pools || []).filter((p) => p.cache);
  $("cache-panel").hidden = pools.length === 0;
  const rows = pools.map((p) => {
    const c = p.cache, r = c.requests;
    const field = (name, v) => h("td", { class: "num", data: { field: name } }, v);
    return h("tr", { data: { pool: p.name } },
      td(p.name), field("hit_ratio", pct(c.hit_ratio)), field("objects", fmt(c.objects)),
      field("bytes", `${bytes(c.bytes)} / ${bytes(c.max_size)}`),
      field("hit", fmt(r.hit)), field("miss", fmt(r.miss)), field("stale", fmt(r.stale)), field("bypass", fmt(r.bypass)));
  });
  $("cache").replaceChildren(...rows);
}

// ---- events --------------------------------------------------------------------------------
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

// ---- routes and config -----------------------------------------------------------------------
const rate = (v) => fmt(v, Number.isInteger(v) ? 0 : 1);
const perIp = (r) => (r ? `${rate(r.per_ip)}/s per IP, burst ${r.burst}` : NONE);

function renderConfig(lb) {
  const c = lb.config;
  if (!c) return;
  const u = c.updates || {};
  $("config-facts").replaceChildren(
    h("dt", {}, "file"), h("dd", { class: "wrap" }, c.source),
    h("dt", {}, "hash"), h("dd", { data: { field: "hash" } }, c.hash),
    h("dt", {}, "generation"), h("dd", { data: { field: "generation" } },
      `${c.generation} (config changes; autoscaler updates ${fmt(u.autoscaler)}, backend state changes ${fmt(u.backend_states)})`));
  // Listeners, each with the routes that can take its requests, then its own pool.
  const rows = [];
  for (const l of c.listeners) {
    const tcp = l.protocol === "tcp";
    rows.push(h("tr", { class: "group", data: { listener: l.name } },
      h("td", { colspan: 5 }, h("b", {}, l.name), ` ${l.listen} (${l.protocol})`,
        l.rate_limit ? h("span", { class: "muted" }, ` · ${perIp(l.rate_limit)}`) : null)));
    if (!tcp) {
      c.routes.forEach((r, i) => rows.push(h("tr", { data: { route: i } },
        num(i + 1), td(r.host || "*"), td(r.path_prefix || "/"), td(h("b", {}, "→ " + r.pool)), td(perIp(r.rate_limit), "wrap"))));
    }
    rows.push(h("tr", { class: "fallback" },
      num(""), td(tcp ? "every connection" : "otherwise", "muted"), td(""),
      td(l.pool ? h("b", {}, "→ " + l.pool) : h("span", { class: "muted" }, "404 (no pool)")), td("")));
  }
  $("routes").replaceChildren(...rows);
  const reloads = Array.isArray(c.reloads) ? c.reloads : [];
  const rrows = reloads.map((r) => {
    const ok = r.result === "success";
    const lines = ok ? (r.changes.length ? r.changes : ["no changes"]) : r.errors;
    return h("tr", { data: { result: r.result } },
      td(clock(r.at_ms)), td(r.trigger), td(badge(ok ? "applied" : "refused", ok ? "up" : "failure")),
      num(r.generation),
      td(h("ul", { class: ok ? "changes" : "errors" }, lines.map((t) => h("li", {}, t))), "wrap"));
  });
  $("reloads").replaceChildren(...(rrows.length ? rrows : [h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No reload since start."))]));
}

// ---- limits and rate limits ----------------------------------------------------------------
function renderLimits(lb) {
  const c = lb.config;
  if (!c) return;
  const rows = [];
  const queues = new Map(lb.pools.map((p) => [p.name, p.queue]));
  for (const l of c.listeners) {
    if (l.rate_limit) rows.push(h("tr", {}, td(`listener ${l.name}`), td(perIp(l.rate_limit), "wrap"), td(NONE), num(NONE)));
  }
  c.routes.forEach((r, i) => {
    if (r.rate_limit) {
      rows.push(h("tr", {}, td(`route ${i + 1} (${r.host || "*"}${r.path_prefix || ""})`, "wrap"),
        td(perIp(r.rate_limit), "wrap"), td(NONE), num(NONE)));
    }
  });
  for (const p of c.pools) {
    if (p.rate_limit) {
      const r = p.rate_limit;
      const refused = st.limited.get(p.name);
      rows.push(h("tr", { data: { limit: "rate", pool: p.name } }, td(`pool ${p.name}`),
        td(`${rate(r.rate)}/s, burst ${r.burst}${r.scope === "cluster" ? ", whole fleet" : ""}`, "wrap"), td(NONE),
        num(refused === undefined ? NONE : fmt(refused))));
    }
    const q = queues.get(p.name);
    if (p.limits) {
      const l = p.limits;
      rows.push(h("tr", { data: { limit: "queue", pool: p.name } }, td(`pool ${p.name}`),
        td(`${l.max_inflight} in flight, queue ${l.max_queue}, wait ${fmt(l.queue_timeout_ms / 1000, 1)} s`, "wrap"),
        td(q ? `${q.inflight} in flight, ${q.queued} queued` : NONE, "wrap"),
        num(q ? `${fmt(q.refused.full)} full, ${fmt(q.refused.timeout)} timed out` : NONE)));
    }
  }
  $("limits").replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No limits configured."))]));
}

// ---- the fleet and shared state ---------------------------------------------------------------
function renderFleet(redis, cluster) {
  const connected = none(redis.connected) ? NONE : redis.connected ? "yes" : "no";
  const kv = h("dl", { class: "kv" },
    h("dt", {}, "shared state"), h("dd", { data: { field: "mode" } }, `${redis.kind} (${redis.mode || NONE})`),
    redis.kind === "memory" ? null : [
      h("dt", {}, "connected"), h("dd", {}, connected),
      h("dt", {}, "round trip"), h("dd", {}, `${ms(redis.round_trip_ms)} ms`),
      h("dt", {}, "errors / reconnects"), h("dd", {}, `${fmt(redis.errors_total)} / ${fmt(redis.reconnects_total)}`),
      redis.last_error ? [h("dt", {}, "last error"), h("dd", { class: "wrap" }, redis.last_error)] : null,
    ],
    h("dt", {}, "this node"), h("dd", { class: "wrap" }, redis.node_id || NONE),
    h("dt", {}, "nodes"), h("dd", {}, fmt(cluster.fleet ? cluster.fleet.nodes_total : 1)));
  const nodes = cluster.nodes || [];
  const table = nodes.length ? h("div", { class: "table-wrap" }, h("table", { class: "grid" },
    h("thead", {}, h("tr", {}, ["node", "admin", "version", "config", "seen"].map((t) => h("th", {}, t)))),
    h("tbody", {}, nodes.map((n) => h("tr", { data: { node: n.id || "" } },
      td(n.id || NONE), td(n.admin || NONE), td(n.version || NONE),
      td(n.config_drift ? badge("differs", "warn") : badge("same", "up")),
      td(none(n.last_seen_seconds_ago) ? NONE : duration(n.last_seen_seconds_ago) + " ago")))))) :
    h("p", { class: "muted small" }, redis.kind === "memory" ? "A single node: no shared state." : "No other node seen.");
  $("fleet").replaceChildren(kv, table);
}

// ---- listeners, certificates and the /metrics poll ------------------------------------------------
async function pollMetrics(now) {
  if (now - st.certsAt < CERT_POLL_MS) return;
  st.certsAt = now;
  try {
    const r = await fetch("/metrics", { cache: "no-store", headers: authHeaders() });
    if (!r.ok) return;
    const text = await r.text();
    const labelsOf = (s) => {
      const labels = {};
      for (const l of s.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2].replace(/\\(.)/g, "$1");
      return labels;
    };
    const certs = new Map();
    for (const m of text.matchAll(/^autolb_tls_certificate_expiry_timestamp_seconds\{([^}]*)\}\s+(\S+)/gm)) {
      const labels = labelsOf(m[1]);
      const list = certs.get(labels.listener) || [];
      list.push({ path: labels.certificate, notAfter: Number(m[2]) });
      certs.set(labels.listener, list);
    }
    st.certs = certs;
    const limited = new Map();
    for (const m of text.matchAll(/^autolb_rate_limited_total\{([^}]*)\}\s+(\S+)/gm)) {
      limited.set(labelsOf(m[1]).pool, Number(m[2]));
    }
    st.limited = limited;
  } catch (_) { /* the next poll tries again */ }
}

function certCell(listener) {
  const list = st.certs.get(listener.name);
  if (!list || !list.length) return td(listener.protocol === "https" ? NONE : "", "wrap");
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
    td(l.name), td(l.listen), td(l.protocol), td(l.pool || NONE), num(fmt(l.connections)), num(fmt(l.accepted)),
    num(l.tcp ? `${bytes(l.tcp.bytes_in)} / ${bytes(l.tcp.bytes_out)}` : NONE), certCell(l)));
  $("listeners").replaceChildren(...rows);
}

// ---- the loop --------------------------------------------------------------------------------
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
    const [health, perf, lb, scaling, cluster, redis] = await Promise.all([
      getJSON("/health"), getJSON("/health/performance"), getJSON("/loadbalancer/status"),
      getJSON("/scaling/status"), getJSON("/cluster/status"), getJSON("/redis/status"), pollMetrics(now)]);
    recordHistory(scaling, now);
    renderHeader(health);
    renderOverview(perf, lb, now);
    renderPools(lb, perf, now);
    renderCache(lb);
    renderScaling(scaling, cluster, now);
    renderConfig(lb);
    renderLimits(lb);
    renderFleet(redis, cluster);
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
