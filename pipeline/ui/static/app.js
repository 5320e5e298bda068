/* The web view: batches, one batch's charts, the row browser and one row, routed by the URL's #fragment.
 * Data comes from /api/... (polled while a batch runs) or, in a report file, from the JSON inside it.
 * Everything from the database is put in the page as text (textContent), never as HTML. */
"use strict";

(() => {
  const REPORT = document.getElementById("report-data");
  const POLL_MS = 3000;
  const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
  const main = document.getElementById("main");
  let session = { actions: false, csrf: null };
  let timer = null;
  let generation = 0;

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "onclick" || k === "onsubmit" || k === "onchange") node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return node;
  }

  const money = (v) => (v === null || v === undefined ? "-" : "$" + Number(v).toFixed(v >= 100 ? 2 : 4));
  const num = (v) => (v === null || v === undefined ? "-" : Number(v).toLocaleString("en-US"));
  const when = (iso) => (iso ? iso.replace("T", " ").slice(0, 19) : "-");
  const enc = encodeURIComponent;

  async function api(path, options) {
    const response = await fetch(path, { credentials: "same-origin", ...(options || {}) });
    if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
    return response.json();
  }

  function progress(done, total) {
    const pct = total ? Math.round((100 * done) / total) : 100;
    return h("span", { class: "progress", title: `${done} of ${total}` },
      h("meter", { min: 0, max: total || 1, value: done }), ` ${pct}%`);
  }

  function table(headers, rows, cls) {
    return h("table", { class: cls || "" }, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))));
  }

  // --- the batches list --------------------------------------------------------------------------------

  function listView(page) {
    const rows = page.batches.map((b) => {
      const done = b.succeeded + b.failed + b.cancelled;
      return [
        h("a", { href: `#/batch/${enc(b.batch)}`, class: "batch-id" }, b.batch),
        h("span", { class: `state ${b.state}` }, b.state), progress(done, b.total),
        num(b.succeeded), num(b.failed), num(b.queued + b.running),
        `${money(b.cost_usd)}${b.max_cost_usd ? " / " + money(b.max_cost_usd) : ""}`,
        String(b.priority), b.share === null ? "-" : `${Math.round(b.share * 100)}%`, when(b.created_at), b.source,
      ];
    });
    const accounts = page.accounts.flatMap((a) => a.models.map((m) => [
      a.base_url, a.key_fingerprint, m.model, `${num(m.rpm)} (${m.rpm_source || "-"})`,
      `${num(m.tpm)} (${m.tpm_source || "-"})`, num(Math.round(m.sent_rpm || 0)), m.cooldown_until ? when(m.cooldown_until) : "-",
    ]));
    return [
      h("h1", {}, "Batches"),
      page.batches.length ? table(["batch", "state", "progress", "succeeded", "failed", "left", "cost / cap",
        "priority", "share", "created", "source"], rows, "batches") : h("p", { class: "muted" }, "No batches yet."),
      h("h2", {}, "Accounts and limits"),
      accounts.length ? table(["API", "key", "model", "rpm", "tpm", "sent rpm", "cooldown until"], accounts)
        : h("p", { class: "muted" }, "No limits learned yet."),
    ];
  }

  // --- one batch ---------------------------------------------------------------------------------------

  function summary(st) {
    const done = st.succeeded + st.failed + st.cancelled;
    const facts = [
      ["state", h("span", { class: `state ${st.state}` }, st.state + (st.pause_reason ? `: ${st.pause_reason}` : ""))],
      ["progress", progress(done, st.total)],
      ...["total", ...STATUSES].map((k) => [k, h("span", { class: `count-${k}` }, num(st[k]))]),
      ["in flight", num(st.in_flight)], ["attempts", num(st.attempts)], ["429s", num(st.rate_limited)],
      ["cost", h("span", { class: "cost" }, money(st.cost_usd))], ["cap", money(st.max_cost_usd)],
      ["tokens", num(st.tokens.total_tokens)], ["priority", String(st.priority)],
      ["share", st.share === null ? "-" : `${Math.round(st.share * 100)}%`],
      ["created", when(st.created_at)], ["finished", when(st.finished_at)], ["source", st.source],
    ];
    return h("dl", { class: "facts" }, facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))));
  }

  function actionsBar(st) {
    if (REPORT || !session.actions) return null;
    const bar = h("div", { class: "actions" });
    const say = h("span", { class: "muted", id: "action-result" });
    const post = async (action, body) => {
      try {
        const r = await api(`/api/batches/${enc(st.batch)}/${action}`, {
          method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": session.csrf || "" },
          body: JSON.stringify(body || {}),
        });
        say.textContent = r.message;
      } catch (e) { say.textContent = String(e.message); }
      refresh();
    };
    const prio = h("input", { type: "number", min: 1, max: 1000, value: st.priority, class: "prio" });
    bar.append(
      h("button", { onclick: () => confirm(`Cancel batch ${st.batch}?`) && post("cancel") }, "Cancel"),
      h("button", { onclick: () => post("retry") }, "Retry failed"),
      h("button", { onclick: () => post("resume") }, "Resume"),
      prio, h("button", { onclick: () => post("priority", { priority: Number(prio.value) }) }, "Set priority"), say);
    return bar;
  }

  function chartBox(title, draw) {
    const box = h("section", { class: "chart-box" }, h("h3", {}, title));
    draw(box);
    return box;
  }

  function limitsOf(st) {
    if (st.accounts.length > 1) { // a pool: the active accounts' limits add up
      const active = st.accounts.filter((a) => a.state === "active");
      const rpm = active.reduce((sum, a) => sum + (a.rpm || 0), 0), tpm = active.reduce((sum, a) => sum + (a.tpm || 0), 0);
      return { rps: rpm ? rpm / 60 : null, tpm: tpm || null };
    }
    const rpm = Math.max(0, ...st.limits.map((l) => l.rpm || 0));
    const tpm = Math.max(0, ...st.limits.map((l) => l.tpm || 0));
    return { rps: rpm ? rpm / 60 : null, tpm: tpm || null };
  }

  function accountsOf(st) {
    return table(["account", "API", "state", "rpm", "tpm", "sent rpm"], st.accounts.map((a) => [
      a.name, a.azure_endpoint || a.base_url,
      h("span", { class: `state ${a.state === "active" ? "in_progress" : "paused"}` }, a.state + (a.reason ? `: ${a.reason}` : "")),
      `${num(a.rpm)} (${a.rpm_source || "-"})`, `${num(a.tpm)} (${a.tpm_source || "-"})`, num(Math.round(a.sent_rpm || 0)),
    ]), "accounts");
  }

  function charts(page) {
    const s = page.series, st = page.status, lim = limitsOf(st), lat = s.latency;
    const reasons = Object.entries(page.finish_reasons).map(([label, value]) => ({ label, value }));
    return h("div", { class: "charts" },
      chartBox(`Requests per second (buckets of ${s.width_seconds} s)`, (box) => Charts.line(box, {
        title: "requests per second", times: s.times, unit: "/s",
        series: [{ name: "attempts/s", values: s.requests_per_second, cls: "s1" }, { name: "2xx/s", values: s.ok_per_second, cls: "s2" }],
        limit: lim.rps ? { value: lim.rps, label: `limit ${Charts.fmt(lim.rps)}/s` } : null })),
      chartBox("Tokens per minute", (box) => Charts.line(box, {
        title: "tokens per minute", times: s.times,
        series: [{ name: "tokens/min", values: s.tokens_per_minute, cls: "s1" }],
        limit: lim.tpm ? { value: lim.tpm, label: `limit ${Charts.fmt(lim.tpm)}/min` } : null })),
      chartBox("429s and errors per bucket", (box) => Charts.line(box, {
        title: "429s and errors", times: s.times,
        series: [{ name: "429", values: s.rate_limited, cls: "s3" }, { name: "errors", values: s.errors, cls: "s4" }] })),
      chartBox(`Latency: p50 ${Charts.fmt(lat.p50_ms)} ms, p95 ${Charts.fmt(lat.p95_ms)} ms, p99 ${Charts.fmt(lat.p99_ms)} ms`,
        (box) => Charts.histogram(box, { title: "latency distribution", buckets: lat.buckets,
          marks: [{ label: "p50", value: lat.p50_ms }, { label: "p95", value: lat.p95_ms }, { label: "p99", value: lat.p99_ms }] })),
      chartBox("Cost so far (USD)", (box) => Charts.line(box, {
        title: "cost over time", times: s.times, series: [{ name: "USD", values: s.cost_usd_cumulative, cls: "s2" }],
        limit: st.max_cost_usd ? { value: st.max_cost_usd, label: `cap ${money(st.max_cost_usd)}` } : null })),
      chartBox("Finish reasons", (box) => (reasons.length ? Charts.bars(box, { title: "finish reasons", items: reasons })
        : box.appendChild(h("p", { class: "muted" }, "No answers yet.")))));
  }

  function failures(page) {
    const id = page.status.batch;
    if (!page.failures.length) return h("p", { class: "muted" }, "No failures.");
    return table(["error type", "HTTP", "count", "sample", "examples"], page.failures.map((f) => [
      REPORT ? f.error_type : h("a", { href: `#/batch/${enc(id)}/rows?status=failed&error_type=${enc(f.error_type)}` }, f.error_type),
      f.http_status === null ? "-" : String(f.http_status), num(f.count), f.sample || "",
      h("span", {}, f.examples.flatMap((e) => [REPORT ? h("code", {}, e.custom_id)
        : h("a", { href: `#/batch/${enc(id)}/row/${e.id}`, class: "example" }, e.custom_id), " "])),
    ]), "failures");
  }

  function batchView(page) {
    const st = page.status;
    return [
      h("h1", {}, "Batch ", h("span", { class: "batch-id" }, st.batch)),
      REPORT ? null : h("p", {}, h("a", { href: `#/batch/${enc(st.batch)}/rows`, class: "rows-link" }, "Browse its rows →")),
      actionsBar(st), summary(st), charts(page),
      h("h2", {}, "Accounts"), accountsOf(st),
      h("h2", {}, "Failures by type"), failures(page),
    ];
  }

  // --- the row browser ---------------------------------------------------------------------------------

  function select(name, value, options) {
    return h("label", {}, name.replace("_", " ") + " ", h("select", { name },
      [h("option", { value: "" }, "any"), ...options.map((o) => h("option", { value: o, selected: o === value }, o))]));
  }

  function rowsView(batch, page, params, meta) {
    const form = h("form", { class: "filters", onsubmit: (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      for (const [k, v] of new FormData(form).entries()) if (v) q.set(k, v);
      location.hash = `#/batch/${enc(batch)}/rows?${q}`;
    } },
    select("status", params.get("status"), STATUSES),
    select("error_type", params.get("error_type"), meta.failures.map((f) => f.error_type)),
    select("finish_reason", params.get("finish_reason"), Object.keys(meta.finish_reasons).flatMap((r) => r.split("|")).filter((r, i, a) => a.indexOf(r) === i)),
    select("model", params.get("model"), meta.models),
    h("label", {}, "search ", h("input", { name: "search", value: params.get("search") || "", placeholder: "custom id or output text" })),
    h("button", { type: "submit" }, "Filter"));
    const rows = page.rows.map((r) => [
      h("a", { href: `#/batch/${enc(batch)}/row/${r.id}`, class: "row-link" }, r.custom_id),
      h("span", { class: `status ${r.status}` }, r.status), String(r.attempts), r.http_status === null ? "-" : String(r.http_status),
      r.error_type || "", r.finish_reasons.join(", "), r.model || "", h("span", { class: "preview" }, r.output || ""),
    ]);
    const next = new URLSearchParams(params);
    if (page.next !== null) next.set("after", page.next);
    return [
      h("h1", {}, "Rows of ", h("a", { href: `#/batch/${enc(batch)}`, class: "batch-id" }, batch)), form,
      rows.length ? table(["custom id", "status", "attempts", "HTTP", "error", "finish", "model", "output"], rows, "rows")
        : h("p", { class: "muted" }, "No rows on this page."),
      page.scanned_to !== null ? h("p", { class: "muted" }, `Searched up to row id ${page.scanned_to}; the next page searches on.`) : null,
      h("p", {}, params.get("after") ? h("a", { href: `#/batch/${enc(batch)}/rows?${stripAfter(params)}` }, "← first page") : null, " ",
        page.next !== null ? h("a", { href: `#/batch/${enc(batch)}/rows?${next}`, class: "next" }, "next page →") : null),
    ];
  }

  function stripAfter(params) {
    const p = new URLSearchParams(params);
    p.delete("after");
    return p;
  }

  function pre(value) {
    return h("pre", {}, typeof value === "string" ? value : JSON.stringify(value, null, 2));
  }

  function rowView(batch, row) {
    const res = row.response;
    return [
      h("h1", {}, "Row ", h("span", { class: "custom-id" }, row.custom_id)),
      h("p", {}, h("a", { href: `#/batch/${enc(batch)}/rows` }, "← rows of " + batch), ` line ${row.line}, `,
        h("span", { class: `status ${row.status}` }, row.status), row.error ? ` (${row.error.type}: ${row.error.message})` : ""),
      h("div", { class: "side" },
        h("section", {}, h("h2", {}, "Request"), pre(row.request)),
        h("section", {}, h("h2", {}, "Answer"),
          res ? [h("div", { class: "answer" }, res.output || ""), h("p", { class: "muted" },
            `HTTP ${res.http_status} · ${res.model || "-"} · finish ${res.finish_reasons.join(", ") || "-"} · tokens ${num(res.usage.total_tokens)}`),
          h("details", {}, h("summary", {}, "raw body"), pre(res.body))] : h("p", { class: "muted" }, "No answer stored."))),
      h("h2", {}, `Attempts (${row.attempts.length})`),
      h("div", { class: "attempts" }, row.attempts.map((a) => h("div", { class: "attempt" },
        h("h3", {}, `#${a.number}`), h("dl", {}, [["started", when(a.started_at)], ["HTTP", a.http_status === null ? "none" : String(a.http_status)],
          ["latency", `${num(a.latency_ms)} ms`], ["error", a.error_type ? [a.error_type, a.error_message].filter(Boolean).join(": ") : "-"],
          ["request id", a.x_request_id || "-"], ["tokens", num(a.tokens.total)]].map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))))))),
    ];
  }

  // --- routing and live refresh ------------------------------------------------------------------------

  function route() {
    const [path, query] = (location.hash.slice(1) || "/").split("?");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    return { parts, params: new URLSearchParams(query || "") };
  }

  async function load() {
    const { parts, params } = route();
    if (parts[0] !== "batch") return { view: listView(await api("/api/batches")), live: true, where: "" };
    const id = parts[1];
    const base = `/api/batches/${enc(id)}`;
    if (parts[2] === "rows") {
      const [page, meta] = await Promise.all([api(`${base}/rows?${params}`), api(base)]);
      return { view: rowsView(id, page, params, meta), live: false, where: id };
    }
    if (parts[2] === "row") return { view: rowView(id, await api(`${base}/rows/${enc(parts[3])}`)), live: false, where: id };
    const page = await api(base);
    return { view: batchView(page), live: !["completed", "cancelled"].includes(page.status.state), where: id };
  }

  async function refresh() {
    const mine = ++generation;
    clearTimeout(timer);
    try {
      const { view, live } = await load();
      if (mine !== generation) return;
      main.replaceChildren(...view.filter(Boolean));
      document.getElementById("live").textContent = live ? "live" : "";
      if (live) timer = setTimeout(refresh, POLL_MS);
    } catch (e) {
      if (mine === generation) main.replaceChildren(h("p", { class: "error" }, String(e.message)));
    }
  }

  async function start() {
    if (REPORT) {
      const data = JSON.parse(REPORT.textContent);
      main.replaceChildren(...batchView(data.batch).filter(Boolean));
      document.getElementById("where").textContent = ` report, written ${when(data.written_at)}`;
      return;
    }
    try { session = await api("/api/session"); } catch (e) { /* read-only */ }
    window.addEventListener("hashchange", refresh);
    refresh();
  }

  start();
})();
