/* Fleet: counts, then a server-side paged and filtered device table. Health, drift and the
 * rollout a device is in come from /api/v1/fleet/overview: one verdict per device, so the
 * page never shows "healthy" beside a failure or on a device that never connected. */
"use strict";

const HEALTH_LABEL = { never_connected: "never connected", offline: "offline", failed: "failed", unhealthy: "unhealthy",
  drifting: "drifting", updating: "updating", healthy: "healthy" };

const healthPill = (h) => `<span class="pill h-${esc(h.state)}" title="${esc(h.reason)}">${esc(HEALTH_LABEL[h.state] || h.state)}</span>`;

function driftCell(d, device) {
  if (!device.installed_model) return '<span class="muted">—</span>';
  if (!d) return `<span class="muted" title="no drift report for ${esc(device.installed_model)} v${esc(device.installed_version)} yet">no report</span>`;
  return `${d.drifted ? pill("drift", "drift-bad") : pill("no drift", "drift-ok")} <span class="num" title="max PSI of the newest window (v${esc(d.model_version)}, ${esc(ago(d.ts))})">${fixed(d.score, 2)}</span>`;
}

function rolloutCell(r) {
  if (!r) return '<span class="muted">—</span>';
  const link = `<a href="#/rollout/${encodeURIComponent(r.rollout_id)}">${esc(r.name)}</a>`;
  if (!r.active) return `<span class="muted">last: </span>${link} ${pill(r.state)}`;
  return `${link} <span class="muted">stage ${r.stage}</span> ${pill(r.target_state, `t-${r.target_state}`)}`;
}

async function viewFleet() {
  const at = location.hash;
  // only the newest load may draw: a live refresh started before a filter or page change
  // must not overwrite the answer to it when it finishes last
  const seq = (state.fleetLoads = (state.fleetLoads || 0) + 1);
  const f = state.fleet;
  const params = new URLSearchParams({ limit: f.limit, offset: f.offset, sort: "device_id" });
  if (f.q) params.set("q", f.q);
  if (f.device_class) params.set("device_class", f.device_class);
  if (f.online) params.set("online", f.online);
  if (f.label) params.set("label", f.label);
  const [summary, page] = await Promise.all([api("/api/v1/fleet/summary"), api(`/api/v1/devices?${params}`)]);
  const ids = page.items.map((d) => d.device_id);
  const overview = ids.length ? await api(`/api/v1/fleet/overview?${ids.map((i) => `device_id=${encodeURIComponent(i)}`).join("&")}`) : [];
  const byId = Object.fromEntries(overview.map((o) => [o.device_id, o]));
  const focused = document.activeElement && document.activeElement.id;
  const stat = (n, label, id = "") => `<div class="stat"><b ${id ? `id="${id}"` : ""}>${esc(n)}</b><span>${esc(label)}</span></div>`;
  const classes = Object.entries(summary.by_class).map(([k, v]) => stat(v, k)).join("");
  const versions = Object.entries(summary.by_version).map(([k, v]) => stat(v, k === "none" ? "no model yet" : k)).join("");
  const rows = page.items.map((d) => {
    const o = byId[d.device_id] || { health: { state: "offline", reason: "" } };
    const fallback = d.provider && /CPU/i.test(d.provider) && (d.runtimes || []).some((r) => /cuda|tensorrt|gpu/i.test(r));
    const connection = o.health.state === "never_connected" ? pill("never connected", "never") : d.online ? pill("online") : pill("offline");
    return `<tr data-device="${esc(d.device_id)}"><td><a href="#/device/${encodeURIComponent(d.device_id)}">${esc(d.device_id)}</a></td>
      <td class="opt">${esc(d.device_class || "—")}</td><td class="opt">${Object.entries(d.labels || {}).map(([k, v]) => pill(`${k}=${v}`, "")).join(" ")}</td>
      <td class="opt">${connection}</td><td>${d.installed_model ? `${esc(d.installed_model)} v${esc(d.installed_version)}` : '<span class="muted">—</span>'}</td>
      <td class="health">${healthPill(o.health)}</td><td class="drift">${driftCell(o.drift, d)}</td><td class="rollout">${rolloutCell(o.rollout)}</td>
      <td class="opt">${esc(d.runtime || "—")} ${fallback ? pill("CPU fallback", "fallback") : ""}</td><td class="opt">${o.health.state === "never_connected" ? '<span class="muted">never</span>' : ago(d.last_seen)}</td></tr>`;
  }).join("");
  if (location.hash !== at || seq !== state.fleetLoads) return; // the operator moved on
  $("#view").innerHTML = `<h1>Fleet</h1>
    <div class="stats">${stat(summary.total, "devices", "n-total")}${stat(summary.online, "online", "n-online")}${stat(summary.cpu_fallback, "GPU→CPU fallback")}${classes}</div>
    <h2>Installed models</h2><div class="stats">${versions || '<span class="muted">none</span>'}</div>
    <h2>Devices</h2>
    <div class="filters"><input id="f-q" placeholder="search id" value="${esc(f.q)}">
      <input id="f-class" placeholder="class" value="${esc(f.device_class)}" size="10">
      <input id="f-label" placeholder="label k=v" value="${esc(f.label)}" size="12">
      <select id="f-online"><option value="">any state</option><option value="true" ${f.online === "true" ? "selected" : ""}>online</option><option value="false" ${f.online === "false" ? "selected" : ""}>offline</option></select></div>
    ${scroll(`<table id="devices"><thead><tr><th>device</th><th class="opt">class</th><th class="opt">labels</th><th class="opt">connection</th><th>model</th><th>health</th><th>drift</th><th>rollout</th><th class="opt">runtime</th><th class="opt">last seen</th></tr></thead><tbody>${rows}</tbody></table>`)}
    <div class="pager"><button id="prev" ${f.offset === 0 ? "disabled" : ""}>‹ prev</button>
      <span id="page-info">${page.total ? f.offset + 1 : 0}–${Math.min(f.offset + f.limit, page.total)} of ${page.total}</span>
      <button id="next" ${f.offset + f.limit >= page.total ? "disabled" : ""}>next ›</button></div>`;
  let timer;
  const onFilter = () => { clearTimeout(timer); timer = setTimeout(() => {
    Object.assign(f, { q: $("#f-q").value.trim(), device_class: $("#f-class").value.trim(), label: $("#f-label").value.trim(), online: $("#f-online").value, offset: 0 });
    viewFleet().catch((e) => toast(e.message, true)); }, 250); };
  ["#f-q", "#f-class", "#f-label"].forEach((s) => ($(s).oninput = onFilter)); $("#f-online").onchange = onFilter;
  $("#prev").onclick = () => { f.offset = Math.max(0, f.offset - f.limit); viewFleet().catch((e) => toast(e.message, true)); };
  $("#next").onclick = () => { f.offset += f.limit; viewFleet().catch((e) => toast(e.message, true)); };
  if (focused && $(`#${focused}`)) { const el = $(`#${focused}`); el.focus(); if (el.setSelectionRange && el.value) el.setSelectionRange(el.value.length, el.value.length); }
}
