// The live view: polls the small JSON endpoint beside the page and redraws the table; no reload, no framework.
"use strict";
(function () {
  const table = document.getElementById("live");
  const status = document.getElementById("live-status");
  if (!table) return;
  const source = table.dataset.source;
  const sessionsUrl = table.dataset.sessions;
  const body = table.tBodies[0];

  function cell(row, content, className) {
    const td = row.insertCell();
    if (className) td.className = className;
    if (content instanceof Node) td.append(content); else td.textContent = content;
    return td;
  }

  function draw(sessions) {
    body.replaceChildren();
    if (sessions.length === 0) {
      const row = body.insertRow();
      row.className = "empty-row";
      const td = cell(row, "No session is open.", "empty");
      td.colSpan = 7;
      return;
    }
    for (const s of sessions) {
      const row = body.insertRow();
      row.className = "live-row";
      const link = document.createElement("a");
      link.href = sessionsUrl + encodeURIComponent(s.session_group);
      link.textContent = s.session_id;
      cell(row, link);
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = s.transport;
      cell(row, badge);
      cell(row, s.virtual_key);
      cell(row, s.model || "–");
      cell(row, `${s.age_s} s`, "num");
      cell(row, String(s.turns), "num");
      cell(row, String(s.open_turns), "num");
    }
  }

  async function refresh() {
    try {
      const reply = await fetch(source, {credentials: "same-origin", cache: "no-store"});
      if (reply.status === 401) {
        status.textContent = "logged out";
        window.location.assign(table.dataset.sessions.replace(/sessions\/$/, "login"));
        return;
      }
      if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
      draw((await reply.json()).sessions);
      status.textContent = `updated ${new Date().toLocaleTimeString()}`;
      table.dataset.refreshed = String(Number(table.dataset.refreshed || "0") + 1);
    } catch (error) {
      status.textContent = `refresh failed: ${error.message}`;
    }
  }

  refresh();
  setInterval(refresh, 2000);
})();
