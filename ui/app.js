// Porthole's settings page. Talks only to the app's commands and events; no network, no libraries.
"use strict";

const { invoke } = window.__TAURI__.core;
const { listen } = window.__TAURI__.event;
const OTHER = "\u0000other";
const $ = (id) => document.getElementById(id);

let page = null;       // the last page_state
let catalog = null;    // namespaces → services → ports, or null when listing is not possible
let editing = null;    // null: adding; a name: editing that forward
let editingDraft = null; // the draft being edited (a forward to pods keeps its target)

// Work in flight (a command and the re-render after it): `<body data-pending="0">` once the page
// has settled. The WebDriver tests wait on it before their next step.
let pending = 0;
function busy(handler) {
  return async (...args) => {
    document.body.dataset.pending = String(++pending);
    try {
      return await handler(...args);
    } finally {
      document.body.dataset.pending = String(--pending);
    }
  };
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

// ---- forwards table, kept live by `snapshot` events ----

// The route in words, as `porthole status` says it.
function routeText(route) {
  if (route.path !== "tunnel") return route.target;
  return route.pod ? "tunnel → " + route.pod : "tunnel (no ready pod)";
}

// A cluster's API state in words: `connected`, `unreachable: connection refused`.
function clusterState(cluster) {
  return cluster.status.state + (cluster.status.detail ? `: ${cluster.status.detail}` : "");
}

function renderSnapshot(snapshot) {
  const clusters = snapshot.clusters || [];
  const several = clusters.length > 1;
  const kubectl = clusters.find((c) => c.kubectl) || clusters[0];
  $("cluster").textContent = several
    ? clusters.map((c) => `${c.name} · ${clusterState(c)}`).join("   ")
    : kubectl
      ? `${kubectl.context || "kubectl's current-context"} · ${clusterState(kubectl)}`
      : "connecting…";
  const kube = snapshot.kubeconfig;
  const wrong = kube && kube.state !== "ok";
  $("banner").hidden = !wrong;
  // The sentence comes with the state: the tray, the CLI and notifications say the same.
  if (wrong) $("banner-text").textContent = kube.fix ? `${kube.sentence}. Fix: ${kube.fix}.` : `${kube.sentence}.`;

  $("welcome").hidden = snapshot.forwards.length > 0;
  $("forwards").hidden = snapshot.forwards.length === 0;
  const body = $("forwards").tBodies[0];
  body.replaceChildren();
  // With several clusters, a heading row per cluster (its API's state), then its forwards.
  const groups = several
    ? clusters.map((c) => [c, snapshot.forwards.filter((f) => f.cluster === c.name)])
    : [[null, snapshot.forwards]];
  for (const [cluster, forwards] of groups) {
    if (cluster) {
      const heading = el("tr", undefined, "cluster-row");
      heading.dataset.cluster = cluster.name;
      const cell = el("th", `${cluster.name}${cluster.kubectl ? " (kubectl)" : ""} — ${clusterState(cluster)}`);
      cell.colSpan = 6;
      heading.append(cell);
      body.append(heading);
    }
    renderForwards(body, forwards);
  }
}

function renderForwards(body, forwards) {
  for (const f of forwards) {
    const row = document.createElement("tr");
    row.dataset.name = f.name;
    const on = el("input");
    on.type = "checkbox";
    on.checked = f.enabled;
    on.className = "toggle";
    on.title = f.enabled ? "turn off" : "turn on";
    on.addEventListener("change", busy(() => call("set_enabled", { name: f.name, enabled: on.checked })));
    const cell = el("td");
    cell.append(on);
    row.append(cell, el("td", f.name), el("td", f.local ? ":" + f.local.split(":").pop() : ""));
    row.append(el("td", `${f.namespace}/${f.service}`));
    const state = el("td");
    state.append(el("span", f.health.state, `state ${f.health.state}`));
    if (f.health.cause) state.append(el("div", f.health.cause.message, "cause"));
    if (f.route) state.append(el("div", "→ " + routeText(f.route), "cause"));
    row.append(state);
    const actions = el("td");
    const edit = el("button", "Edit");
    edit.type = "button";
    edit.className = "edit";
    edit.addEventListener("click", busy(() => openEditor(f.name)));
    const remove = el("button", "Remove");
    remove.type = "button";
    remove.className = "remove secondary";
    remove.addEventListener("click", busy(() => removeForward(f.name)));
    actions.append(edit, " ", remove);
    row.append(actions);
    body.append(row);
  }
}

async function call(command, args) {
  try {
    return await invoke(command, args);
  } catch (e) {
    $("forwards-error").hidden = false;
    $("forwards-error").textContent = e && e.message ? e.message : String(e);
    throw e;
  }
}

async function removeForward(name) {
  await call("remove_forward", { name });
  await reload();
}

// ---- the editor with its namespace → service → port picker ----

function pick(field) {
  const select = $(`f-${field}-pick`);
  const input = $(`f-${field}`);
  return !select.hidden && select.value !== OTHER ? select.value : input.value;
}

function fill(field, options, current) {
  const select = $(`f-${field}-pick`);
  const input = $(`f-${field}`);
  select.replaceChildren();
  if (catalog === null) {
    select.hidden = true;
    input.hidden = false;
    input.value = current || "";
    return;
  }
  select.hidden = false;
  select.append(new Option(field === "service_port" ? "first port" : `choose a ${field}`, ""));
  for (const [value, label] of options) select.append(new Option(label, value));
  select.append(new Option("other (type it)…", OTHER));
  const known = options.some(([v]) => v === current);
  select.value = !current ? "" : known ? current : OTHER;
  input.hidden = select.value !== OTHER;
  input.value = known ? "" : current || "";
}

function namespaceEntry() {
  return catalog && catalog.namespaces.find((n) => n.name === pick("namespace"));
}

function serviceEntry() {
  const ns = namespaceEntry();
  return ns && ns.services.find((s) => s.name === pick("service"));
}

function fillServices(current) {
  const ns = namespaceEntry();
  fill("service", ns ? ns.services.map((s) => [s.name, `${s.name} (${s.type})`]) : [], current);
  fillPorts("");
}

function fillPorts(current) {
  const svc = serviceEntry();
  const ports = svc
    ? svc.ports.map((p) => [p.name || String(p.port), `${p.name ? p.name + " " : ""}${p.port}/${p.protocol}` + (p.node_port ? ` → nodePort ${p.node_port}` : "")])
    : [];
  fill("service_port", ports, current);
}

// The cluster chosen in the editor: empty when the config has only one.
function editorCluster() {
  return $("f-cluster-row").hidden ? "" : $("f-cluster").value;
}

async function loadCatalog() {
  const cluster = editorCluster();
  try {
    catalog = await invoke("catalog", { cluster: cluster || null });
    $("listing").hidden = true;
  } catch (e) {
    catalog = null;
    $("listing").hidden = false;
    $("listing").textContent = `Cannot list the cluster (${e.message || e}): type the names.`;
  }
}

// Fills the cluster choices of `select` (hidden in `row` while there is one cluster).
function fillClusters(select, row, current) {
  const clusters = page.snapshot.clusters || [];
  row.hidden = clusters.length < 2;
  select.replaceChildren();
  for (const c of clusters) select.append(new Option(`${c.name}${c.kubectl ? " (kubectl)" : ""}`, c.name));
  const kubectl = clusters.find((c) => c.kubectl);
  select.value = current || (kubectl ? kubectl.name : "");
}

async function openEditor(name) {
  editing = name;
  clearErrors();
  const draft = name ? page.forwards.find((f) => f.name === name) : { name: "", cluster: "", namespace: "", service: "", pods: "", pod: "", service_port: "", local_port: "", bind: "", probe: "auto", mode: "", enabled: true };
  editingDraft = draft;
  $("editor-title").textContent = name ? `Edit ${name}` : "Add forward";
  fillClusters($("f-cluster"), $("f-cluster-row"), draft.cluster);
  await loadCatalog();
  $("f-name").value = draft.name;
  fill("namespace", catalog ? catalog.namespaces.map((n) => [n.name, n.name]) : [], draft.namespace);
  fillServices(draft.service);
  fillPorts(draft.service_port);
  $("f-local_port").value = draft.local_port;
  $("f-bind").value = draft.bind;
  // A forward already open to the network was confirmed when it was saved.
  $("f-bind-ok").checked = !isLoopback(draft.bind);
  $("f-bind-confirm").hidden = isLoopback(draft.bind);
  const http = draft.probe.startsWith("http:");
  $("f-probe").value = http ? "http" : draft.probe;
  $("f-probe-path").hidden = !http;
  $("f-probe-path").value = http ? draft.probe.slice(5) : "";
  $("f-mode").value = draft.mode;
  $("editor").dataset.enabled = String(draft.enabled);
  $("editor").hidden = false;
  $("f-name").focus();
}

function clearErrors() {
  for (const e of document.querySelectorAll(".error[data-for]")) e.textContent = "";
  $("form-error").hidden = true;
  $("forwards-error").hidden = true;
}

function showError(error) {
  const target = error && error.field && document.querySelector(`.error[data-for="${error.field}"]`);
  const message = (error && error.message) || String(error);
  if (target) {
    target.textContent = message;
  } else {
    $("form-error").hidden = false;
    $("form-error").textContent = message;
  }
}

/** Whether a bind address keeps the forward to this machine (empty is the default, localhost). */
function isLoopback(bind) {
  const b = bind.trim();
  return b === "" || b === "localhost" || b === "::1" || /^127\.\d+\.\d+\.\d+$/.test(b);
}

async function save(event) {
  event.preventDefault();
  clearErrors();
  const bind = $("f-bind").value;
  if (!isLoopback(bind) && !$("f-bind-ok").checked) {
    $("f-bind-confirm").hidden = false;
    showError({ field: "bind", message: `${bind.trim()} is reachable from other machines: tick the box below to listen there anyway` });
    return;
  }
  const probe = $("f-probe").value === "http" ? "http:" + $("f-probe-path").value : $("f-probe").value;
  const service = pick("service");
  // A forward to pods (written in the file) keeps its pods while no service is chosen.
  const keep = !service && editingDraft && (editingDraft.pods || editingDraft.pod);
  const draft = {
    name: $("f-name").value,
    cluster: editorCluster(),
    namespace: pick("namespace"),
    service,
    pods: keep ? editingDraft.pods : "",
    pod: keep ? editingDraft.pod : "",
    service_port: pick("service_port"),
    local_port: $("f-local_port").value,
    bind,
    probe,
    mode: $("f-mode").value,
    enabled: $("editor").dataset.enabled !== "false",
  };
  try {
    await invoke("save_forward", { replaces: editing, draft });
  } catch (e) {
    showError(e);
    return;
  }
  $("editor").hidden = true;
  await reload();
}

// ---- import: a script or a kftray export, previewed, then the chosen forwards added ----

let importPlan = null; // the last preview_import

function openImporter() {
  clearErrors();
  importPlan = null;
  $("import-found").hidden = true;
  $("import-add").hidden = true;
  $("import-none").hidden = true;
  $("import-left-out").replaceChildren();
  fillClusters($("import-cluster"), $("import-cluster-row"), "");
  $("importer").hidden = false;
  $("import-text").focus();
}

async function previewImport() {
  clearErrors();
  try {
    const cluster = $("import-cluster-row").hidden ? null : $("import-cluster").value;
    importPlan = await invoke("preview_import", { text: $("import-text").value, cluster });
  } catch (e) {
    showError({ field: "import", message: e.message || String(e) });
    return;
  }
  const body = $("import-found").tBodies[0];
  body.replaceChildren();
  importPlan.add.forEach((addition, index) => {
    const d = addition.draft;
    const pick = el("input");
    pick.type = "checkbox";
    pick.checked = true;
    pick.className = "pick";
    pick.dataset.index = String(index);
    const cell = el("td");
    cell.append(pick);
    const port = d.service_port ? `:${d.service_port}` : "";
    const bind = d.bind ? ` (on ${d.bind}: reachable from other machines)` : "";
    const target = d.service || (d.pods ? `pods -l ${d.pods}` : `pod/${d.pod}`);
    const where = d.cluster ? `${d.cluster}: ` : "";
    const row = el("tr");
    row.dataset.name = d.name;
    row.append(cell, el("td", String(addition.line)), el("td", d.name), el("td", `:${d.local_port}${bind}`), el("td", `${where}${d.namespace}/${target}${port}`));
    body.append(row);
  });
  $("import-clusters").hidden = importPlan.clusters.length === 0;
  $("import-clusters").textContent = importPlan.clusters.length
    ? `New cluster${importPlan.clusters.length === 1 ? "" : "s"} for the forwards of other contexts: ${importPlan.clusters.join(", ")} (added with the first of their forwards you keep).`
    : "";
  const none = importPlan.add.length === 0;
  $("import-found").hidden = none;
  $("import-add").hidden = none;
  $("import-none").hidden = !none;
  const list = $("import-left-out");
  list.replaceChildren();
  const plumbing = [];
  for (const s of importPlan.skipped) {
    if (s.plumbing) plumbing.push(s.line);
    else list.append(el("li", `line ${s.line}: ${s.why}`));
  }
  if (plumbing.length) list.append(el("li", `not forwards: line ${plumbing.join(", ")}`));
}

async function addImported() {
  clearErrors();
  const drafts = [...$("import-found").querySelectorAll("input.pick")]
    .filter((pick) => pick.checked)
    .map((pick) => importPlan.add[Number(pick.dataset.index)].draft);
  if (drafts.length === 0) {
    showError({ field: "import", message: "tick the forwards to add" });
    return;
  }
  try {
    const cluster = $("import-cluster-row").hidden ? null : $("import-cluster").value;
    await invoke("import_forwards", { drafts, cluster });
  } catch (e) {
    showError({ field: "import", message: e.message || String(e) });
    return;
  }
  $("importer").hidden = true;
  await reload();
}

// ---- cluster context, notifications, start at login ----

function renderSettings() {
  const context = $("context");
  context.replaceChildren(new Option("kubectl's current-context", ""));
  for (const name of page.contexts) context.append(new Option(name, name));
  const current = page.context || "";
  if (current && !page.contexts.includes(current)) context.append(new Option(`${current} (not in the kubeconfig)`, current));
  context.value = current;
  renderClusters();
  for (const kind of ["down", "recovered", "context", "fix"]) $(`n-${kind}`).checked = !page.prefs.mutes[kind];
  $("autostart").checked = page.autostart;
  $("config-path").textContent = page.config_path || "(none)";
}

// The clusters, each removable (with its forwards, after a second click that says how many),
// and the kubeconfig's other contexts to add one from.
function renderClusters() {
  const clusters = page.snapshot.clusters || [];
  const list = $("clusters");
  list.replaceChildren();
  for (const c of clusters) {
    const item = el("li");
    item.dataset.cluster = c.name;
    const own = page.forwards.filter((f) => (f.cluster || clusters[0].name) === c.name).length;
    item.append(el("span", `${c.name}${c.context && c.context !== c.name ? ` (context ${c.context})` : ""}${c.kubectl ? " — kubectl's" : ""}: ${clusterState(c)}`));
    if (clusters.length > 1) {
      const remove = el("button", "Remove", "remove-cluster secondary");
      remove.type = "button";
      remove.addEventListener("click", busy(async () => {
        if (remove.dataset.armed !== "true") {
          remove.dataset.armed = "true";
          remove.textContent = own ? `Remove ${c.name} and its ${own} forward${own === 1 ? "" : "s"}` : `Remove ${c.name}`;
          return;
        }
        clearErrors();
        try {
          await invoke("remove_cluster", { name: c.name });
          await reload();
        } catch (e) {
          showError({ field: "clusters", message: e.message || String(e) });
        }
      }));
      item.append(" ", remove);
    }
    list.append(item);
  }
  const used = new Set(clusters.map((c) => c.context).filter(Boolean));
  const add = $("add-cluster-context");
  add.replaceChildren(new Option("another context…", ""));
  for (const name of page.contexts) if (!used.has(name)) add.append(new Option(name, name));
}

function mutes() {
  const out = {};
  for (const kind of ["down", "recovered", "context", "fix"]) out[kind] = !$(`n-${kind}`).checked;
  return out;
}

async function reload() {
  page = await invoke("page_state");
  renderSnapshot(page.snapshot);
  renderSettings();
}

function wire() {
  $("add").addEventListener("click", busy(() => openEditor(null)));
  $("import").addEventListener("click", openImporter);
  $("import-cancel").addEventListener("click", () => { $("importer").hidden = true; });
  $("import-preview").addEventListener("click", busy(previewImport));
  $("import-add").addEventListener("click", busy(addImported));
  $("import-file").addEventListener("change", busy(async () => {
    const file = $("import-file").files[0];
    if (file) {
      $("import-text").value = await file.text();
      await previewImport();
    }
  }));
  $("cancel").addEventListener("click", () => { $("editor").hidden = true; });
  $("f-cluster").addEventListener("change", busy(async () => {
    await loadCatalog();
    fill("namespace", catalog ? catalog.namespaces.map((n) => [n.name, n.name]) : [], "");
    fillServices("");
  }));
  $("add-cluster").addEventListener("click", busy(async () => {
    clearErrors();
    const context = $("add-cluster-context").value;
    if (!context) {
      showError({ field: "clusters", message: "choose the context of the cluster to add" });
      return;
    }
    try {
      await invoke("add_cluster", { context });
      await reload();
    } catch (e) {
      showError({ field: "clusters", message: e.message || String(e) });
    }
  }));
  $("form").addEventListener("submit", busy(save));
  $("f-namespace-pick").addEventListener("change", () => { $("f-namespace").hidden = $("f-namespace-pick").value !== OTHER; fillServices(""); });
  $("f-service-pick").addEventListener("change", () => { $("f-service").hidden = $("f-service-pick").value !== OTHER; fillPorts(""); });
  $("f-service_port-pick").addEventListener("change", () => { $("f-service_port").hidden = $("f-service_port-pick").value !== OTHER; });
  $("f-probe").addEventListener("change", () => { $("f-probe-path").hidden = $("f-probe").value !== "http"; });
  $("fix").addEventListener("click", busy(async () => {
    $("fix-result").textContent = "fixing…";
    try {
      await invoke("fix_kubeconfig");
      $("fix-result").textContent = "fixed";
    } catch (e) {
      $("fix-result").textContent = e.message || String(e);
    }
  }));
  $("context").addEventListener("change", busy(async () => {
    clearErrors();
    try {
      await invoke("set_context", { context: $("context").value || null });
      await reload();
    } catch (e) {
      showError({ field: "context", message: e.message || String(e) });
    }
  }));
  for (const kind of ["down", "recovered", "context", "fix"]) {
    $(`n-${kind}`).addEventListener("change", busy(() => invoke("set_prefs", { prefs: { mutes: mutes() } })));
  }
  $("autostart").addEventListener("change", busy(async () => {
    try {
      $("autostart").checked = await invoke("set_autostart", { enabled: $("autostart").checked });
    } catch (e) {
      $("autostart").checked = page.autostart;
      showError({ field: "autostart", message: e.message || String(e) });
    }
  }));
  // Escape closes the editor, or else the window (Ctrl/Cmd+W always): the app stays in the tray.
  document.addEventListener("keydown", (e) => {
    const closeKey = (e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "w";
    if (e.key === "Escape" && !$("editor").hidden) {
      $("editor").hidden = true;
    } else if (e.key === "Escape" && !$("importer").hidden) {
      $("importer").hidden = true;
    } else if (e.key === "Escape" || closeKey) {
      e.preventDefault();
      window.__TAURI__.window.getCurrentWindow().close();
    }
  });
  listen("snapshot", (event) => {
    if (page) page.snapshot = event.payload;
    renderSnapshot(event.payload);
  });
}

wire();
busy(async () => {
  await reload();
  // No forwards yet (a first run): the picker for the first one is open from the start.
  if (page.forwards.length === 0) await openEditor(null);
})().then(() => document.body.classList.add("ready"));
