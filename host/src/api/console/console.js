// The Turnstile console: polls GET /v1/overview every second with the admin token, and draws
// the tenants' table, the plots of the last five minutes, a tenant's sessions and one session.
// Everything a tenant controls (app names, steps, outputs, failure messages) is written as
// text, never as markup.
"use strict";

const POLL_MS = 1000;
const KEEP = 300; // samples: five minutes
const RATE_SAMPLES = 5; // the table's rates and shares are over the last five seconds
const COLOURS = ["#1a5fb4", "#c64600", "#26a269", "#a51d2d", "#613583", "#986a44", "#e5a50a", "#2190a4"];
const TOKEN_KEY = "turnstile-admin-token";

let token = sessionStorage.getItem(TOKEN_KEY);
let samples = [];
let timer = null;
let selectedTenant = null;
let selectedSession = null;
let sessionsAfter = 0;
// Polls may overlap (the interval, and one after each suspend or resume): only an answer to a
// later request than the last one drawn is drawn, so an old answer never undoes a newer one.
let pollsSent = 0;
let pollDrawn = 0;

const byId = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

async function call(method, path) {
  const response = await fetch(path, { method, headers: { Authorization: "Bearer " + token } });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const error = new Error(body && body.code ? body.code + ": " + body.message : "HTTP " + response.status);
    error.status = response.status;
    throw error;
  }
  return body;
}

function signIn(event) {
  event.preventDefault();
  token = byId("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  start();
}

function signOut(message) {
  clearInterval(timer);
  timer = null;
  token = null;
  samples = [];
  sessionStorage.removeItem(TOKEN_KEY);
  byId("console").hidden = true;
  byId("sign-out").hidden = true;
  byId("sign-in").hidden = false;
  byId("sign-in-error").textContent = message || "";
  byId("host-line").textContent = "not connected";
}

function start() {
  byId("sign-in").hidden = true;
  byId("console").hidden = false;
  byId("sign-out").hidden = false;
  poll();
  timer = setInterval(poll, POLL_MS);
}

async function poll() {
  const sent = ++pollsSent;
  let overview;
  try {
    overview = await call("GET", "/v1/overview");
  } catch (error) {
    if (error.status === 401) {
      signOut("The server refused this token: give the admin token.");
    } else {
      byId("poll-error").textContent = "Cannot reach the server: " + error.message;
    }
    return;
  }
  if (sent < pollDrawn) return;
  pollDrawn = sent;
  byId("poll-error").textContent = "";
  samples.push({ t: performance.now(), tenants: new Map(overview.tenants.map((row) => [row.tenant, row])) });
  if (samples.length > KEEP + 1) samples.shift();
  drawHost(overview);
  drawTenants(overview);
  drawPlots();
  if (selectedTenant) drawSessions();
  if (selectedSession) drawSession();
}

function delta(first, last, name, field) {
  const now = last.tenants.get(name);
  if (!now) return 0;
  const before = first.tenants.get(name);
  return Math.max(0, now[field] - (before ? before[field] : 0));
}

// Per tenant over the samples `first`..`last`: actions/s, cost and worker shares, weight share
// among the tenants that had work, and the part of the time it was throttled.
function windowFigures(first, last) {
  const seconds = Math.max((last.t - first.t) / 1000, 0.001);
  const names = [...last.tenants.keys()];
  const totals = { cost: 0, worker: 0, weight: 0 };
  const rows = new Map();
  for (const name of names) {
    const row = last.tenants.get(name);
    const figures = {
      rate: delta(first, last, name, "actions") / seconds,
      cost: delta(first, last, name, "cost"),
      worker: delta(first, last, name, "worker_us"),
      throttled: delta(first, last, name, "throttled_ms") / 1000 / seconds,
      busy: delta(first, last, name, "actions") > 0 || row.queue_depth > 0 || row.in_flight > 0,
    };
    totals.cost += figures.cost;
    totals.worker += figures.worker;
    if (figures.busy && !row.suspended) totals.weight += row.weight;
    rows.set(name, figures);
  }
  for (const [name, figures] of rows) {
    const row = last.tenants.get(name);
    figures.costShare = totals.cost > 0 ? figures.cost / totals.cost : 0;
    figures.workerShare = totals.worker > 0 ? figures.worker / totals.worker : 0;
    figures.weightShare = figures.busy && !row.suspended && totals.weight > 0 ? row.weight / totals.weight : 0;
  }
  return rows;
}

const percent = (x) => (100 * x).toFixed(0) + "%";

function duration(us) {
  if (us >= 1e6) return (us / 1e6).toFixed(2) + " s";
  if (us >= 1000) return (us / 1000).toFixed(1) + " ms";
  return us + " µs";
}

function drawHost(overview) {
  const host = overview.host;
  byId("host-line").textContent =
    host.sessions + " sessions (" + host.waiting + " waiting for a customer), " + host.queue_depth + " actions queued, " +
    host.output_streams + " output streams, store " + (host.store_up ? "up" : "FAILING");
  byId("window-line").textContent = "(rates and shares over the last 5 s; p50/p99 over the last " + overview.window_s + " s)";
}

function drawTenants(overview) {
  const last = samples[samples.length - 1];
  const first = samples[Math.max(0, samples.length - 1 - RATE_SAMPLES)];
  const figures = samples.length > 1 ? windowFigures(first, last) : new Map();
  const body = byId("tenants").tBodies[0];
  body.replaceChildren();
  for (const row of overview.tenants) {
    const f = figures.get(row.tenant) || { rate: 0, costShare: 0, weightShare: 0, workerShare: 0, throttled: 0 };
    const tr = el("tr", null, row.suspended ? "suspended" : "");
    tr.dataset.tenant = row.tenant;
    const name = el("td");
    const open = el("button", row.tenant, "link");
    open.addEventListener("click", () => selectTenant(row.tenant));
    name.append(open);
    const failures = Object.entries(row.failures || {}).map(([kind, n]) => kind + " " + n).join(", ") || "0";
    const cells = [
      row.weight,
      row.suspended ? "suspended" : "active",
      f.rate.toFixed(0),
      percent(f.costShare) + " / " + percent(f.weightShare),
      percent(f.workerShare),
      percent(f.throttled),
      row.queue_depth,
      row.in_flight,
      row.open_sessions,
      failures,
      row.recent.actions > 0 ? duration(row.recent.p50_us) : "–",
      row.recent.actions > 0 ? duration(row.recent.p99_us) : "–",
    ];
    const names = ["weight", "state", "rate", "share", "worker", "throttled", "queue", "in-flight", "open", "failures", "p50", "p99"];
    tr.append(name, ...cells.map((text, i) => {
      const td = el("td", text);
      td.dataset.field = names[i];
      return td;
    }));
    const action = el("td");
    const button = el("button", row.suspended ? "Resume" : "Suspend");
    button.dataset.action = row.suspended ? "resume" : "suspend";
    button.addEventListener("click", () => setSuspended(row.tenant, !row.suspended));
    action.append(button);
    tr.append(action);
    body.append(tr);
  }
}

async function setSuspended(name, suspended) {
  try {
    await call("POST", "/v1/tenants/" + encodeURIComponent(name) + (suspended ? "/suspend" : "/resume"));
    poll();
  } catch (error) {
    byId("poll-error").textContent = "Could not " + (suspended ? "suspend " : "resume ") + name + ": " + error.message;
  }
}

function colourOf(index) {
  return COLOURS[index % COLOURS.length];
}

function drawPlots() {
  const names = [...samples[samples.length - 1].tenants.keys()];
  const series = names.map(() => ({ rate: [], share: [] }));
  for (let i = 1; i < samples.length; i++) {
    const figures = windowFigures(samples[i - 1], samples[i]);
    names.forEach((name, n) => {
      const f = figures.get(name);
      series[n].rate.push([samples[i].t, f ? f.rate : 0]);
      series[n].share.push([samples[i].t, f ? f.costShare : 0]);
    });
  }
  const maxRate = Math.max(1, ...series.flatMap((s) => s.rate.map(([, v]) => v)));
  plot(byId("plot-rate"), series.map((s) => s.rate), maxRate);
  byId("rate-top").textContent = "(top: " + maxRate.toFixed(0) + "/s)";
  plot(byId("plot-share"), series.map((s) => s.share), 1);
  const legend = byId("legend");
  legend.replaceChildren(...names.map((name, n) => {
    const li = el("li", name);
    li.style.setProperty("--colour", colourOf(n));
    return li;
  }));
}

function plot(svg, lines, max) {
  const now = samples[samples.length - 1].t;
  const span = KEEP * POLL_MS;
  svg.replaceChildren(...lines.map((points, n) => {
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.map(([t, v]) => {
      const x = 600 - ((now - t) / span) * 600;
      const y = 155 - (v / max) * 150;
      return x.toFixed(1) + "," + y.toFixed(1);
    }).join(" "));
    line.setAttribute("stroke", colourOf(n));
    return line;
  }));
}

function selectTenant(name) {
  selectedTenant = name;
  selectedSession = null;
  sessionsAfter = 0;
  byId("session").hidden = true;
  drawSessions();
}

async function drawSessions() {
  const tenant = selectedTenant;
  let page;
  try {
    page = await call("GET", "/v1/tenants/" + encodeURIComponent(tenant) + "/sessions?limit=100&after=" + sessionsAfter);
  } catch (error) {
    byId("poll-error").textContent = "Could not list the sessions of " + tenant + ": " + error.message;
    return;
  }
  if (tenant !== selectedTenant) return;
  byId("sessions").hidden = false;
  byId("sessions-tenant").textContent = tenant;
  const body = byId("session-list").tBodies[0];
  body.replaceChildren(...page.sessions.map((session) => {
    const tr = el("tr");
    tr.dataset.session = session.id;
    const id = el("td");
    const open = el("button", session.id, "link");
    open.addEventListener("click", () => {
      selectedSession = { tenant, id: session.id };
      drawSession();
    });
    id.append(open);
    const failure = session.last_failure ? session.last_failure.kind : "";
    tr.append(id, el("td", session.app), el("td", session.status), el("td", session.counters.actions), el("td", session.outputs), el("td", failure));
    return tr;
  }));
  const more = byId("sessions-more");
  more.replaceChildren();
  if (page.next_after !== null && page.next_after !== undefined) {
    const next = el("button", "Next 100", "link");
    next.addEventListener("click", () => {
      sessionsAfter = page.next_after;
      drawSessions();
    });
    more.append(next);
  }
}

async function drawSession() {
  const { tenant, id } = selectedSession;
  let session;
  try {
    session = await call("GET", "/v1/tenants/" + encodeURIComponent(tenant) + "/sessions/" + id);
  } catch (error) {
    byId("poll-error").textContent = "Could not read session " + id + ": " + error.message;
    return;
  }
  if (!selectedSession || selectedSession.id !== id) return;
  byId("session").hidden = false;
  byId("session-id").textContent = id + " of " + tenant;
  const facts = [
    ["App", session.app + " (" + String(session.version).slice(0, 12) + ")"],
    ["Status", session.status],
    ["Actions", session.counters.actions],
    ["Fuel", session.counters.fuel],
    ["Cost", session.counters.cost],
    ["Outputs", session.outputs],
    ["Unapplied events", (session.unapplied || []).length],
  ];
  byId("session-facts").replaceChildren(...facts.flatMap(([term, value]) => [el("dt", term), el("dd", value)]));
  byId("session-step").textContent = JSON.stringify(session.step, null, 2);
  byId("session-failure").textContent = session.last_failure
    ? session.last_failure.kind + " in `" + session.last_failure.action + "`: " + session.last_failure.message
    : "none";
  byId("session-outputs").replaceChildren(...(session.recent_outputs || []).map((output) => {
    const li = el("li", JSON.stringify(output.body));
    li.value = output.number;
    return li;
  }));
}

document.addEventListener("DOMContentLoaded", () => {
  byId("sign-in-form").addEventListener("submit", signIn);
  byId("sign-out").addEventListener("click", () => signOut());
  if (token) start();
});
