// Plansmith dashboard: reads /api/metrics/* and draws tables and SVG charts by hand.
// No third-party code. Data is put in the page with textContent only (titles and
// questions come from people and agents), never as HTML.
// The console's charts page (/console/charts) runs it too: an element with
// data-metrics-base names where the metrics are read (the console's session routes, no
// key sent) and carries the page's data-state; without one, this is the dashboard.
"use strict";

(() => {
  const KEY = "plansmith.apiKey";
  const SVG = "http://www.w3.org/2000/svg";
  const REFRESH_MS = 30000;
  const DAYS = 30;
  const WAITING_ROWS = 25; // the longest-waiting; the badge counts them all

  class NeedKey extends Error {}

  const root = document.querySelector("[data-metrics-base]");
  const METRICS = root ? root.dataset.metricsBase : "api/metrics/";
  const stateOf = () => root || document.body;
  let timer = null;

  // --- the API ---------------------------------------------------------------------

  function takeKeyFromFragment() {
    const m = /(?:^#|&)key=([^&]*)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  async function api(path) {
    const headers = { Accept: "application/json" };
    const key = root ? null : sessionStorage.getItem(KEY);
    if (key) headers["X-API-Key"] = key;
    const r = await fetch(path, { headers, cache: "no-store" });
    if (r.status === 401) throw new NeedKey("an API key is needed");
    if (!r.ok) {
      let detail = r.statusText;
      try {
        detail = (await r.json()).detail || detail;
      } catch (_) {
        /* not JSON */
      }
      throw new Error(`${path}: ${r.status} ${detail}`);
    }
    return r.json();
  }

  // --- DOM helpers -------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, String(v));
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function tip(node, text) {
    node.append(svg("title", {}, text));
    return node;
  }

  function fill(id, ...children) {
    const target = document.getElementById(id);
    target.replaceChildren(...children);
    return target;
  }

  function empty(text) {
    return el("div", { class: "empty", text });
  }

  const pct = (x) => (x === null || x === undefined ? "–" : `${Math.round(x * 100)}%`);
  const num = (x, d = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
  const pad = (n) => String(n).padStart(2, "0");

  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function waited(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${m % 60} min`;
    return `${Math.floor(h / 24)} d ${h % 24} h`;
  }

  function dayLabel(iso, bucket) {
    const d = new Date(iso);
    if (bucket === "hour") return `${pad(d.getUTCHours())}:00`;
    return `${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
  }

  function scoreClass(s) {
    if (s === null || s === undefined) return "score";
    return `score ${s >= 0.8 ? "good" : s >= 0.5 ? "mid" : "low"}`;
  }

  // --- charts (SVG) -----------------------------------------------------------------

  // Horizontal bars, values 0..1: groups = [{label, bars: [{name, value, cls}]}]
  function barChart(groups) {
    const W = 640;
    const L = 130;
    const R = 48;
    const bar = 13;
    const gap = 12;
    const perGroup = Math.max(...groups.map((g) => g.bars.length), 1);
    const groupH = perGroup * (bar + 2) + gap;
    const H = groups.length * groupH + 26;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    const x = (v) => L + v * (W - L - R);
    for (const t of [0, 0.25, 0.5, 0.75, 1]) {
      root.append(svg("line", { class: "grid", x1: x(t), x2: x(t), y1: 0, y2: H - 20 }));
      root.append(svg("text", { x: x(t), y: H - 6, "text-anchor": "middle" }, pct(t)));
    }
    groups.forEach((g, i) => {
      const top = i * groupH + 4;
      root.append(
        svg("text", { class: "bar-label", x: L - 8, y: top + (perGroup * (bar + 2)) / 2 + 4, "text-anchor": "end" }, g.label),
      );
      g.bars.forEach((b, j) => {
        const y = top + j * (bar + 2);
        if (b.value === null || b.value === undefined) {
          root.append(svg("text", { x: L + 4, y: y + bar - 3 }, `${b.name}: no data`));
          return;
        }
        const w = Math.max(1.5, x(b.value) - L);
        root.append(tip(svg("rect", { class: `bar ${b.cls}`, x: L, y, width: w, height: bar, rx: 2 }), `${g.label} ${b.name}: ${pct(b.value)}`));
        root.append(svg("text", { x: L + w + 4, y: y + bar - 3 }, pct(b.value)));
      });
    });
    root.append(svg("line", { class: "axis", x1: L, x2: L, y1: 0, y2: H - 20 }));
    return root;
  }

  // Lines over buckets, values 0..1 or null: series = [{name, cls, values}]
  function lineChart(labels, series, bucket) {
    const W = 640;
    const H = 240;
    const L = 40;
    const R = 12;
    const T = 10;
    const B = 26;
    const n = labels.length;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    const x = (i) => L + (n > 1 ? (i * (W - L - R)) / (n - 1) : (W - L - R) / 2);
    const y = (v) => T + (1 - v) * (H - T - B);
    for (const t of [0, 0.25, 0.5, 0.75, 1]) {
      root.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(t), y2: y(t) }));
      root.append(svg("text", { x: L - 6, y: y(t) + 4, "text-anchor": "end" }, pct(t)));
    }
    const every = Math.max(1, Math.ceil(n / 7));
    labels.forEach((lab, i) => {
      const last = i === n - 1;
      if ((i % every === 0 && n - 1 - i >= every / 2) || last) {
        const anchor = last && n > 1 ? "end" : "middle";
        root.append(svg("text", { x: x(i), y: H - 8, "text-anchor": anchor }, dayLabel(lab, bucket)));
      }
    });
    root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(0), y2: y(0) }));
    for (const s of series) {
      let d = "";
      let pen = false;
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) {
          pen = false;
          return;
        }
        d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)} `;
        pen = true;
      });
      if (d) root.append(svg("path", { class: `series ${s.cls}`, d: d.trim() }));
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) return;
        root.append(tip(svg("circle", { class: `point ${s.cls}`, cx: x(i), cy: y(v), r: 3.5 }), `${dayLabel(labels[i], bucket)} ${s.name}: ${pct(v)}`));
      });
    }
    return root;
  }

  // Stacked columns of counts: cols = [{label, parts: [{name, value, cls}]}]
  function columnChart(cols, bucket) {
    const W = 640;
    const H = 200;
    const L = 40;
    const R = 12;
    const T = 10;
    const B = 26;
    const n = cols.length;
    const top = Math.max(1, ...cols.map((c) => c.parts.reduce((a, p) => a + p.value, 0)));
    const step = Math.max(1, Math.ceil(top / 4));
    const max = step * 4;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    const y = (v) => T + (1 - v / max) * (H - T - B);
    const slot = (W - L - R) / Math.max(n, 1);
    for (let t = 0; t <= max; t += step) {
      root.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(t), y2: y(t) }));
      root.append(svg("text", { x: L - 6, y: y(t) + 4, "text-anchor": "end" }, String(t)));
    }
    const every = Math.max(1, Math.ceil(n / 7));
    cols.forEach((c, i) => {
      let base = 0;
      for (const p of c.parts) {
        if (!p.value) continue;
        const r = svg("rect", {
          class: `bar ${p.cls}`,
          x: L + i * slot + slot * 0.15,
          y: y(base + p.value),
          width: slot * 0.7,
          height: y(base) - y(base + p.value),
        });
        root.append(tip(r, `${dayLabel(c.label, bucket)} ${p.name}: ${p.value}`));
        base += p.value;
      }
      if ((i % every === 0 && n - 1 - i >= every / 2) || i === n - 1) {
        root.append(svg("text", { x: L + (i + 0.5) * slot, y: H - 8, "text-anchor": "middle" }, dayLabel(c.label, bucket)));
      }
    });
    root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(0), y2: y(0) }));
    return root;
  }

  function legend(id, items) {
    fill(id, ...items.map(([cls, name]) => el("span", {}, el("span", { class: `swatch ${cls}` }), name)));
  }

  // --- sections -----------------------------------------------------------------------

  function renderTiles(waiting, trends, planner) {
    const finished = trends.points.reduce((a, p) => a + p.finished, 0);
    const completed = trends.points.reduce((a, p) => a + p.completed, 0);
    const scored = trends.points.reduce((a, p) => a + p.plans_scored, 0);
    const quality = scored
      ? trends.points.reduce((a, p) => a + (p.mean_quality || 0) * p.plans_scored, 0) / scored
      : null;
    const tiles = [
      ["tile-waiting", String(waiting.count), "waiting for a person"],
      ["tile-finished", String(finished), `runs finished (${trends.days} d)`],
      ["tile-success", pct(finished ? completed / finished : null), `success rate (${trends.days} d)`],
      ["tile-quality", num(quality), "mean plan quality"],
      ["tile-planner", String(planner.runs), "planner runs"],
      ["tile-rounds", num(planner.mean_rounds, 1), "mean planner rounds"],
      ["tile-offline", pct(planner.offline_share), "planner offline"],
    ];
    fill(
      "tiles",
      ...tiles.map(([id, value, label]) => el("div", { class: "tile", id }, el("div", { class: "value", text: value }), el("div", { class: "label", text: label }))),
    );
  }

  function renderWaiting(data) {
    const badge = document.getElementById("waiting-count");
    badge.textContent = String(data.count);
    badge.className = data.count ? "badge" : "badge zero";
    if (!data.plans.length) {
      fill("waiting", empty("Nothing is waiting for a person."));
      return;
    }
    const head = el("tr", {}, ...["Plan", "Title", "Agent", "Waits for", "Step", "Question / reason", "Since", "Waited"].map((h) => el("th", { text: h })));
    const rows = data.plans.map((w) => {
      const first = w.waiting[0] || {};
      const more = w.waiting.length > 1 ? ` (+${w.waiting.length - 1})` : "";
      return el(
        "tr",
        { "data-plan-id": w.plan_id },
        el("td", {}, el("code", { text: w.plan_id })),
        el("td", { text: w.title || "–" }),
        el("td", { text: w.agent_id || "–" }),
        el("td", {}, el("span", { class: "kind", text: w.kind.replaceAll("_", " ") + more, title: first.who || "" })),
        el("td", { text: first.step_id || "–" }),
        el("td", { text: first.question || "–" }),
        el("td", { text: when(w.since) }),
        el("td", { class: "num", text: waited(w.waiting_s) }),
      );
    });
    const more = data.count - data.plans.length;
    const note = more > 0 ? el("p", { class: "muted", text: `and ${more} more waiting (the longest-waiting are shown)` }) : null;
    fill("waiting", el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)), ...(note ? [note] : []));
  }

  function renderAgents(data) {
    if (!data.agents.length) {
      fill("agents-chart", empty("No finished runs yet."));
      fill("agents-legend");
      return;
    }
    const withTrust = data.agents.some((a) => a.trust);
    const groups = data.agents.map((a) => {
      const bars = [
        { name: "success", value: a.success_rate, cls: "success" },
        { name: "quality", value: a.mean_quality, cls: "quality" },
      ];
      if (withTrust) bars.push({ name: "trust", value: a.trust ? a.trust.score : null, cls: "trust" });
      return { label: a.agent_id || "(no agent)", bars };
    });
    fill("agents-chart", barChart(groups));
    const items = [["success", "success rate (runs)"], ["quality", "mean plan quality"]];
    if (withTrust) items.push(["trust", "trust score (as the approval policy sees it)"]);
    legend("agents-legend", items);
  }

  function renderTrends(t) {
    const labels = t.points.map((p) => p.start);
    const any = t.points.some((p) => p.finished > 0);
    if (!any) {
      fill("trend-chart", empty(`No run finished in the last ${t.days} days.`));
      fill("trend-legend");
      fill("runs-chart", empty("Nothing yet."));
      return;
    }
    fill(
      "trend-chart",
      lineChart(
        labels,
        [
          { name: "success rate", cls: "success", values: t.points.map((p) => p.success_rate) },
          { name: "mean quality", cls: "quality", values: t.points.map((p) => p.mean_quality) },
        ],
        t.bucket,
      ),
    );
    legend("trend-legend", [["success", "success rate"], ["quality", "mean plan quality"]]);
    fill(
      "runs-chart",
      columnChart(
        t.points.map((p) => ({
          label: p.start,
          parts: [
            { name: "completed", value: p.completed, cls: "success" },
            { name: "not completed", value: p.finished - p.completed, cls: "failed" },
          ],
        })),
        t.bucket,
      ),
    );
  }

  function renderTools(data) {
    if (!data.rows.length) {
      fill("tools-chart", empty("No tool step has finished yet."));
      return;
    }
    fill("tools-chart", barChart(data.rows.map((r) => ({ label: r.key, bars: [{ name: "success", value: r.success_rate, cls: "success" }] }))));
  }

  function renderPlans(data) {
    if (!data.plans.length) {
      fill("plans", empty("No plan has run yet."));
      return;
    }
    const head = el("tr", {}, ...["Plan", "Title", "Agent", "Status", "Version", "Finished", "Quality"].map((h) => el("th", { text: h })));
    const rows = data.plans.map((q) =>
      el(
        "tr",
        { "data-plan-id": q.plan_id },
        el("td", {}, el("code", { text: q.plan_id })),
        el("td", { text: q.title || "–" }),
        el("td", { text: q.agent_id || "–" }),
        el("td", { text: q.status }),
        el("td", { class: "num", text: `v${q.version}` }),
        el("td", { text: when(q.finished_at) }),
        el("td", { class: "num" }, el("span", { class: scoreClass(q.score), title: q.explanation, text: num(q.score) })),
      ),
    );
    fill("plans", el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
  }

  // --- loading ------------------------------------------------------------------------

  function showError(message) {
    const p = document.getElementById("error");
    p.textContent = message;
    p.hidden = !message;
  }

  async function load() {
    if (!document.getElementById("tiles")) {
      // the console went to another page (htmx swapped the charts out): stop
      clearInterval(timer);
      return;
    }
    try {
      const [waiting, agents, trends, planner, tools, plans] = await Promise.all([
        api(`${METRICS}waiting?limit=${WAITING_ROWS}`),
        api(`${METRICS}agents`),
        api(`${METRICS}trends?days=${DAYS}&bucket=day`),
        api(`${METRICS}planner`),
        api(`${METRICS}success?by=tool`),
        api(`${METRICS}plans?limit=15`),
      ]);
      const keyForm = document.getElementById("key-form");
      if (keyForm) keyForm.hidden = true;
      showError("");
      renderTiles(waiting, trends, planner);
      renderWaiting(waiting);
      renderAgents(agents);
      renderTrends(trends);
      renderTools(tools);
      renderPlans(plans);
      document.getElementById("updated").textContent = `updated ${when(new Date().toISOString())}`;
      stateOf().dataset.state = "ready";
    } catch (e) {
      if (e instanceof NeedKey && !document.getElementById("key-form")) {
        showError("Your console session has ended: reload the page to sign in again.");
        stateOf().dataset.state = "need-key";
      } else if (e instanceof NeedKey) {
        const had = sessionStorage.getItem(KEY);
        document.getElementById("key-form").hidden = false;
        document.getElementById("key-error").textContent = had ? "that key was refused" : "";
        stateOf().dataset.state = "need-key";
      } else {
        showError(`Could not load the metrics: ${e.message}`);
        stateOf().dataset.state = "error";
      }
    }
  }

  function start() {
    if (!root) takeKeyFromFragment();
    document.getElementById("refresh").addEventListener("click", load);
    const keyForm = document.getElementById("key-form");
    if (keyForm) {
      keyForm.addEventListener("submit", (ev) => {
        ev.preventDefault();
        const value = document.getElementById("key-input").value.trim();
        if (value) sessionStorage.setItem(KEY, value);
        load();
      });
    }
    load();
    timer = setInterval(load, REFRESH_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
