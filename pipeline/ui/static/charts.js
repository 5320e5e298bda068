/* Charts drawn as SVG, with no library: line charts over time (with a limit line), bars, a histogram.
 * Every chart is an <svg class="chart"> whose data points are <circle class="pt"> (line charts) or
 * <rect class="bar"> elements, each with a <title> giving its value. */
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const W = 640, H = 220, PAD = { l: 56, r: 12, t: 14, b: 28 };

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function titled(node, text) {
    el("title", {}, node).textContent = text;
    return node;
  }

  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "";
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
    if (a >= 100) return v.toFixed(0);
    if (a >= 1) return v.toFixed(1).replace(/\.0$/, "");
    if (a === 0) return "0";
    return v.toPrecision(2);
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function frame(container, label) {
    const svg = el("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
    container.appendChild(svg);
    return svg;
  }

  function axes(svg, yMax, xLabels) {
    const y0 = H - PAD.b, x1 = W - PAD.r;
    for (let i = 0; i <= 4; i++) {
      const y = y0 - (i / 4) * (y0 - PAD.t);
      el("line", { class: "grid", x1: PAD.l, x2: x1, y1: y, y2: y }, svg);
      el("text", { class: "tick", x: PAD.l - 6, y: y + 4, "text-anchor": "end" }, svg).textContent = fmt((yMax * i) / 4);
    }
    const n = xLabels.length;
    const every = Math.max(1, Math.ceil(n / 6));
    xLabels.forEach((text, i) => {
      if (i % every) return;
      const x = PAD.l + (n === 1 ? 0 : (i / (n - 1)) * (x1 - PAD.l));
      el("text", { class: "tick", x, y: H - 8, "text-anchor": "middle" }, svg).textContent = text;
    });
  }

  function timeLabel(iso) {
    const d = new Date(iso);
    return d.toISOString().slice(11, 16);
  }

  /* series: [{name, values, cls}], times: ISO strings; limit: {value, label} or null. */
  function line(container, { title, times, series, limit, unit }) {
    const svg = frame(container, title);
    const all = series.flatMap((s) => s.values).concat(limit && limit.value ? [limit.value] : []);
    const yMax = niceMax(Math.max(0, ...all));
    axes(svg, yMax, times.map(timeLabel));
    const x = (i) => PAD.l + (times.length === 1 ? 0 : (i / (times.length - 1)) * (W - PAD.r - PAD.l));
    const y = (v) => H - PAD.b - (v / yMax) * (H - PAD.b - PAD.t);
    for (const s of series) {
      const d = s.values.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join("");
      el("path", { class: `line ${s.cls}`, d }, svg);
      s.values.forEach((v, i) => {
        titled(el("circle", { class: `pt ${s.cls}`, cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 2.2 }, svg),
          `${s.name} ${timeLabel(times[i])}: ${fmt(v)}${unit || ""}`);
      });
    }
    if (limit && limit.value) {
      const ly = y(limit.value);
      el("line", { class: "limit", x1: PAD.l, x2: W - PAD.r, y1: ly, y2: ly }, svg);
      el("text", { class: "limit-label", x: W - PAD.r - 4, y: ly - 4, "text-anchor": "end" }, svg).textContent = limit.label;
    }
    legend(container, series.map((s) => [s.name, s.cls]).concat(limit && limit.value ? [[limit.label, "limit"]] : []));
    return svg;
  }

  function legend(container, items) {
    const div = document.createElement("div");
    div.className = "legend";
    for (const [name, cls] of items) {
      const span = document.createElement("span");
      span.className = `key ${cls}`;
      span.textContent = name;
      div.appendChild(span);
    }
    container.appendChild(div);
  }

  /* items: [{label, value}] as horizontal bars. */
  function bars(container, { title, items }) {
    const rowH = 22, h = Math.max(40, items.length * rowH + 10);
    const svg = el("svg", { class: "chart bars", viewBox: `0 0 ${W} ${h}`, role: "img", "aria-label": title });
    container.appendChild(svg);
    const max = Math.max(1, ...items.map((i) => i.value));
    items.forEach((item, k) => {
      const y = 5 + k * rowH;
      const w = ((W - 260) * item.value) / max;
      el("text", { class: "tick", x: 150, y: y + 14, "text-anchor": "end" }, svg).textContent = item.label;
      titled(el("rect", { class: "bar", x: 156, y, width: Math.max(1, w).toFixed(1), height: rowH - 6 }, svg),
        `${item.label}: ${item.value}`);
      el("text", { class: "tick", x: 162 + w, y: y + 14 }, svg).textContent = fmt(item.value);
    });
    return svg;
  }

  /* buckets: [{low_ms, high_ms, count}]; marks: [{label, value}] drawn as vertical lines (log scale). */
  function histogram(container, { title, buckets, marks }) {
    const svg = frame(container, title);
    if (!buckets.length) return svg;
    const lo = Math.max(1, buckets[0].low_ms), hi = Math.max(lo * 2, ...buckets.map((b) => b.high_ms || b.low_ms * 2));
    const x = (v) => PAD.l + ((Math.log(Math.max(v, lo)) - Math.log(lo)) / (Math.log(hi) - Math.log(lo))) * (W - PAD.r - PAD.l);
    const yMax = niceMax(Math.max(...buckets.map((b) => b.count)));
    const ticks = [];
    for (let v = Math.pow(10, Math.ceil(Math.log10(lo))); v <= hi; v *= 10) ticks.push(v);
    axes(svg, yMax, []);
    for (const v of ticks) {
      el("text", { class: "tick", x: x(v), y: H - 8, "text-anchor": "middle" }, svg).textContent = v >= 1000 ? fmt(v / 1000) + "s" : fmt(v) + "ms";
    }
    for (const b of buckets) {
      const x0 = x(Math.max(b.low_ms, lo)), x1 = x(b.high_ms || b.low_ms * 1.2);
      const h = (b.count / yMax) * (H - PAD.b - PAD.t);
      titled(el("rect", { class: "bar", x: x0.toFixed(1), y: (H - PAD.b - h).toFixed(1), width: Math.max(1, x1 - x0 - 1).toFixed(1), height: h.toFixed(1) }, svg),
        `${fmt(b.low_ms)}-${fmt(b.high_ms)} ms: ${b.count}`);
    }
    for (const m of marks.filter((m) => m.value)) {
      el("line", { class: "limit", x1: x(m.value), x2: x(m.value), y1: PAD.t, y2: H - PAD.b }, svg);
      const right = x(m.value) > W - PAD.r - 30;
      el("text", { class: "limit-label", x: x(m.value) + (right ? -3 : 3), y: PAD.t + 10, "text-anchor": right ? "end" : "start" }, svg).textContent = m.label;
    }
    return svg;
  }

  return { line, bars, histogram, fmt };
})();
