// The console's live parts (api/console). htmx does the forms and links; this file
// recolours the DAG from the plan's event stream, refreshes the plan body when the plan
// changes, and refreshes the inbox every few seconds while nobody is typing in it.
(function () {
  "use strict";

  const INBOX_EVERY_MS = 4000;
  let source = null;
  let sourceUrl = null;
  let refreshTimer = null;

  // Someone is using this part of the page: something in it has the focus (an input, a
  // button reached with Tab), an input holds text, a box was ticked, or a correction
  // editor holds another text than the step's document. A refresh would take it away.
  function inUse(field) {
    if (field.type === "checkbox" || field.type === "radio") return field.checked !== field.defaultChecked;
    if (field.tagName === "TEXTAREA") return field.value !== (field.dataset.original ?? field.defaultValue);
    return Boolean(field.value);
  }

  function typing(root) {
    const active = document.activeElement;
    if (active && active !== document.body && root.contains(active)) return true;
    return Array.from(root.querySelectorAll("input:not([type=hidden]), textarea")).some(inUse);
  }

  function markStep(stepId, status, attempts) {
    document.querySelectorAll("#dag .node").forEach((node) => {
      if (node.dataset.stepId !== stepId) return;
      node.dataset.status = status;
      const state = node.querySelector("text.state");
      if (state) state.textContent = status;
      const title = node.querySelector("title");
      if (title) title.textContent = stepId + ": " + status;
    });
    document.querySelectorAll("#steps tr").forEach((row) => {
      if (row.dataset.stepId !== stepId) return;
      const cell = row.querySelector(".step-status");
      if (cell) { cell.dataset.status = status; cell.textContent = status; }
      const tries = row.querySelector(".step-attempts");
      if (tries && attempts !== undefined) tries.textContent = String(attempts);
    });
  }

  function refreshPlan() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => {
      const holder = document.getElementById("plan");
      const body = document.getElementById("plan-body");
      if (!holder || !body) return;
      if (typing(body)) { refreshPlan(); return; }
      htmx.ajax("GET", holder.dataset.bodyUrl, { target: "#plan-body", swap: "outerHTML" });
    }, 300);
  }

  function watchPlan() {
    const holder = document.getElementById("plan");
    const url = holder ? holder.dataset.eventsUrl : null;
    if (url === sourceUrl) return;
    if (source) { source.close(); source = null; sourceUrl = null; }
    if (!url) return;
    sourceUrl = url;
    source = new EventSource(url);
    source.addEventListener("step", (ev) => {
      const d = JSON.parse(ev.data);
      markStep(d.step_id, d.status, d.attempts);
      if (d.status && d.status.indexOf("waiting") === 0) refreshPlan();
    });
    source.addEventListener("plan", (ev) => {
      const d = JSON.parse(ev.data);
      const body = document.getElementById("plan-body");
      if (!body) return;
      if (body.dataset.status !== d.status || body.dataset.version !== String(d.version)) refreshPlan();
    });
    source.addEventListener("end", () => {
      if (source) source.close();
      source = null;
      refreshPlan();
    });
  }

  function refreshInbox() {
    const inbox = document.getElementById("inbox");
    if (!inbox || typing(inbox) || document.hidden) return;
    htmx.ajax("GET", inbox.dataset.refreshUrl, { target: "#inbox", swap: "outerHTML" });
  }

  document.addEventListener("DOMContentLoaded", watchPlan);
  document.addEventListener("htmx:load", watchPlan);
  setInterval(refreshInbox, INBOX_EVERY_MS);
})();
