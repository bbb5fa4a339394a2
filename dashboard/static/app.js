// The dashboard page: four views over one stream of Server-Sent Events (/api/events).
// No framework and no build step; every text from the store goes through textContent.

const RESOURCES = ["nodes", "deployments", "replicasets", "pods"];
const TIMELINE_WINDOW = 600; // seconds of leader history drawn
const TAIL_ROWS = 200;
const PALETTE = ["#2f6fde", "#d69e2e", "#805ad5", "#dd6b20", "#319795", "#d53f8c", "#718096"];

const state = {
  store: null,
  locks: null,
  locksAt: 0,
  objects: Object.fromEntries(RESOURCES.map((r) => [r, new Map()])),
  synced: {},
};

// ---- small helpers ----

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const svgNS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(svgNS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function badge(text, kind = text) {
  return el("span", { class: `badge ${kind}` }, text);
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function rate(n) {
  if (n === null || n === undefined) return "–";
  return n >= 100 ? n.toFixed(0) : n.toFixed(1);
}

function seconds(s) {
  if (s < 60) return `${s.toFixed(1)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${Math.floor(s % 60)}s`;
  return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
}

function age(timestamp) {
  const then = Date.parse(timestamp || "");
  if (Number.isNaN(then)) return "–";
  return seconds(Math.max(0, (Date.now() - then) / 1000)).replace(/\.\ds$/, "s");
}

function objectKey(obj) {
  const meta = obj.metadata || {};
  return meta.namespace ? `${meta.namespace}/${meta.name}` : meta.name;
}

function colorOf(name) {
  if (!name) return "#cbd5e0";
  const names = (state.store?.members || []).map((m) => m.name).sort();
  const index = names.indexOf(name);
  if (index >= 0) return PALETTE[index % PALETTE.length];
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  return PALETTE[hash % PALETTE.length];
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(data.message || `${response.status} ${response.statusText}`);
    error.status = response.status;
    error.reason = data.reason || "";
    throw error;
  }
  return data;
}

function showResult(ok, text) {
  const box = document.getElementById("action-result");
  box.hidden = false;
  box.className = `result ${ok ? "ok" : "error"}`;
  box.dataset.outcome = ok ? "ok" : "error";
  box.textContent = text;
}

function failure(error) {
  if (error.status === 409 && error.reason === "Conflict") {
    return `Conflict: ${error.message}. The page now shows the current version.`;
  }
  return `${error.reason || "Error"}: ${error.message}`;
}

// ---- navigation ----

function showPage() {
  const page = (location.hash || "#store").slice(1);
  for (const section of document.querySelectorAll(".page")) {
    section.classList.toggle("active", section.id === `page-${page}`);
  }
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.page === page);
  }
  if (page === "keys" && !document.getElementById("keys-list").dataset.loaded) listKeys();
}

// ---- the live stream ----

function setConnection(text) {
  const node = document.getElementById("connection");
  node.dataset.state = text;
  node.textContent = text;
}

function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("hello", () => setConnection("live"));
  source.addEventListener("store", (event) => {
    state.store = JSON.parse(event.data);
    renderStore();
  });
  source.addEventListener("locks", (event) => {
    state.locks = JSON.parse(event.data);
    state.locksAt = performance.now();
    renderLocks();
  });
  source.addEventListener("objects", (event) => {
    const data = JSON.parse(event.data);
    state.objects[data.resource] = new Map(data.items.map((o) => [objectKey(o), o]));
    state.synced[data.resource] = data.synced;
    scheduleWorkloads();
  });
  source.addEventListener("object", (event) => {
    const data = JSON.parse(event.data);
    const objects = state.objects[data.resource];
    if (!objects) return;
    if (data.type === "DELETED") objects.delete(objectKey(data.object));
    else objects.set(objectKey(data.object), data.object);
    scheduleWorkloads();
  });
  source.onerror = () => {
    setConnection("reconnecting");
    if (source.readyState === EventSource.CLOSED) {
      setTimeout(connect, 1000); // the browser gave up; start a new stream
    }
  };
}

// ---- Store ----

function tile(label, value, id) {
  return el("div", { class: "tile", "data-tile": id }, el("div", { class: "label" }, label),
    el("div", { class: "value" }, value));
}

function renderStore() {
  const view = state.store;
  if (!view) return;
  const members = view.members;
  const up = members.filter((m) => m.role !== "down").length;
  const latest = view.rates.length ? view.rates[view.rates.length - 1] : null;
  document.getElementById("store-summary").replaceChildren(
    tile("Leader", view.leader || "none", "leader"),
    tile("Term", view.term || "–", "term"),
    tile("Members up", `${up}/${members.length}`, "members"),
    tile("Writes/s", latest ? rate(latest.writes) : "–", "writes"),
    tile("Reads/s", latest ? rate(latest.reads) : "–", "reads"),
  );
  const rows = members.map((m) => {
    const health = m.role === "down" ? badge("unreachable", "down")
      : m.healthy ? badge("healthy", "ok") : badge("unhealthy", "bad");
    const role = m.role === "leader" ? badge("★ leader", "leader") : badge(m.role, m.role);
    const title = [m.unreachable, ...m.errors, m.metrics_error].filter(Boolean).join("\n");
    return el("tr", {
      class: m.role, "data-member": m.name, "data-role": m.role, title: title || undefined,
    },
    el("td", {}, m.name), el("td", {}, m.id), el("td", {}, role), el("td", {}, m.term ?? "–"),
    el("td", {}, m.commit_index ?? "–"), el("td", {}, m.applied_index ?? "–"),
    el("td", {}, bytes(m.db_size)), el("td", {}, health),
    el("td", {}, m.alarms.length ? m.alarms.map((a) => badge(a, "bad")) : "none"),
    el("td", {}, m.rates ? rate(m.rates.writes) : "–"),
    el("td", {}, m.rates ? rate(m.rates.reads) : "–"),
    el("td", {}, m.endpoint));
  });
  document.querySelector("#members tbody").replaceChildren(...rows);
  const changes = [...view.timeline].reverse().slice(0, 20).map((c) => el("tr", {},
    el("td", {}, new Date(c.t * 1000).toLocaleTimeString()),
    el("td", {}, c.leader ? c.leader : badge("no leader", "bad")), el("td", {}, c.term || "–")));
  document.querySelector("#leader-changes tbody").replaceChildren(...changes);
  drawLeaderChart(view);
  drawRateChart(view);
}

function drawLeaderChart(view) {
  const chart = document.getElementById("leader-chart");
  const width = 600;
  const now = view.now;
  const start = now - TIMELINE_WINDOW;
  const x = (t) => ((Math.max(t, start) - start) / TIMELINE_WINDOW) * width;
  const parts = [];
  const timeline = view.timeline;
  for (let i = 0; i < timeline.length; i += 1) {
    const from = timeline[i].t;
    const to = i + 1 < timeline.length ? timeline[i + 1].t : now;
    if (to < start) continue;
    const left = x(from);
    const right = Math.max(x(to), left + 1.5);
    const leader = timeline[i].leader;
    const title = `${leader || "no leader"} (term ${timeline[i].term})`;
    const rect = svg("rect", { x: left, y: 8, width: right - left, height: 34, fill: colorOf(leader) });
    rect.append(svg("title", {}, title));
    parts.push(rect);
    if (right - left > 44) {
      parts.push(svg("text", { x: left + 4, y: 30, fill: "#fff", "font-size": 12 }, leader || "none"));
    }
  }
  for (let minute = 0; minute <= TIMELINE_WINDOW / 60; minute += 2) {
    const at = width - (minute * 60 * width) / TIMELINE_WINDOW;
    parts.push(svg("line", { x1: at, x2: at, y1: 44, y2: 50, stroke: "#a0aec0" }));
    parts.push(svg("text", {
      x: Math.min(Math.max(at, 12), width - 12), y: 64, "font-size": 10, fill: "#68707f",
      "text-anchor": "middle",
    }, minute ? `-${minute}m` : "now"));
  }
  chart.replaceChildren(...parts);
  const names = [...new Set(timeline.map((c) => c.leader))];
  document.getElementById("leader-legend").replaceChildren(...names.map((name) => el("span", {},
    el("span", { class: "swatch", style: `background:${colorOf(name)}` }), name || "no leader")));
}

function drawRateChart(view) {
  const chart = document.getElementById("rate-chart");
  const note = document.getElementById("rate-note");
  const samples = view.rates;
  const missing = view.members.filter((m) => m.metrics_error && m.role !== "down");
  note.textContent = missing.length
    ? `no metrics from ${missing.map((m) => m.name).join(", ")}: ${missing[0].metrics_error}`
    : "";
  const width = 600;
  const height = 140;
  const top = 10;
  const bottom = 120;
  const parts = [];
  if (samples.length < 2) {
    parts.push(svg("text", { x: 12, y: 70, "font-size": 12, fill: "#68707f" },
      missing.length ? "rates need the members' /metrics" : "collecting samples…"));
    chart.replaceChildren(...parts);
    return;
  }
  const peak = Math.max(1, ...samples.map((s) => Math.max(s.writes, s.reads)));
  const first = samples[0].t;
  const span = Math.max(1, samples[samples.length - 1].t - first);
  const px = (t) => 40 + ((t - first) / span) * (width - 50);
  const py = (v) => bottom - (v / peak) * (bottom - top);
  for (const fraction of [0, 0.5, 1]) {
    const y = py(peak * fraction);
    parts.push(svg("line", { x1: 40, x2: width - 10, y1: y, y2: y, stroke: "#e2e8f0" }));
    parts.push(svg("text", { x: 34, y: y + 4, "font-size": 10, fill: "#68707f", "text-anchor": "end" },
      rate(peak * fraction)));
  }
  for (const [field, color] of [["writes", "#2f6fde"], ["reads", "#38a169"]]) {
    const points = samples.map((s) => `${px(s.t).toFixed(1)},${py(s[field]).toFixed(1)}`).join(" ");
    parts.push(svg("polyline", { points, fill: "none", stroke: color, "stroke-width": 1.8 }));
  }
  parts.push(svg("text", { x: 40, y: height - 4, "font-size": 10, fill: "#68707f" },
    `${seconds(span)} ago`));
  parts.push(svg("text", { x: width - 10, y: height - 4, "font-size": 10, fill: "#68707f",
    "text-anchor": "end" }, "now"));
  chart.replaceChildren(...parts);
}

// ---- Control plane ----

function renderLocks() {
  const view = state.locks;
  if (!view) return;
  const elapsed = (performance.now() - state.locksAt) / 1000;
  const lockRows = view.locks.map((lock) => {
    const ago = lock.renewed_ago + elapsed;
    const expired = lock.holder && lock.lease_duration && ago > lock.lease_duration;
    const holder = lock.holder ? el("span", {}, lock.holder, expired ? [" ", badge("expired")] : [])
      : badge("released", "warn");
    return el("tr", { "data-lock": `${lock.namespace}/${lock.name}`, "data-holder": lock.holder },
      el("td", {}, `${lock.namespace}/${lock.name}`), el("td", {}, holder),
      el("td", {}, `${seconds(ago)} ago`), el("td", {}, lock.lease_duration ? `${lock.lease_duration}s` : "–"),
      el("td", {}, lock.transitions ?? "–"), el("td", {}, lock.fencing_token ?? "–"),
      el("td", { class: "wrap" }, lock.standbys.length ? lock.standbys.join(", ") : "none"));
  });
  if (!lockRows.length) {
    lockRows.push(el("tr", { class: "empty" }, el("td", { colspan: 7 },
      view.synced ? "no lease locks in the store" : "loading…")));
  }
  document.querySelector("#locks tbody").replaceChildren(...lockRows);
  const beatRows = view.heartbeats.map((beat) => el("tr", {},
    el("td", {}, `${beat.namespace}/${beat.name}`), el("td", {}, beat.holder),
    el("td", {}, `${seconds(beat.renewed_ago + elapsed)} ago`),
    el("td", {}, beat.lease_duration ? `${beat.lease_duration}s` : "–")));
  document.querySelector("#heartbeats tbody").replaceChildren(...beatRows);
}

// ---- Workloads ----
// Each table is described by TABLES; rows are keyed and updated in place, so an input being
// typed into (a scale count) survives the live updates. A new kind is one more entry here,
// one in RESOURCES and a <table> on the page.

function readyOf(node) {
  const ready = ((node.status || {}).conditions || []).find((c) => c.type === "Ready");
  if (!ready) return "Unknown";
  return ready.status === "True" ? "Ready" : "NotReady";
}

function podsOn(nodeName) {
  return [...state.objects.pods.values()].filter((p) => (p.spec || {}).nodeName === nodeName);
}

function phaseOf(pod) {
  if ((pod.metadata || {}).deletionTimestamp) return "Terminating";
  return (pod.status || {}).phase || "Pending";
}

function controllerRef(obj) {
  return ((obj.metadata || {}).ownerReferences || []).find((r) => r.controller) || null;
}

function ownerOf(obj) {
  const ref = controllerRef(obj);
  return ref ? ref.name : "";
}

const REVISION = "deployment.kubernetes.io/revision";

function revisionOf(obj) {
  return ((obj.metadata || {}).annotations || {})[REVISION] || "";
}

// The Deployment controlling a ReplicaSet (same namespace, name and uid), or null.
function deploymentOf(rs) {
  const ref = controllerRef(rs);
  if (!ref || ref.kind !== "Deployment") return null;
  const deployment = state.objects.deployments.get(`${rs.metadata.namespace}/${ref.name}`);
  return deployment && deployment.metadata.uid === ref.uid ? deployment : null;
}

// A pod's Deployment, through the ReplicaSet that controls it ("" if none).
function deploymentNameOf(pod) {
  const ref = controllerRef(pod);
  if (!ref || ref.kind !== "ReplicaSet") return "";
  const rs = state.objects.replicasets.get(`${pod.metadata.namespace}/${ref.name}`);
  const deployment = rs && rs.metadata.uid === ref.uid ? deploymentOf(rs) : null;
  return deployment ? deployment.metadata.name : "";
}

// The ReplicaSets a Deployment controls, newest revision first.
function replicaSetsOf(deployment) {
  const owned = [...state.objects.replicasets.values()].filter((rs) => deploymentOf(rs) === deployment);
  return owned.sort((a, b) => Number(revisionOf(b)) - Number(revisionOf(a))
    || a.metadata.name.localeCompare(b.metadata.name));
}

// What `kubectl rollout status` would say, in one word.
function rolloutOf(deployment) {
  const spec = deployment.spec || {};
  const status = deployment.status || {};
  const desired = spec.replicas ?? 1;
  const progressing = (status.conditions || []).find((c) => c.type === "Progressing");
  if (spec.paused) return "paused";
  if (progressing && progressing.reason === "ProgressDeadlineExceeded") return "stalled";
  if ((status.observedGeneration ?? 0) < (deployment.metadata.generation ?? 0)) return "pending";
  const done = (status.updatedReplicas ?? 0) === desired && (status.replicas ?? 0) === desired
    && (status.availableReplicas ?? 0) === desired;
  return done ? "complete" : "progressing";
}

const ROLLOUT_BADGE = { complete: "ok", progressing: "warn", pending: "warn", paused: "warn", stalled: "bad" };

function actionButton(label, kind, onclick) {
  return el("button", { class: kind, type: "button", onclick }, label);
}

async function act(button, work, success) {
  button.disabled = true;
  try {
    const result = await work();
    showResult(true, success(result));
  } catch (error) {
    showResult(false, failure(error));
  } finally {
    button.disabled = false;
  }
}

function currentVersion(resource, key) {
  const obj = state.objects[resource].get(key);
  return obj ? obj.metadata.resourceVersion : "";
}

const KIND = { deployments: "Deployment", replicasets: "ReplicaSet" };

// A replica count and a Scale button; the write carries the version the page shows.
function scaleControl(resource, key, obj) {
  const input = el("input", {
    type: "number", min: 0, max: 100, value: (obj.spec || {}).replicas ?? 0, "aria-label": "replicas",
  });
  const button = actionButton("Scale", "", () => {
    const [namespace, name] = key.split("/");
    const replicas = Number.parseInt(input.value, 10);
    act(button,
      () => api("POST", `/api/${resource}/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}/scale`,
        { replicas, resourceVersion: currentVersion(resource, key) }),
      (result) => `Scaled ${KIND[resource]} ${key} to ${result.spec.replicas}`);
  });
  button.dataset.action = "scale";
  return [input, " ", button];
}

function refreshScale(cell, obj) {
  const input = cell.querySelector("input");
  if (input && document.activeElement !== input) input.value = (obj.spec || {}).replicas ?? 0;
}

function imagesOf(obj) {
  const containers = ((((obj.spec || {}).template || {}).spec || {}).containers) || [];
  return containers.map((c) => c.image).join(", ");
}

const TABLES = {
  nodes: {
    headers: ["Name", "Status", "Taints", "Allocatable", "Pods", "Age", ""],
    attrs: (node) => ({ "data-ready": readyOf(node), "data-unschedulable": String(!!(node.spec || {}).unschedulable) }),
    cells: (node) => {
      const spec = node.spec || {};
      const alloc = (node.status || {}).allocatable || {};
      const pods = podsOn(node.metadata.name);
      const running = pods.filter((p) => phaseOf(p) === "Running").length;
      const status = [badge(readyOf(node))];
      if (spec.unschedulable) status.push(" ", badge("cordoned"));
      const taints = (spec.taints || []).map((t) => `${t.key}${t.value ? `=${t.value}` : ""}:${t.effect}`);
      return [node.metadata.name, status, taints.length ? taints.join(", ") : "none",
        `cpu ${alloc.cpu ?? "–"}, memory ${alloc.memory ?? "–"}, pods ${alloc.pods ?? "–"}`,
        `${pods.length} (${running} Running)`, age(node.metadata.creationTimestamp)];
    },
    action: (key) => {
      const button = actionButton("Cordon", "secondary", () => {
        const node = state.objects.nodes.get(key);
        const cordon = !(node.spec || {}).unschedulable;
        act(button,
          () => api("POST", `/api/nodes/${encodeURIComponent(key)}/${cordon ? "cordon" : "uncordon"}`,
            { resourceVersion: node.metadata.resourceVersion }),
          () => `${cordon ? "Cordoned" : "Uncordoned"} node ${key}`);
      });
      button.dataset.action = "cordon";
      return button;
    },
    refresh: (cell, node) => {
      const button = cell.querySelector("button");
      button.textContent = (node.spec || {}).unschedulable ? "Uncordon" : "Cordon";
    },
  },
  deployments: {
    headers: ["Namespace", "Name", "Desired", "Updated", "Ready", "Available", "Revision", "Rollout",
      "ReplicaSets", "Image", "Age", "Scale"],
    attrs: (d) => {
      const status = d.status || {};
      return {
        "data-desired": (d.spec || {}).replicas ?? 1, "data-updated": status.updatedReplicas ?? 0,
        "data-ready": status.readyReplicas ?? 0, "data-available": status.availableReplicas ?? 0,
        "data-revision": revisionOf(d), "data-rollout": rolloutOf(d),
      };
    },
    cells: (d) => {
      const status = d.status || {};
      const revision = revisionOf(d);
      const rollout = rolloutOf(d);
      const owned = replicaSetsOf(d).map((rs, index) => {
        const current = revisionOf(rs) === revision;
        const pods = `${(rs.status || {}).readyReplicas ?? 0}/${(rs.spec || {}).replicas ?? 0}`;
        return el("span", { class: "owned", "data-replicaset": rs.metadata.name },
          index ? ", " : "", rs.metadata.name, " ", badge(current ? "new" : "old", current ? "ok" : "old"),
          ` ${pods}`);
      });
      return [d.metadata.namespace, d.metadata.name, (d.spec || {}).replicas ?? 1,
        status.updatedReplicas ?? 0, status.readyReplicas ?? 0, status.availableReplicas ?? 0,
        revision || "–", badge(rollout, ROLLOUT_BADGE[rollout]), owned.length ? owned : "none",
        imagesOf(d), age(d.metadata.creationTimestamp)];
    },
    action: (key, d) => scaleControl("deployments", key, d),
    refresh: refreshScale,
  },
  replicasets: {
    headers: ["Namespace", "Name", "Desired", "Current", "Ready", "Controlled by", "Image", "Age", "Scale"],
    attrs: (rs) => {
      const owner = deploymentOf(rs);
      return {
        "data-desired": (rs.spec || {}).replicas ?? 0, "data-ready": (rs.status || {}).readyReplicas ?? 0,
        "data-deployment": owner ? owner.metadata.name : "",
      };
    },
    cells: (rs) => {
      const spec = rs.spec || {};
      const status = rs.status || {};
      const owner = deploymentOf(rs);
      return [rs.metadata.namespace, rs.metadata.name, spec.replicas ?? 0, status.replicas ?? 0,
        status.readyReplicas ?? 0, owner ? `Deployment ${owner.metadata.name}` : "–", imagesOf(rs),
        age(rs.metadata.creationTimestamp)];
    },
    // A ReplicaSet its Deployment controls is scaled through the Deployment: the
    // controller would set it back.
    actionKey: (rs) => (deploymentOf(rs) ? "owned" : "free"),
    action: (key, rs) => (deploymentOf(rs)
      ? el("span", { class: "note" }, `scaled by Deployment ${deploymentOf(rs).metadata.name}`)
      : scaleControl("replicasets", key, rs)),
    refresh: refreshScale,
  },
  pods: {
    headers: ["Namespace", "Name", "Phase", "Node", "Owner", "Age", ""],
    attrs: (pod) => ({
      "data-phase": phaseOf(pod), "data-node": (pod.spec || {}).nodeName || "",
      "data-owner": ownerOf(pod), "data-deployment": deploymentNameOf(pod),
    }),
    cells: (pod) => [pod.metadata.namespace, pod.metadata.name, badge(phaseOf(pod)),
      (pod.spec || {}).nodeName || "(unscheduled)", ownerOf(pod) || "–", age(pod.metadata.creationTimestamp)],
    action: (key) => {
      const button = actionButton("Delete", "danger", () => {
        const [namespace, name] = key.split("/");
        act(button,
          () => api("DELETE", `/api/pods/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`,
            { resourceVersion: currentVersion("pods", key) }),
          () => `Deleted pod ${key}`);
      });
      button.dataset.action = "delete";
      return button;
    },
  },
};

function renderTable(resource) {
  const spec = TABLES[resource];
  const table = document.getElementById(resource);
  if (!table.tHead.rows.length) {
    table.tHead.append(el("tr", {}, spec.headers.map((h) => el("th", {}, h))));
  }
  const body = table.tBodies[0];
  const objects = [...state.objects[resource].entries()].sort(([a], [b]) => a.localeCompare(b));
  const existing = new Map([...body.rows].filter((r) => r.dataset.key).map((r) => [r.dataset.key, r]));
  let previous = null;
  for (const [key, obj] of objects) {
    let row = existing.get(key);
    existing.delete(key);
    if (!row) {
      row = el("tr", { "data-key": key });
      const cells = spec.cells(obj).map(() => el("td"));
      row.append(...cells, el("td", { class: "action" }));
    }
    const actionKey = spec.actionKey ? spec.actionKey(obj) : "";
    if (row.dataset.actionKey !== actionKey || !row.lastChild.childNodes.length) {
      row.lastChild.replaceChildren(...[spec.action(key, obj)].flat());
      row.dataset.actionKey = actionKey;
    }
    const values = spec.cells(obj);
    values.forEach((value, index) => {
      const cell = row.cells[index];
      const fresh = Array.isArray(value) ? value : [value];
      const text = fresh.map((v) => (v instanceof Node ? v.textContent : String(v))).join("");
      if (cell.dataset.text !== text) {
        cell.replaceChildren(...fresh.map((v) => (v instanceof Node ? v : document.createTextNode(String(v)))));
        cell.dataset.text = text;
      }
    });
    for (const [name, value] of Object.entries(spec.attrs(obj))) row.setAttribute(name, String(value));
    row.dataset.rv = obj.metadata.resourceVersion;
    if (spec.refresh) spec.refresh(row.cells[row.cells.length - 1], obj);
    const anchor = previous ? previous.nextSibling : body.firstChild;
    if (row !== anchor) body.insertBefore(row, anchor);
    previous = row;
  }
  for (const row of existing.values()) row.remove();
  const empty = body.querySelector("tr.empty");
  if (!objects.length && !empty) {
    body.append(el("tr", { class: "empty" }, el("td", { colspan: spec.headers.length },
      state.synced[resource] ? `no ${resource}` : "loading…")));
  } else if (objects.length && empty) {
    empty.remove();
  }
}

let workloadsPending = false;

function scheduleWorkloads() {
  if (workloadsPending) return;
  workloadsPending = true;
  requestAnimationFrame(() => {
    workloadsPending = false;
    for (const resource of RESOURCES) renderTable(resource);
  });
}

function setUpCreateForm() {
  const form = document.getElementById("create-replicaset-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(form).entries());
    const body = { ...data, replicas: Number.parseInt(data.replicas, 10) };
    const button = form.querySelector("button");
    act(button, () => api("POST", "/api/replicasets", body),
      (rs) => `Created ReplicaSet ${rs.metadata.namespace}/${rs.metadata.name}`);
  });
}

// ---- Keys ----

async function listKeys(prefix) {
  const input = document.getElementById("keys-prefix");
  if (prefix !== undefined) input.value = prefix;
  const current = input.value;
  const list = document.getElementById("keys-list");
  list.dataset.loaded = "yes";
  const info = document.getElementById("keys-info");
  let data;
  try {
    data = await api("GET", `/api/keys?prefix=${encodeURIComponent(current)}&limit=2000`);
  } catch (error) {
    info.textContent = failure(error);
    return;
  }
  info.textContent = `${data.count} key${data.count === 1 ? "" : "s"} at revision ${data.revision}`
    + (data.more ? " (first 2000 shown)" : "");
  const folders = new Map();
  const leaves = [];
  for (const kv of data.keys) {
    const rest = kv.key.slice(current.length);
    const slash = rest.indexOf("/", 1);
    if (slash > 0 && slash < rest.length - 1) {
      const folder = rest.slice(0, slash + 1);
      folders.set(folder, (folders.get(folder) || 0) + 1);
    } else {
      leaves.push(kv);
    }
  }
  const items = [];
  for (const [folder, count] of folders) {
    items.push(el("li", { class: "folder", "data-folder": current + folder, onclick: () => listKeys(current + folder) },
      folder, el("span", { class: "count" }, `${count}`)));
  }
  for (const kv of leaves) {
    items.push(el("li", { "data-key": kv.key, onclick: () => showKey(kv.key) }, kv.key.slice(current.length) || kv.key));
  }
  list.replaceChildren(...items);
  const crumbs = [el("a", { onclick: () => listKeys("") }, "(all keys)")];
  let path = "";
  for (const part of current.split("/").slice(0, -1)) {
    path += `${part}/`;
    const target = path;
    crumbs.push(" ", el("a", { onclick: () => listKeys(target) }, part ? `${part}/` : "/"));
  }
  document.getElementById("keys-crumbs").replaceChildren(...crumbs);
}

async function showKey(key, revision) {
  const detail = document.getElementById("key-detail");
  detail.hidden = false;
  detail.dataset.key = key;
  for (const item of document.querySelectorAll("#keys-list li")) {
    item.classList.toggle("selected", item.dataset.key === key);
  }
  document.getElementById("key-name").textContent = key;
  const value = document.getElementById("key-value");
  const meta = document.getElementById("key-meta");
  const query = `key=${encodeURIComponent(key)}${revision ? `&revision=${revision}` : ""}`;
  try {
    const kv = await api("GET", `/api/key?${query}`);
    const rows = [["Revision shown", revision || `latest (${kv.revision})`], ["Created at", kv.create_revision],
      ["Modified at", kv.mod_revision], ["Version", kv.version], ["Lease", kv.lease || "none"],
      ["Value", `${kv.value.kind}, ${bytes(kv.value.size)}`]];
    meta.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    value.textContent = kv.value.text;
    value.dataset.kind = kv.value.kind;
  } catch (error) {
    meta.replaceChildren();
    value.textContent = failure(error);
    value.dataset.kind = "error";
    return;
  }
  if (revision) return;
  try {
    const history = await api("GET", `/api/key/history?key=${encodeURIComponent(key)}&limit=20`);
    document.querySelector("#key-history tbody").replaceChildren(...history.versions.map((v) => el("tr",
      { onclick: () => showKey(key, v.mod_revision), style: "cursor:pointer" },
      el("td", {}, v.mod_revision), el("td", {}, v.version),
      el("td", { class: "wrap" }, v.value.text.replace(/\s+/g, " ").slice(0, 120)))));
    document.getElementById("key-history-note").textContent = history.compacted
      ? `older versions were compacted (up to revision ${history.compacted})` : "";
  } catch (error) {
    document.getElementById("key-history-note").textContent = failure(error);
  }
}

let tail = null;

function toggleTail(event) {
  event.preventDefault();
  const status = document.getElementById("tail-state");
  const button = document.getElementById("tail-toggle");
  if (tail) {
    tail.close();
    tail = null;
    button.textContent = "Start";
    status.textContent = "stopped";
    status.dataset.state = "stopped";
    return;
  }
  const prefix = document.getElementById("tail-prefix").value;
  tail = new EventSource(`/api/keys/tail?prefix=${encodeURIComponent(prefix)}`);
  button.textContent = "Stop";
  status.textContent = "connecting…";
  tail.addEventListener("watching", () => {
    status.textContent = `watching ${prefix || "every key"}`;
    status.dataset.state = "watching";
  });
  tail.addEventListener("change", (message) => {
    const change = JSON.parse(message.data);
    const body = document.querySelector("#tail tbody");
    body.prepend(el("tr", { "data-key": change.key, "data-type": change.type },
      el("td", {}, change.mod_revision), el("td", {}, badge(change.type, change.type === "DELETE" ? "bad" : "ok")),
      el("td", { class: "wrap" }, change.key), el("td", { class: "wrap" }, change.preview)));
    while (body.rows.length > TAIL_ROWS) body.lastChild.remove();
  });
  tail.addEventListener("overflow", () => {
    status.textContent = "too many changes to keep up; restarting";
  });
  tail.onerror = () => {
    status.textContent = "reconnecting…";
    status.dataset.state = "reconnecting";
  };
}

// ---- start ----

window.addEventListener("hashchange", showPage);
document.getElementById("keys-form").addEventListener("submit", (event) => {
  event.preventDefault();
  listKeys();
});
document.getElementById("key-revision-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const detail = document.getElementById("key-detail");
  const revision = document.getElementById("key-revision").value;
  if (detail.dataset.key) showKey(detail.dataset.key, revision ? Number(revision) : undefined);
});
document.getElementById("tail-form").addEventListener("submit", toggleTail);
setUpCreateForm();
showPage();
connect();
// Ages and "renewed ago" advance between updates.
setInterval(() => {
  renderLocks();
  scheduleWorkloads();
}, 1000);
