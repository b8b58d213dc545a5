/* fedfleet dashboard: a small single-page app over the hub's REST API.
 * This file: helpers, the API client, login, the live stream and routing. The views live in
 * charts.js, fleet.js, device.js, rollouts.js and models.js (loaded before this one).
 * Views re-read their data when the server-sent-events stream announces a change. */
"use strict";

const ROLE_RANK = { viewer: 0, operator: 1, admin: 2 };
const state = { token: sessionStorage.getItem("fedfleet.token") || "", who: null, source: null, refresh: null,
  fleet: { offset: 0, limit: 50, q: "", device_class: "", online: "", label: "" }, events: { device: "", offset: 0, limit: 20 } };
const $ = (sel, root = document) => root.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const ago = (ts) => { if (!ts) return "—"; const s = Date.now() / 1000 - ts; return s < 60 ? `${Math.max(0, Math.round(s))}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago` : s < 172800 ? `${Math.round(s / 3600)}h ago` : `${Math.round(s / 86400)}d ago`; };
const when = (ts) => (ts ? new Date(ts * 1000).toLocaleString() : "—");
const pill = (text, cls) => `<span class="pill ${esc(cls ?? text)}">${esc(text)}</span>`;
const canOperate = () => state.who && ROLE_RANK[state.who.role] >= ROLE_RANK.operator;
const scroll = (html) => `<div class="scroll">${html}</div>`;
const kib = (n) => (n === null || n === undefined ? "—" : `${(n / 1024).toFixed(1)} KiB`);
const fixed = (v, n) => (v === null || v === undefined || Number.isNaN(+v) ? "—" : (+v).toFixed(n));
// "sensor-mlp v3" for a bundle id, from the catalog; never a bare hash when the catalog knows it
const bundleName = (bundles, id) => { const b = bundles[id]; return b ? `${b.model_name} v${b.version}` : id ? `${String(id).slice(0, 12)}…` : "—"; };

class HubUnreachable extends Error {}

function toast(msg, err = false) {
  const t = $("#toast"); t.textContent = msg; t.className = "show" + (err ? " err" : "");
  clearTimeout(toast.timer); toast.timer = setTimeout(() => (t.className = ""), 5000);
}

/* The live indicator in the header: a dot and a short, readable state. */
function setLive(kind, text) {
  const el = $("#live"); el.className = `live ${kind}`; $("#live-text").textContent = text; el.title = text;
  // while the hub is away what the page shows is old: say so instead of looking current
  document.body.classList.toggle("stale", kind === "down");
}

async function api(path, opts = {}) {
  let res;
  try {
    res = await fetch(path, { ...opts, headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json", ...(opts.headers || {}) } });
  } catch (e) {
    setLive("down", "hub unreachable — retrying");
    throw new HubUnreachable("the hub is unreachable: check the network or that the hub is running");
  }
  const text = await res.text();
  let body = null; try { body = text ? JSON.parse(text) : null; } catch { body = { detail: text }; }
  if (res.status === 401) {
    if (opts.login) throw new Error("invalid token: check that you pasted the whole API token");
    logout("the API token is no longer valid (revoked or expired): log in again"); throw new Error("invalid token");
  }
  if (!res.ok) throw new Error((body && (body.message || body.detail || body.error)) || `HTTP ${res.status}`);
  return body;
}

/* ---------- login ---------- */
function renderLogin(error = "") {
  $("#nav").hidden = true; $("#logout").hidden = true; $("#who").textContent = "";
  $("#view").innerHTML = `<div class="card login"><h1>Log in</h1>
    <p class="muted">Paste an API token (<code>cloud-hub token create --role viewer|operator|admin</code>).</p>
    <form id="login-form"><input id="token" type="password" placeholder="API token" autocomplete="off" required>
    <button class="primary" type="submit">Log in</button></form><p class="err" id="login-error">${esc(error)}</p></div>`;
  $("#login-form").onsubmit = async (e) => {
    e.preventDefault(); state.token = $("#token").value.trim();
    try { await login(); } catch (err) { state.token = ""; renderLogin(err.message); }
  };
}

async function login() {
  state.who = await api("/api/v1/whoami", { login: true });
  sessionStorage.setItem("fedfleet.token", state.token);
  $("#nav").hidden = false; $("#logout").hidden = false;
  $("#who").textContent = `${state.who.name} · ${state.who.role}`;
  connectStream(); route();
}

function logout(message = "") {
  sessionStorage.removeItem("fedfleet.token"); state.token = ""; state.who = null;
  clearTimeout(connectStream.timer);
  if (state.source) state.source.close(); state.source = null; setLive("off", "not connected");
  renderLogin(message);
}

/* The stream is opened with a single-use ticket, never the API token (URLs end up in logs).
 * A spent ticket cannot reconnect, so on any error the page asks for a new one; the server
 * closes the stream with "revoked" when the token is revoked, "closing" when it shuts down. */
async function connectStream() {
  if (state.source) state.source.close();
  state.source = null;
  clearTimeout(connectStream.timer);
  if (!state.token) return;
  let ticket;
  try { ticket = (await api("/api/v1/stream-tickets", { method: "POST" })).ticket; }
  catch (e) { if (state.token) connectStream.timer = setTimeout(connectStream, 3000); return; }
  const src = new EventSource(`/ui/stream?ticket=${encodeURIComponent(ticket)}`);
  src.addEventListener("change", () => { if (state.refresh) state.refresh().catch((e) => console.warn(e)); });
  src.addEventListener("revoked", () => logout("the API token was revoked"));
  src.addEventListener("closing", () => setLive("down", "hub restarting — reconnecting"));
  src.onopen = () => setLive("on", "live");
  src.onerror = () => {
    if (state.source !== src) return;
    src.close(); state.source = null;
    // tell "the hub is down" from "the stream dropped": ask the hub if it is there
    fetch("/healthz", { cache: "no-store" }).then((r) => setLive(r.ok ? "warn" : "down", r.ok ? "reconnecting…" : `hub error (HTTP ${r.status}) — retrying`))
      .catch(() => setLive("down", "hub unreachable — retrying"));
    connectStream.timer = setTimeout(connectStream, 2000);
  };
  state.source = src;
}

/* ---------- routing ---------- */
function route() {
  if (!state.who) return renderLogin();
  const [, page, id] = location.hash.split("/");
  const nav = page === "device" ? "fleet" : page === "rollout" ? "rollouts" : page || "fleet";
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === nav));
  const views = { fleet: viewFleet, device: viewDevice, rollouts: viewRollouts, rollout: viewRollout, models: viewModels };
  const view = views[page] || viewFleet;
  const refresh = () => view(decodeURIComponent(id || ""));
  state.refresh = refresh;
  // a view that could not load says why and tries again (a busy or restarting hub)
  const show = () => refresh().catch((e) => {
    if (!state.who || state.refresh !== refresh) return;
    $("#view").innerHTML = `<div class="card err-card">${esc(e.message)} <span class="muted">— retrying</span></div>`;
    setTimeout(() => { if (state.refresh === refresh) show(); }, 3000);
  });
  show();
}
window.addEventListener("hashchange", route);

$("#logout").onclick = () => logout();
setLive("off", "not connected");
if (state.token) login().catch((e) => logout(e instanceof HubUnreachable ? e.message : "invalid token: log in again")); else renderLogin();
