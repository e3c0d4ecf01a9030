// Tern UI: sign in with a session cookie, then show the host registry.
"use strict";

async function api(path, opts) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin" }, opts || {}));
  const body = await r.json().catch(() => ({}));
  if (!r.ok) { const e = new Error(body.error || r.statusText); e.status = r.status; throw e; }
  return body;
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

async function showHosts() {
  const { hosts } = await api("/api/v1/hosts");
  const rows = document.getElementById("host-rows");
  rows.replaceChildren();
  for (const h of hosts) {
    const tr = document.createElement("tr");
    tr.append(cell(h.name), cell(h.roles.join(", ")), cell(h.version || "-"),
      cell(h.heartbeat_age_s == null ? "never" : Math.round(h.heartbeat_age_s) + " s ago"),
      cell(h.overdue ? "overdue" : "ok", h.overdue ? "overdue" : ""));
    rows.append(tr);
  }
  document.getElementById("hosts").hidden = false;
  document.getElementById("login").hidden = true;
}

async function start() {
  const h = await api("/api/v1/health");
  document.getElementById("health").textContent =
    "Tern " + h.version + " · roles " + h.roles.join(", ") + " · up " + h.uptime_s + " s";
  try {
    const me = await api("/api/v1/whoami");
    document.getElementById("who").textContent = me.user;
    await showHosts();
    setInterval(showHosts, 5000);
  } catch (e) {
    if (e.status !== 401) throw e;
    document.getElementById("login").hidden = false;
  }
}

document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = new FormData(ev.target);
  try {
    await api("/api/v1/login", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ user: f.get("user"), password: f.get("password") }) });
    await start();
  } catch (e) {
    document.getElementById("login-error").textContent = e.message;
  }
});

start();
