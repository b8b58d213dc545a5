/* Rollouts: the list, the create form (with a preview of how many devices each stage takes),
 * and one rollout: stages numbered from 1, gate panels that freeze once the rollout stops,
 * the devices a rollback could not bring back, and actions with a typed reason. */
"use strict";

const RUNNING = ["canary", "wave"];
const STOPPED = ["aborted", "rolling_back", "rolled_back", "rollback_failed", "resolved", "paused"];
const UNRECOVERED = ["rollback_failed", "stranded", "rollback_pending", "rollback_sent", "failed"];

async function bundleIndex() {
  const page = await api("/api/v1/bundles?limit=200");
  return { list: page.items, byId: Object.fromEntries(page.items.map((b) => [b.bundle_id, b])) };
}

/* How the planner splits n target devices: a count takes that many, a percent is cumulative. */
function stagePreview(specs, n) {
  let assigned = 0;
  return specs.map((s) => {
    const want = s.count !== undefined ? Math.min(s.count, n - assigned) : Math.max(0, Math.ceil((s.percent / 100) * n - 1e-9) - assigned);
    assigned += want; return want;
  });
}

function parseStages(text) {
  const [canary, ...waves] = text.split(",").map((s) => +s.trim()).filter((v) => v > 0);
  return [{ count: canary || 1 }, ...waves.map((p) => ({ percent: Math.min(p, 100) }))];
}

function parseLabels(text) {
  return Object.fromEntries(text.split(",").map((s) => s.trim()).filter((kv) => kv.includes("=")).map((kv) => kv.split("=").map((x) => x.trim())));
}

async function previewCreate() {
  const cls = $("#r-class").value.trim(); const labels = parseLabels($("#r-labels").value);
  const specs = parseStages($("#r-stages").value);
  if (!cls) { $("#r-preview").textContent = "choose a device class"; return; }
  const params = new URLSearchParams({ device_class: cls, limit: 1 });
  for (const [k, v] of Object.entries(labels)) params.append("label", `${k}=${v}`);
  const n = (await api(`/api/v1/devices?${params}`)).total;
  const counts = stagePreview(specs, n);
  const parts = counts.map((c, i) => `<span class="stage-preview">stage ${i + 1}${i === 0 ? " (canary)" : ""}: <b>${c}</b> device${c === 1 ? "" : "s"}</span>`);
  const left = n - counts.reduce((a, b) => a + b, 0);
  $("#r-preview").innerHTML = `${n} matching device${n === 1 ? "" : "s"} → ${parts.join(" · ")}${left > 0 ? ` · <span class="warn-text">${left} not reached (last stage below 100 %)</span>` : ""}`;
}

async function viewRollouts() {
  const at = location.hash;
  const [page, bundles] = await Promise.all([api("/api/v1/rollouts?limit=200"), bundleIndex()]);
  const rows = page.items.map((r) => {
    const n = (r.stages || []).length;
    const stage = r.state === "draft" ? "—" : `${Math.min(r.current_stage + 1, n || 1)} of ${n}`;
    return `<tr data-rollout="${esc(r.rollout_id)}"><td><a href="#/rollout/${encodeURIComponent(r.rollout_id)}">${esc(r.name || r.rollout_id)}</a></td>
      <td>${pill(r.state)}</td><td>${stage}</td><td>${esc(r.device_class)}</td><td title="${esc(r.bundle_id)}">${esc(bundleName(bundles.byId, r.bundle_id))}</td><td class="wrap">${esc(r.reason)}</td><td>${ago(r.updated_at)}</td></tr>`;
  }).join("");
  if (location.hash !== at) return; // the operator moved on while this loaded
  $("#view").innerHTML = `<h1>Rollouts</h1>
    ${canOperate() ? `<details class="card" id="create"><summary><b>Create a rollout</b></summary>
      <div class="form-grid"><label>bundle<select id="r-bundle"></select></label><label>device class<input id="r-class" placeholder="device class"></label>
      <label>labels<input id="r-labels" placeholder="k=v,k=v"></label><label>stages<input id="r-stages" value="1,50,100" title="canary device count, then cumulative wave percentages"></label>
      <label>gate window (s)<input id="r-window" type="number" value="60" min="1"></label></div>
      <p id="r-preview" class="muted"></p><button class="primary" id="r-create">Create</button></details>` : ""}
    ${scroll(`<table id="rollouts"><thead><tr><th>rollout</th><th>state</th><th>stage</th><th>class</th><th>bundle</th><th>reason</th><th>updated</th></tr></thead><tbody>${rows}</tbody></table>`)}`;
  if (!canOperate()) return;
  $("#r-bundle").innerHTML = bundles.list.map((b) => `<option value="${esc(b.bundle_id)}" data-class="${esc(b.device_class)}">${esc(b.model_name)} v${b.version} · ${esc(b.device_class)} · ${esc(b.kind)}</option>`).join("");
  const refreshPreview = () => previewCreate().catch((e) => ($("#r-preview").textContent = e.message));
  let timer; const later = () => { clearTimeout(timer); timer = setTimeout(refreshPreview, 250); };
  const syncClass = () => { const o = $("#r-bundle").selectedOptions[0]; if (o) $("#r-class").value = o.dataset.class; later(); };
  $("#r-bundle").onchange = syncClass; ["#r-class", "#r-labels", "#r-stages"].forEach((s) => ($(s).oninput = later)); syncClass();
  $("#r-create").onclick = async () => {
    const config = { bundle_id: $("#r-bundle").value, target: { device_class: $("#r-class").value, labels: parseLabels($("#r-labels").value) },
      stages: parseStages($("#r-stages").value), gate_window_s: +$("#r-window").value || 60 };
    try { const r = await api("/api/v1/rollouts", { method: "POST", body: JSON.stringify({ config }) }); toast(`created ${r.rollout_id}`); location.hash = `#/rollout/${encodeURIComponent(r.rollout_id)}`; }
    catch (e) { toast(e.message, true); }
  };
}

function gatePanel(s, r) {
  if (!s.gate) return r.state !== "draft" && !RUNNING.includes(r.state) && s.state !== "pending" ? '<p class="muted gate-frozen">gate not evaluated: the rollout stopped first</p>' : "";
  const fmt = (v) => (v === null || v === undefined ? "—" : typeof v === "number" ? (+v.toFixed(4)).toString() : esc(v));
  const checks = Array.isArray(s.gate.checks) ? s.gate.checks : [];
  const rows = checks.map((c) => `<tr><td>${esc(c.name)}</td><td>${fmt(c.value)}</td><td>${esc(c.op || "")} ${fmt(c.threshold)}</td>
    <td>${c.passed === true ? pill("pass") : c.passed === false ? pill("fail") : pill(c.detail || "n/a", "")}</td></tr>`).join("");
  const live = RUNNING.includes(r.state) && s.state === "active";
  const verdict = s.gate.verdict === "wait" && !live ? pill("stopped", "stopped") : pill(s.gate.verdict, s.gate.verdict);
  const frozen = live ? "" : s.gate.verdict === "wait" ? `<p class="gate-frozen">frozen: the rollout is ${esc(r.state)}; last evaluation ${esc(ago(s.gate.ts))}, before the window closed</p>` : "";
  return `<h3>Gate ${verdict}</h3>${frozen}
    <div class="muted">${live || s.gate.verdict !== "wait" ? esc(s.gate.reason || "") : `it last said: “${esc(s.gate.reason || "")}”`} · ${s.gate.succeeded ?? 0} succeeded, ${s.gate.failed ?? 0} failed, ${s.gate.timed_out ?? 0} timed out${live ? `, ${s.gate.pending ?? 0} pending` : ""}</div>
    ${rows ? scroll(`<table class="gate"><thead><tr><th>metric</th><th>observed</th><th>threshold</th><th></th></tr></thead><tbody>${rows}</tbody></table>`) : ""}`;
}

function stageCard(s, r) {
  const t = s.targets || {}; const total = (s.devices || []).length || Object.values(t).reduce((a, b) => a + b, 0);
  const done = (t.committed || 0) + (t.succeeded || 0); const failed = (t.failed || 0) + (t.rolled_back || 0) + (t.rollback_failed || 0) + (t.stranded || 0);
  const stopped = !RUNNING.includes(r.state) && r.state !== "draft" && r.state !== "done";
  const stateName = stopped && s.state === "active" ? "stopped" : stopped && s.state === "pending" ? "not reached" : s.state;
  return `<div class="card stage" data-stage="${s.index + 1}"><b>Stage ${s.index + 1} · ${esc(s.name)}</b> ${pill(stateName)}
    <span class="muted">${total} device${total === 1 ? "" : "s"}${Object.keys(t).length ? " · " : ""}${Object.entries(t).map(([k, v]) => `${esc(k)}: ${v}`).join(", ")}</span>
    <div class="progress" title="${done}/${total} succeeded"><div style="width:${total ? (100 * done) / total : 0}%"></div></div>
    ${failed ? `<div class="progress"><div class="fail" style="width:${total ? (100 * failed) / total : 0}%"></div></div>` : ""}
    ${gatePanel(s, r)}</div>`;
}

function rollbackCard(r, targets) {
  if (!["rollback_failed", "rolling_back"].includes(r.state)) return "";
  const stuck = targets.filter((t) => UNRECOVERED.includes(t.state));
  if (!stuck.length) return "";
  const rows = stuck.map((t) => `<tr><td><a href="#/device/${encodeURIComponent(t.device_id)}">${esc(t.device_id)}</a></td><td>${pill(t.state, `t-${t.state}`)}</td><td>${t.attempts}</td><td class="wrap">${esc(t.detail || "no reason reported")}</td></tr>`).join("");
  const failedNow = r.state === "rollback_failed";
  return `<div class="card rollback-card" id="rollback-errors"><h2>${failedNow ? `Rollback failed on ${stuck.length} device${stuck.length === 1 ? "" : "s"}` : `Rollback still waiting on ${stuck.length} device${stuck.length === 1 ? "" : "s"}`}</h2>
    ${scroll(`<table><thead><tr><th>device</th><th>state</th><th>attempts</th><th>error</th></tr></thead><tbody>${rows}</tbody></table>`)}
    <p class="muted">${failedNow ? "Fix these devices (or re-image them), then <b>Resolve</b> to release them, or <b>Roll back</b> to try again." : "If these devices cannot answer, <b>Abort</b> the rollback: it ends as rollback_failed and lists them here."}</p></div>`;
}

/* Every move of the rollout, oldest first: who (an API token's name, or the engine), from
 * where to where, and the reason the move added (typed, a failed gate, unrecovered devices). */
function historyCard(moves) {
  if (!moves.length) return "";
  const rows = moves.map((m) => `<tr><td title="${esc(when(m.ts))}">${ago(m.ts)}</td><td>${esc(m.by)}</td><td>${esc(m.from)} → ${pill(m.to.split(" ")[0])}${m.to.includes(" ") ? esc(m.to.slice(m.to.indexOf(" "))) : ""}</td><td class="wrap">${esc(m.reason)}</td></tr>`).join("");
  return `<div class="card" id="history"><b>History</b>${scroll(`<table><thead><tr><th>when</th><th>by</th><th>move</th><th>reason</th></tr></thead><tbody>${rows}</tbody></table>`)}</div>`;
}

async function viewRollout(id) {
  const at = location.hash;
  const enc = encodeURIComponent(id);
  const [r, targets, bundles, history] = await Promise.all([api(`/api/v1/rollouts/${enc}`), api(`/api/v1/rollouts/${enc}/targets`), bundleIndex(), api(`/api/v1/rollouts/${enc}/history`)]);
  const trows = targets.map((t) => `<tr><td><a href="#/device/${encodeURIComponent(t.device_id)}">${esc(t.device_id)}</a></td><td>${t.stage_index + 1}</td><td>${pill(t.state, `t-${t.state}`)}</td><td>${t.attempts}</td><td class="wrap">${esc(t.detail)}</td></tr>`).join("");
  const op = canOperate();
  const button = (action, label, cls, enabled) => `<button class="${cls}" data-action="${action}" ${op && enabled ? "" : "disabled"} title="${op ? "" : "needs the operator role"}">${label}</button>`;
  const active = RUNNING.includes(r.state);
  const reasonTyped = ["pause", "abort", "rollback", "resolve"];
  // the typed reason survives the live re-renders of this page
  const typed = state.actionReason && state.actionReason.id === id ? state.actionReason.text : "";
  const hadFocus = document.activeElement && document.activeElement.id === "action-reason";
  if (location.hash !== at) return; // the operator moved on while this loaded
  $("#view").innerHTML = `<h1>Rollout ${esc(r.name || r.rollout_id)} <span id="rollout-state">${pill(r.state)}</span></h1>
    <div class="muted">bundle <b title="${esc(r.bundle_id)}">${esc(bundleName(bundles.byId, r.bundle_id))}</b> · previous <span title="${esc(r.previous_bundle_id || "")}">${esc(r.previous_bundle_id ? bundleName(bundles.byId, r.previous_bundle_id) : "what each device ran before")}</span> · by ${esc(r.created_by)}</div>
    ${r.reason ? `<div class="card" id="reason"><b>Reason:</b> ${esc(r.reason)}</div>` : ""}
    ${(r.warnings || []).length ? `<div class="card" id="warnings"><b>Before you start:</b><ul>${r.warnings.map((w) => `<li>${esc(w)}</li>`).join("")}</ul></div>` : ""}
    ${r.delivery ? `<div class="card" id="delivery"><b>Bytes shipped:</b> ${kib(r.delivery.bytes_shipped)} of ${kib(r.delivery.bytes_full)} that full bundles would have cost
      (${r.delivery.bytes_full ? Math.round((100 * r.delivery.bytes_shipped) / r.delivery.bytes_full) : 100} %, deltas against what devices run)</div>` : ""}
    ${rollbackCard(r, targets)}
    ${historyCard(history)}
    <div class="actions">${op ? `<input id="action-reason" placeholder="reason (recorded with the action)" value="${esc(typed)}">` : ""}
      ${button("start", "Start", "primary", r.state === "draft")}${button("pause", "Pause", "", active)}${button("resume", "Resume", "", r.state === "paused")}
      ${button("abort", "Abort", "danger", active || ["paused", "draft", "rolling_back"].includes(r.state))}${button("rollback", "Roll back", "danger", !["rolled_back", "rolling_back", "draft", "resolved"].includes(r.state))}${button("resolve", "Resolve", "", r.state === "rollback_failed")}</div>
    ${(r.stages || []).map((s) => stageCard(s, r)).join("")}
    <h2>Devices</h2>${scroll(`<table id="targets"><thead><tr><th>device</th><th>stage</th><th>state</th><th>attempts</th><th>detail</th></tr></thead><tbody>${trows}</tbody></table>`)}`;
  if ($("#action-reason")) {
    $("#action-reason").oninput = (e) => (state.actionReason = { id, text: e.target.value });
    if (hadFocus) $("#action-reason").focus();
  }
  document.querySelectorAll("[data-action]").forEach((b) => (b.onclick = async () => {
    const action = b.dataset.action;
    const reason = ($("#action-reason") && $("#action-reason").value.trim()) || `${action} from the dashboard`;
    if (reasonTyped.includes(action) && !confirm(`${action} rollout ${r.name || r.rollout_id}?\nreason: ${reason}`)) return;
    try {
      await api(`/api/v1/rollouts/${enc}/${action}`, { method: "POST", body: JSON.stringify({ reason }) });
      state.actionReason = null; toast(`${action}: ok`); viewRollout(id).catch((e) => toast(e.message, true));
    }
    catch (e) { toast(e.message, true); }
  }));
}
