// limiter ops console: polls the admin API (/v1/...) once a second with the operator's
// bearer token and renders rules, breakers, levels, top talkers, switches and events.
// The token lives in memory (or sessionStorage when the operator asks); never in a URL
// or localStorage. Everything from the API is written with textContent, never as HTML.
"use strict";

(() => {
  const POLL_MS = 1000;
  const RETRY_MS = 2000;
  const TIMEOUT_MS = 5000;
  const HISTORY = 60;
  const STORE_KEY = "limiter.console.token";
  const SVG = "http://www.w3.org/2000/svg";
  const ACTIONS = {
    rule: ["force_deny", "force_allow", "shadow", "override"],
    global: ["force_deny", "force_allow"],
    breaker: ["force_open", "force_closed"],
    level: [],
  };

  const state = {
    token: null,
    timer: null,
    generation: 0,
    eventsSince: 0,
    events: [],
    data: null,
    pending: null,
    confirm: null,
  };
  const $ = (id) => document.getElementById(id);
  const number = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + state.token };
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    init.signal = abort.signal;
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, abort.signal.aborted ? "timed out" : "network error");
    } finally {
      clearTimeout(timer);
    }
    let data = null;
    try {
      data = await resp.json();
    } catch (err) {
      data = null;
    }
    if (!resp.ok) {
      throw new ApiError(resp.status, (data && data.error) || resp.statusText || "error");
    }
    return data;
  }

  // -- formatting --------------------------------------------------------------------

  const fmt = (n) => (n === null || n === undefined ? "–" : number.format(n));
  const pct = (x) => (x === null || x === undefined ? "–" : number.format(x * 100) + "%");
  // Composite keys join their parts with U+001F: show a visible separator instead.
  const keyText = (k) => String(k).replace(/\x1f/g, " · ");
  const when = (unix) => new Date(unix * 1000).toLocaleTimeString("en-GB", { hour12: false });

  function expiresText(sw) {
    if (sw.expires_at === undefined || sw.expires_at === null) return "never";
    const left = Math.max(0, Math.round(sw.expires_at - Date.now() / 1000));
    return `in ${left} s`;
  }

  function setting(sw) {
    if (sw.level !== undefined && sw.level !== null) return `level ${sw.level}`;
    if (sw.action === "override") return `override, limit ${sw.limit}`;
    return sw.action || "";
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  // Column headings of every table, in the order its renderer writes the cells; an
  // empty heading is a column of buttons, named for screen readers only.
  const COLUMNS = {
    rules: [
      "Rule", "Limit", "Hits/s", "Over/s", "Total hits", "Over limit", "Near limit",
      "Adaptive limit", "Latency pct.", "Switch", "",
    ],
    breakers: ["Breaker", "State", "Mode", "Calls", "Failures", "Rejected", ""],
    levels: ["Service", "Level", "Computed", "Pressure", ""],
    "top-clients": ["Rule", "Client", "Count", "Share"],
    "top-rules": ["Rule", "Over limit", "Total", "Ratio", "Throttling"],
    switches: ["Switch", "Setting", "Expires", "Who", "Why", ""],
    audit: ["When", "Change", "Switch", "Who", "Why"],
    events: ["When", "Event", "Subject", "Details"],
  };

  function header(table, columns) {
    const row = el("tr");
    for (const name of columns) {
      const th = el("th", name || null);
      th.scope = "col";
      if (!name) th.append(el("span", "Actions", "sr-only"));
      row.append(th);
    }
    table.createTHead().append(row);
    table.createTBody();
  }

  // Keep ``box``'s children one per item, in the items' order, keyed by ``data-key``: a node
  // that exists is updated in place (so focus and charts survive each poll), a new one is
  // made by ``make``; nodes of items gone are removed.
  function syncKeyed(box, items, keyOf, make, update) {
    const seen = new Set();
    let previous = null;
    for (const item of items) {
      const key = keyOf(item);
      seen.add(key);
      let node = box.querySelector(`:scope > [data-key="${CSS.escape(key)}"]`);
      if (!node) {
        node = make(item);
        node.dataset.key = key;
      }
      update(node, item);
      const want = previous ? previous.nextSibling : box.firstChild;
      if (want !== node) box.insertBefore(node, want);
      previous = node;
    }
    for (const node of Array.from(box.children)) {
      if (!seen.has(node.dataset.key)) node.remove();
    }
  }

  // Table rows keyed by an id: a new row gets one empty cell per column, then ``setup`` (if
  // any) adds what stays (buttons).
  function syncRows(table, items, keyOf, update, setup) {
    const body = table.tBodies[0];
    const width = table.tHead.rows[0].cells.length;
    const make = (item) => {
      const row = el("tr");
      for (let i = 0; i < width; i++) row.append(el("td"));
      if (setup) setup(row, item);
      return row;
    };
    syncKeyed(body, items, keyOf, make, update);
    if (!items.length) {
      const empty = el("tr", null, "empty");
      empty.dataset.key = "";
      const cell = el("td", "none");
      cell.colSpan = width;
      empty.append(cell);
      body.append(empty);
    }
  }

  // Write values into the row's cells from ``offset`` on, touching only what changed.
  function cells(row, values, offset = 0) {
    values.forEach((value, i) => {
      const text = value === null || value === undefined ? "–" : String(value);
      if (row.cells[i + offset].textContent !== text) row.cells[i + offset].textContent = text;
    });
  }

  function switchButton(label, kind, target) {
    const b = el("button", "Switch…", "small");
    b.type = "button";
    b.setAttribute("aria-label", label);
    b.addEventListener("click", () => prefill(kind, target));
    return b;
  }

  // -- charts ------------------------------------------------------------------------
  // One card per rule under the table: the last HISTORY seconds of hits/s, over-limit/s and,
  // for adaptive rules, the limit (left axis) and the latency percentile it follows with its
  // target (right axis, ms). Drawn in SVG user units; the card scales it to its width.

  const PLOT = { w: 640, h: 260, left: 56, right: 64, top: 12, bottom: 30 };
  const SERIES = [
    // [class, label, axis]
    ["hits", "Hits/s", "left"],
    ["over", "Over limit/s", "left"],
    ["limit", "Adaptive limit", "left"],
    ["observed", "Observed latency", "right"],
    ["target", "Target latency", "right"],
  ];

  // The smallest 1, 2 or 5 × 10^n at or above v: axis maxima people can read at a glance.
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const unit = 10 ** Math.floor(Math.log10(v));
    const f = v / unit;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * unit;
  }

  function svgEl(tag, attrs, cls) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (cls) node.setAttribute("class", cls);
    return node;
  }

  function newChartCard() {
    const figure = el("figure", null, "rule-chart");
    const caption = el("figcaption");
    caption.append(el("span", null, "name"), el("span", null, "algo"));
    const { w, h, left, right, top, bottom } = PLOT;
    const svg = svgEl("svg", { viewBox: `0 0 ${w} ${h}`, role: "img", preserveAspectRatio: "xMidYMid meet" }, "chart");
    const grid = svgEl("g", {}, "grid");
    const ticks = svgEl("g", {}, "ticks");
    for (const frac of [0, 0.5, 1]) {
      const y = top + (h - top - bottom) * (1 - frac);
      grid.append(svgEl("line", { x1: left, x2: w - right, y1: y, y2: y }));
      ticks.append(svgEl("text", { x: left - 6, y: y + 4, "text-anchor": "end", "data-axis": "left", "data-frac": frac }));
      ticks.append(svgEl("text", { x: w - right + 6, y: y + 4, "text-anchor": "start", "data-axis": "right", "data-frac": frac }));
    }
    for (const [ago, anchor] of [[HISTORY, "start"], [HISTORY / 2, "middle"], [0, "end"]]) {
      const x = left + (w - left - right) * (1 - ago / HISTORY);
      const label = svgEl("text", { x, y: h - 8, "text-anchor": anchor }, "x-label");
      label.textContent = ago ? `−${ago} s` : "now";
      ticks.append(label);
    }
    svg.append(grid, ticks);
    for (const [name] of SERIES) svg.append(svgEl("path", { fill: "none" }, name));
    const legend = el("ul", null, "legend");
    for (const [name, label] of SERIES) {
      const item = el("li", null, name);
      item.append(el("span", null, "swatch"), el("span", label), el("b", "–"));
      legend.append(item);
    }
    figure.append(caption, svg, legend);
    return figure;
  }

  // An SVG path through the points; a null value breaks the line.
  function pathOf(values, toY) {
    const { w, left, right } = PLOT;
    const step = (w - left - right) / (HISTORY - 1);
    const start = w - right - step * (values.length - 1);
    let d = "";
    let pen = false;
    values.forEach((v, i) => {
      if (v === null || v === undefined) {
        pen = false;
        return;
      }
      d += `${pen ? "L" : "M"}${(start + i * step).toFixed(1)},${toY(v).toFixed(1)}`;
      pen = true;
    });
    return d;
  }

  function drawChart(figure, r) {
    const [name, algo] = figure.firstChild.children;
    name.textContent = r.rule;
    const a = r.adaptive;
    algo.textContent = ` ${r.algorithm}${r.shadow_mode ? " · shadow" : ""}`;
    const hist = r.history;
    const target = a && a.target_latency !== null ? a.target_latency * 1000 : null;
    const data = {
      hits: hist.hits_per_s,
      over: hist.over_per_s,
      limit: a ? hist.limit : [],
      observed: a ? hist.observed.map((v) => (v === null ? null : v * 1000)) : [],
      target: a && hist.hits_per_s.length && target !== null ? hist.hits_per_s.map(() => target) : [],
    };
    const numbers = (xs) => xs.filter((v) => v !== null && v !== undefined);
    const leftMax = niceMax(Math.max(0, ...numbers([...data.hits, ...data.over, ...data.limit])));
    const rightMax = a ? niceMax(Math.max(0, ...numbers([...data.observed, ...data.target]))) : null;
    const { h, top, bottom } = PLOT;
    const plotH = h - top - bottom;
    const y = (max) => (v) => top + plotH * (1 - Math.min(v, max) / max);
    const svg = figure.querySelector("svg");
    for (const [series, , axis] of SERIES) {
      const path = svg.querySelector(`path.${series}`);
      const d = pathOf(data[series], y(axis === "left" ? leftMax : rightMax || 1));
      if (path.getAttribute("d") !== d) path.setAttribute("d", d);
    }
    for (const text of svg.querySelectorAll("text[data-axis]")) {
      const frac = Number(text.dataset.frac);
      const label =
        text.dataset.axis === "left"
          ? fmt(leftMax * frac)
          : rightMax === null
            ? ""
            : `${fmt(rightMax * frac)} ms`;
      if (text.textContent !== label) text.textContent = label;
    }
    const last = (xs) => (xs.length ? xs[xs.length - 1] : null);
    const current = {
      hits: fmt(last(data.hits)),
      over: fmt(last(data.over)),
      limit: a ? `${fmt(a.limit)}${a.mode === "concurrency" ? " in flight" : "/s"}` : null,
      observed: a ? (a.observed === null ? "–" : `P${number.format(a.percentile * 100)} ${fmt(a.observed * 1000)} ms`) : null,
      target: a ? `${fmt(target)} ms` : null,
    };
    for (const item of figure.querySelectorAll(".legend li")) {
      const series = item.className;
      item.hidden = current[series] === null;
      const value = item.querySelector("b");
      if (current[series] !== null && value.textContent !== current[series]) value.textContent = current[series];
    }
    const seconds = data.hits.length;
    let text = `${r.rule}: last ${seconds} s. Hits per second now ${current.hits}, peak ${fmt(Math.max(0, ...numbers(data.hits)))}; over limit per second now ${current.over}`;
    if (a) text += `; adaptive limit ${current.limit}; observed latency ${current.observed}, target ${current.target}`;
    svg.setAttribute("aria-label", text + ".");
  }

  function renderCharts(rules) {
    const charted = rules.filter((r) => r.history);
    syncKeyed($("charts"), charted, (r) => r.key, newChartCard, drawChart);
  }

  // -- rendering -----------------------------------------------------------------------

  function renderRules(rules) {
    syncRows(
      $("rules"),
      rules,
      (r) => r.key,
      (row, r) => {
        const [name, algo] = row.cells[0].children;
        name.textContent = r.rule;
        algo.textContent = r.algorithm + (r.shadow_mode ? " · shadow" : "");
        const inFlight = r.algorithm === "concurrency" || (r.adaptive && r.adaptive.mode === "concurrency");
        const limit = r.unlimited ? "unlimited" : `${fmt(r.limit)} ${inFlight ? "in flight" : "/ " + r.unit}`;
        const a = r.adaptive;
        const observed =
          a && a.observed !== null
            ? `P${number.format(a.percentile * 100)} ${number.format(a.observed * 1000)} ms`
            : a
              ? `P${number.format(a.percentile * 100)} –`
              : null;
        const sw = r.switch ? `${setting(r.switch)} (${r.switch.who})` : "none";
        row.classList.toggle("switched", Boolean(r.switch));
        row.classList.toggle("over", (r.over_per_s || 0) > 0);
        row.cells[9].classList.toggle("active", Boolean(r.switch));
        const values = [
          limit, fmt(r.hits_per_s), fmt(r.over_per_s), fmt(r.total_hits), fmt(r.over_limit),
          fmt(r.near_limit), a ? fmt(a.limit) : null, observed, sw,
        ];
        cells(row, values, 1);
      },
      (row, r) => {
        const fields = [
          "rule", "limit", "hits_per_s", "over_per_s", "total_hits", "over_limit",
          "near_limit", "adaptive_limit", "observed", "switch",
        ];
        fields.forEach((f, i) => {
          row.cells[i].dataset.field = f;
          if (i > 0 && f !== "switch") row.cells[i].classList.add("num");
        });
        row.cells[0].replaceChildren(el("span", null, "name"), el("span", null, "algo"));
        row.cells[10].append(switchButton(`Switch for rule ${r.rule}`, "rule", r.rule));
      },
    );
  }

  function renderBreakers(doc, switches) {
    const forced = new Map(
      switches.filter((s) => s.id.startsWith("breaker:")).map((s) => [s.id.slice(8), s]),
    );
    const rows = doc.breakers.map((b) => ({ ...b, idle: false }));
    const known = new Set(rows.map((b) => b.name));
    for (const name of [...doc.configured, ...forced.keys()]) {
      if (!known.has(name)) {
        known.add(name);
        rows.push({ name, idle: true });
      }
    }
    syncRows(
      $("breakers"),
      rows,
      (b) => b.name,
      (row, b) => {
        const sw = forced.get(b.name);
        const stateText = b.idle ? "no calls in this process" : b.state;
        cells(row, [
          b.name,
          sw ? `${stateText} · ${sw.action} by ${sw.who}` : stateText,
          b.idle ? null : b.mode,
          b.idle ? null : fmt(b.calls),
          b.idle ? null : fmt(b.failures),
          b.idle ? null : fmt(b.rejected),
        ]);
        row.classList.toggle("over", !b.idle && b.state !== "closed");
      },
      (row, b) => {
        row.cells[6].append(switchButton(`Switch for breaker ${b.name}`, "breaker", b.name));
      },
    );
  }

  function renderLevels(levels) {
    const rows = levels.length ? levels : [{ service: "default", level: 0, name: "normal" }];
    syncRows(
      $("levels"),
      rows,
      (l) => l.service,
      (row, l) => {
        cells(row, [
          l.service,
          `${l.level} (${l.name})${l.forced ? " · forced" : ""}`,
          l.computed === undefined ? null : l.computed,
          l.pressure === undefined ? null : number.format(l.pressure),
        ]);
      },
      (row, l) => {
        row.cells[4].append(switchButton(`Switch for level of ${l.service}`, "level", l.service));
      },
    );
  }

  function renderOverview(status, levels) {
    const kill = status.kill_switch;
    $("ov-kill").textContent = kill
      ? `${kill.action} by ${kill.who}: ${kill.why} (expires ${expiresText(kill)})`
      : "off";
    $("ov-kill").classList.toggle("alarm", Boolean(kill));
    $("ov-level").textContent = levels.length
      ? levels.map((l) => `${l.service}: ${l.level} (${l.name})`).join(", ")
      : "default: 0 (normal)";
    $("ov-level").classList.toggle("alarm", levels.some((l) => l.level > 0));
    $("ov-switches").textContent = String(status.switches);
    $("ov-store").textContent = status.store_healthy ? "healthy" : "UNREACHABLE";
    $("ov-store").classList.toggle("alarm", !status.store_healthy);
    $("ov-throttling").textContent = status.throttling.length
      ? status.throttling.join(", ")
      : "none";
    $("ov-updated").textContent = new Date().toLocaleTimeString("en-GB", { hour12: false });
  }

  function renderSwitches(switches) {
    syncRows(
      $("switches"),
      switches,
      (s) => s.id,
      (row, s) => cells(row, [s.id, setting(s), expiresText(s), s.who, s.why]),
      (row, s) => {
        const b = el("button", "Remove…", "small");
        b.type = "button";
        b.setAttribute("aria-label", `Remove switch ${s.id}`);
        b.addEventListener("click", () => askRemove(s.id));
        row.cells[5].append(b);
      },
    );
  }

  function renderAudit(audit) {
    const rows = audit.map((a, i) => ({ ...a, key: `${a.at}|${a.id}|${a.op}|${i}` }));
    syncRows(
      $("audit"),
      rows,
      (a) => a.key,
      (row, a) => {
        const change = a.op === "put" ? `set ${setting(a.after || {})}` : a.op;
        cells(row, [when(a.at), change, a.id, a.who, a.why]);
      },
    );
  }

  function eventSubject(e) {
    for (const k of ["rule", "breaker", "client", "id", "service"]) if (e[k]) return keyText(e[k]);
    return "";
  }

  function eventDetails(e) {
    const parts = [];
    if (e.who) parts.push(`by ${e.who}`);
    if (e.why) parts.push(`why: ${e.why}`);
    if (e.op) parts.push(e.op);
    if (e.level !== undefined && e.event !== "switch_changed") parts.push(`level ${e.level}`);
    if (e.state) parts.push(String(e.state));
    if (e.over_limit !== undefined) parts.push(`over ${e.over_limit}`);
    if (e.top_clients && e.top_clients.length) {
      parts.push("top " + e.top_clients.map((c) => `${keyText(c[0])} (${c[1]})`).join(", "));
    }
    return parts.join(" · ");
  }

  function renderEvents(events) {
    const rows = events.slice().reverse();
    syncRows(
      $("events"),
      rows,
      (e) => String(e.seq),
      (row, e) => cells(row, [when(e.at), e.event, eventSubject(e), eventDetails(e)]),
    );
  }

  function renderTop(clients, rules) {
    syncRows(
      $("top-clients"),
      clients.map((c, i) => ({ ...c, key: `${c.rule}|${c.client}|${i}` })),
      (c) => c.key,
      (row, c) => cells(row, [c.rule, keyText(c.client), fmt(c.count), pct(c.share)]),
    );
    syncRows(
      $("top-rules"),
      rules,
      (r) => r.rule,
      (row, r) => {
        cells(row, [r.rule, fmt(r.over_limit), fmt(r.total), pct(r.ratio), r.throttling ? "yes" : "no"]);
      },
    );
  }

  function targets(doc) {
    const list = $("sw-targets");
    const kind = $("sw-kind").value;
    let names = [];
    if (kind === "rule") names = doc.rules.rules.map((r) => r.rule);
    if (kind === "breaker") names = [...doc.breakers.configured, ...doc.breakers.breakers.map((b) => b.name)];
    if (kind === "level") names = ["default", ...doc.status.levels.map((l) => l.service)];
    const unique = [...new Set(names)];
    if (list.dataset.names === unique.join("\n")) return;
    list.dataset.names = unique.join("\n");
    list.replaceChildren(...unique.map((n) => Object.assign(el("option"), { value: n })));
  }

  // -- polling -------------------------------------------------------------------------

  function showError(message) {
    const box = $("error");
    if (!message) {
      box.hidden = true;
      box.textContent = "";
      return;
    }
    if (box.textContent !== message) box.textContent = message;
    box.hidden = false;
  }

  function explain(err) {
    if (err.status === 401) {
      return "The service refused the token (401 Unauthorized). Check the admin token and connect again.";
    }
    if (err.status === 404) {
      return "The admin API is not enabled on this service (404): start it with LIMITER_ADMIN_TOKEN or --admin-token-file.";
    }
    if (err.status === 0) {
      return `The service at ${location.host} is unreachable (${err.message}). Retrying every ${RETRY_MS / 1000} s…`;
    }
    if (err.status === 503) return `The switch store is unavailable (503): ${err.message}`;
    return `The service answered ${err.status}: ${err.message}`;
  }

  async function fetchAll() {
    const since = state.eventsSince;
    const [rules, status, breakers, switches, clients, top, events, audit] = await Promise.all([
      api("GET", `/v1/rules?history=${HISTORY}`),
      api("GET", "/v1/status"),
      api("GET", "/v1/breakers"),
      api("GET", "/v1/switches"),
      api("GET", "/v1/top/clients?n=10"),
      api("GET", "/v1/top/rules?n=10"),
      api("GET", `/v1/events?since=${since}&limit=100`),
      // The audit log lives in the switch store: without it the rest is still worth showing.
      api("GET", "/v1/audit?limit=20").catch((err) => {
        if (err instanceof ApiError && err.status === 503) return { audit: null, error: err.message };
        throw err;
      }),
    ]);
    return { rules, status, breakers, switches, clients, top, events, audit };
  }

  async function poll() {
    const generation = state.generation;
    let delay = POLL_MS;
    try {
      const doc = await fetchAll();
      if (generation !== state.generation) return;
      state.data = doc;
      for (const e of doc.events.events) {
        state.eventsSince = Math.max(state.eventsSince, e.seq);
        state.events.push(e);
      }
      state.events = state.events.slice(-50);
      const switches = doc.switches.switches;
      renderOverview(doc.status, doc.status.levels);
      $("ov-pid").textContent = String(doc.rules.pid);
      renderRules(doc.rules.rules);
      renderCharts(doc.rules.rules);
      renderBreakers(doc.breakers, switches);
      renderLevels(doc.status.levels);
      renderTop(doc.clients.clients, doc.top.rules);
      renderSwitches(switches);
      if (doc.audit.audit !== null) renderAudit(doc.audit.audit);
      renderEvents(state.events);
      targets(doc);
      trackPending(switches, doc.audit.audit || []);
      showError(
        doc.audit.audit === null
          ? `The switch store is unavailable (503: ${doc.audit.error}). Switches shown are ` +
              "this replica's last known ones; changes are refused until the store is back."
          : null,
      );
      $("dashboard").classList.remove("stale");
      $("conn").textContent = "Connected.";
      $("dashboard").hidden = false;
    } catch (caught) {
      let err = caught;
      if (generation !== state.generation) return;
      if (!(err instanceof ApiError)) {
        console.error(err);
        err = new ApiError(-1, `console error: ${err}`);
      }
      showError(err.status === -1 ? err.message : explain(err));
      if (err.status === 401 || err.status === 404) {
        disconnect(false);
        $("token").focus();
        return;
      }
      $("conn").textContent = "Connection problem.";
      $("dashboard").classList.add("stale");
      delay = RETRY_MS;
    }
    state.timer = setTimeout(poll, delay);
  }

  function connect(token, remember) {
    state.token = token;
    state.generation += 1;
    state.eventsSince = 0;
    state.events = [];
    clearTimeout(state.timer);
    if (remember) sessionStorage.setItem(STORE_KEY, token);
    else sessionStorage.removeItem(STORE_KEY);
    $("conn").textContent = "Connecting…";
    $("login-fields").hidden = true;
    $("token-help").hidden = true;
    $("connect").hidden = true;
    $("disconnect").hidden = false;
    $("disconnect").focus();
    poll();
  }

  function disconnect(forget) {
    state.generation += 1;
    clearTimeout(state.timer);
    state.token = null;
    if (forget) sessionStorage.removeItem(STORE_KEY);
    $("dashboard").hidden = true;
    $("login-fields").hidden = false;
    $("token-help").hidden = false;
    $("connect").hidden = false;
    $("disconnect").hidden = true;
    $("conn").textContent = "Not connected.";
  }

  // -- switches ------------------------------------------------------------------------

  function prefill(kind, target) {
    $("sw-kind").value = kind;
    kindChanged();
    $("sw-target").value = target;
    $("switch-heading").scrollIntoView({ block: "start" });
    (kind === "level" ? $("sw-level") : $("sw-action")).focus();
  }

  function kindChanged() {
    const kind = $("sw-kind").value;
    const select = $("sw-action");
    select.replaceChildren(...ACTIONS[kind].map((a) => Object.assign(el("option", a), { value: a })));
    $("sw-target-field").hidden = kind === "global";
    $("sw-action-field").hidden = kind === "level";
    $("sw-level-field").hidden = kind !== "level";
    actionChanged();
    if (state.data) targets(state.data);
  }

  function actionChanged() {
    $("sw-limit-field").hidden = !($("sw-kind").value === "rule" && $("sw-action").value === "override");
  }

  function fieldError(input, message) {
    const box = $("sw-error");
    input.setAttribute("aria-invalid", "true");
    box.textContent = message;
    box.hidden = false;
    input.focus();
    return null;
  }

  function integer(raw) {
    return /^\d+$/.test(raw.trim()) ? Number(raw.trim()) : null;
  }

  // The PUT body and switch id from the form, or null after showing what is wrong.
  function readForm() {
    for (const node of document.querySelectorAll("#switch-form [aria-invalid]")) {
      node.removeAttribute("aria-invalid");
    }
    $("sw-error").hidden = true;
    const kind = $("sw-kind").value;
    const body = {};
    let id = "global";
    if (kind !== "global") {
      const target = $("sw-target").value.trim();
      if (!target || /\s/.test(target)) {
        return fieldError($("sw-target"), "Target is required (no spaces): " + $("sw-target-help").textContent);
      }
      id = `${kind}:${target}`;
    }
    if (kind === "level") {
      const level = integer($("sw-level").value);
      if (level === null || level > 100) return fieldError($("sw-level"), "Forced level must be an integer from 0 to 100.");
      body.level = level;
    } else {
      body.action = $("sw-action").value;
      if (body.action === "override") {
        const limit = integer($("sw-limit").value);
        if (limit === null) return fieldError($("sw-limit"), "Override limit must be an integer ≥ 0.");
        body.limit = limit;
      }
    }
    const ttlRaw = $("sw-ttl").value.trim();
    if (ttlRaw) {
      const ttl = integer(ttlRaw);
      if (ttl === null || ttl < 1) return fieldError($("sw-ttl"), "Expiry must be a whole number of seconds ≥ 1, or empty.");
      body.ttl = ttl;
    }
    const who = $("sw-who").value.trim();
    if (!who) return fieldError($("sw-who"), "Who is required: say who sets this switch.");
    const why = $("sw-why").value.trim();
    if (!why) return fieldError($("sw-why"), "Why is required: say why this switch is set.");
    body.who = who;
    body.why = why;
    return { id, body };
  }

  function describe(id, body) {
    const ttl = body.ttl ? `for ${body.ttl} s` : "until removed";
    return `Set ${id} to ${setting(body)} ${ttl}. Who: ${body.who}. Why: ${body.why}.`;
  }

  function openConfirm(plan) {
    state.confirm = plan;
    $("confirm-text").textContent = plan.text;
    $("confirm-reason").hidden = plan.op !== "delete";
    $("confirm-error").hidden = true;
    $("confirm-ok").textContent = plan.op === "delete" ? "Remove switch" : "Apply switch";
    const dialog = $("confirm");
    dialog.showModal();
    (plan.op === "delete" ? $("rm-who") : $("confirm-cancel")).focus();
  }

  function askRemove(id) {
    $("rm-who").value = $("sw-who").value;
    $("rm-why").value = "";
    openConfirm({ op: "delete", id, text: `Remove switch ${id}? Its effect ends at once.` });
  }

  async function applyConfirmed() {
    const plan = state.confirm;
    if (!plan) return;
    let body = plan.body;
    if (plan.op === "delete") {
      const who = $("rm-who").value.trim();
      const why = $("rm-why").value.trim();
      if (!who || !why) {
        $("confirm-error").textContent = `${who ? "Why" : "Who"} is required to remove a switch.`;
        $("confirm-error").hidden = false;
        (who ? $("rm-why") : $("rm-who")).focus();
        return;
      }
      body = { who, why };
    }
    $("confirm-ok").disabled = true;
    try {
      const method = plan.op === "delete" ? "DELETE" : "PUT";
      const answer = await api(method, `/v1/switches/${encodeURIComponent(plan.id)}`, body);
      // The switch this change wrote or removed: its created_at identifies the audit entry.
      const stored = plan.op === "delete" ? answer.deleted : answer;
      state.pending = { ...plan, body, stored, sent: performance.now(), seen: null, audited: null };
      $("confirm").close();
      $("sw-error").hidden = true;
      renderPending();
      clearTimeout(state.timer);
      poll();
    } catch (err) {
      const message = err instanceof ApiError ? explain(err) : String(err);
      $("confirm-error").textContent = message;
      $("confirm-error").hidden = false;
      if (err.status === 401) {
        $("confirm").close();
        showError(message);
        disconnect(false);
        $("token").focus();
      }
    } finally {
      $("confirm-ok").disabled = false;
    }
  }

  // Follow one change until the API shows it: live in /v1/switches, then in /v1/audit.
  function trackPending(switches, audit) {
    const p = state.pending;
    if (!p) return;
    const elapsed = Math.round(performance.now() - p.sent);
    const live = switches.find((s) => s.id === p.id);
    if (p.seen === null) {
      const applied = p.op === "delete" ? !live : live && live.created_at === p.stored.created_at;
      if (applied) p.seen = elapsed;
    }
    if (p.audited === null) {
      const side = p.op === "delete" ? "before" : "after";
      const entry = audit.find(
        (a) => a.id === p.id && a.op === p.op && a[side] && a[side].created_at === p.stored.created_at,
      );
      if (entry) p.audited = elapsed;
    }
    renderPending();
  }

  function renderPending() {
    const p = state.pending;
    const box = $("propagation");
    const verb = p.op === "delete" ? `Removal of ${p.id}` : `${p.id} → ${setting(p.body)}`;
    const steps = [
      `${verb}: accepted by the service.`,
      p.seen === null ? "Waiting for /v1/switches…" : `Live in /v1/switches after ${p.seen} ms.`,
      p.audited === null ? "Waiting for the audit log…" : `In the audit log (${p.body.who}: ${p.body.why}) after ${p.audited} ms.`,
    ];
    box.replaceChildren(...steps.map((s) => el("p", s)));
    box.classList.toggle("done", p.seen !== null && p.audited !== null);
  }

  // -- wiring --------------------------------------------------------------------------

  function init() {
    for (const [id, columns] of Object.entries(COLUMNS)) header($(id), columns);
    $("login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = $("token").value.trim();
      if (!token) {
        showError("Enter the admin token first.");
        $("token").focus();
        return;
      }
      $("token").value = "";
      showError(null);
      connect(token, $("remember").checked);
    });
    $("disconnect").addEventListener("click", () => {
      disconnect(true);
      showError(null);
      $("token").focus();
    });
    $("sw-kind").addEventListener("change", kindChanged);
    $("sw-action").addEventListener("change", actionChanged);
    $("switch-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const plan = readForm();
      if (!plan) return;
      openConfirm({ op: "put", id: plan.id, body: plan.body, text: describe(plan.id, plan.body) });
    });
    $("confirm-cancel").addEventListener("click", () => $("confirm").close());
    $("confirm-ok").addEventListener("click", applyConfirmed);
    $("confirm-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      applyConfirmed();
    });
    $("confirm").addEventListener("close", () => {
      state.confirm = null;
      $("sw-review").focus();
    });
    kindChanged();
    const kept = sessionStorage.getItem(STORE_KEY);
    if (kept) {
      $("remember").checked = true;
      connect(kept, true);
    } else {
      $("token").focus();
    }
  }

  init();
})();
