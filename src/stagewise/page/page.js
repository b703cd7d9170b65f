// stagewise report page: draws the inline JSON (id "page-data") as SVG plots and an item table.
// No network, no library: scatter panels and a forest plot with hover details, and an item explorer
// whose select boxes filter its rows.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const data = JSON.parse(document.getElementById("page-data").textContent);
  const tip = document.getElementById("tip");
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

  function el(tag, attrs, parent) {
    const node = document.createElementNS(NS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (parent) parent.appendChild(node);
    return node;
  }

  function showTip(event, info) {
    tip.textContent = "";
    for (const [key, value] of Object.entries(info)) {
      const line = document.createElement("div");
      line.textContent = key + ": " + value;
      tip.appendChild(line);
    }
    tip.style.left = event.pageX + 12 + "px";
    tip.style.top = event.pageY + 12 + "px";
    tip.hidden = false;
  }

  function hover(node, info) {
    node.addEventListener("mouseenter", (event) => showTip(event, info));
    node.addEventListener("mouseleave", () => { tip.hidden = true; });
    node.classList.add("point");
  }

  function scale(lo, hi, from, to) {
    if (hi === lo) { lo -= 1; hi += 1; }
    const pad = (hi - lo) * 0.08;
    lo -= pad; hi += pad;
    const map = (v) => from + ((v - lo) / (hi - lo)) * (to - from);
    map.lo = lo; map.hi = hi;
    return map;
  }

  function axes(svg, x, y, box, labels) {
    el("line", { x1: box.left, y1: box.bottom, x2: box.right, y2: box.bottom, class: "axis" }, svg);
    el("line", { x1: box.left, y1: box.top, x2: box.left, y2: box.bottom, class: "axis" }, svg);
    if (x.lo < 0 && x.hi > 0) el("line", { x1: x(0), y1: box.top, x2: x(0), y2: box.bottom, class: "zero" }, svg);
    if (y && y.lo < 0 && y.hi > 0) el("line", { x1: box.left, y1: y(0), x2: box.right, y2: y(0), class: "zero" }, svg);
    for (const [value, anchor] of [[x.lo, "start"], [x.hi, "end"]]) {
      el("text", { x: x(value), y: box.bottom + 14, "text-anchor": anchor }, svg).textContent = value.toFixed(3);
    }
    el("text", { x: (box.left + box.right) / 2, y: box.bottom + 30, "text-anchor": "middle" }, svg).textContent = labels[0];
    if (y) {
      for (const value of [y.lo, y.hi]) {
        el("text", { x: box.left - 4, y: y(value), "text-anchor": "end" }, svg).textContent = value.toFixed(3);
      }
      el("text", { x: 12, y: (box.top + box.bottom) / 2, transform: `rotate(-90 12 ${(box.top + box.bottom) / 2})`,
                   "text-anchor": "middle" }, svg).textContent = labels[1];
    }
  }

  function scatter(panel, parent) {
    const box = { left: 60, right: 380, top: 24, bottom: 250 };
    const svg = el("svg", { width: 400, height: 290, class: "plot scatter" }, parent);
    el("text", { x: 200, y: 14, "text-anchor": "middle", class: "title" }, svg).textContent = panel.title;
    const points = panel.series.flatMap((s) => s.points);
    const x = scale(Math.min(0, ...points.map((p) => p.x)), Math.max(0, ...points.map((p) => p.x)), box.left, box.right);
    const y = scale(Math.min(0, ...points.map((p) => p.y)), Math.max(0, ...points.map((p) => p.y)), box.bottom, box.top);
    axes(svg, x, y, box, [panel.x_label, panel.y_label]);
    panel.series.forEach((series, index) => {
      const color = COLORS[index % COLORS.length];
      if (series.points.length > 1) {
        el("polyline", { points: series.points.map((p) => `${x(p.x)},${y(p.y)}`).join(" "), stroke: color,
                         fill: "none", class: "curve" }, svg);
      }
      for (const p of series.points) {
        hover(el("circle", { cx: x(p.x), cy: y(p.y), r: 5, fill: color }, svg), { arm: series.name, ...p.info });
      }
      el("text", { x: box.right - 4, y: box.top + 12 + 13 * index, "text-anchor": "end", fill: color }, svg)
        .textContent = series.name;
    });
  }

  function forest(spec, parent) {
    const rowHeight = 22, left = 260, right = 640;
    const height = spec.rows.length * rowHeight + 50;
    const svg = el("svg", { width: 660, height: height, class: "plot forest" }, parent);
    const ends = spec.rows.flatMap((r) => [r.low, r.high, r.estimate]);
    const x = scale(Math.min(0, ...ends), Math.max(0, ...ends), left, right);
    axes(svg, x, null, { left: left, right: right, top: 6, bottom: height - 36 }, [spec.x_label]);
    spec.rows.forEach((row, index) => {
      const cy = 18 + index * rowHeight;
      el("text", { x: left - 8, y: cy + 4, "text-anchor": "end" }, svg).textContent = row.label;
      el("line", { x1: x(row.low), y1: cy, x2: x(row.high), y2: cy, class: row.significant ? "bar sig" : "bar" }, svg);
      hover(el("circle", { cx: x(row.estimate), cy: cy, r: 5, class: row.significant ? "sig" : "" }, svg), row.info);
    });
  }

  function explorer(spec, parent) {
    const controls = document.createElement("div");
    controls.className = "filters";
    parent.appendChild(controls);
    const table = document.createElement("table");
    table.id = "items";
    const head = table.createTHead().insertRow();
    for (const column of spec.columns) head.insertCell().textContent = column;
    const body = table.createTBody();
    const rows = spec.rows.map((item) => {
      const tr = body.insertRow();
      for (const column of spec.columns) tr.insertCell().textContent = item[column] ?? "";
      return { item: item, tr: tr };
    });
    const selects = spec.filters.map((column) => {
      const label = document.createElement("label");
      label.textContent = column + " ";
      const select = document.createElement("select");
      select.name = column;
      for (const value of ["(all)", ...new Set(spec.rows.map((r) => String(r[column])))]) {
        select.add(new Option(value, value));
      }
      label.appendChild(select);
      controls.appendChild(label);
      return select;
    });
    const count = document.createElement("span");
    count.id = "shown";
    controls.appendChild(count);
    function apply() {
      let shown = 0;
      for (const { item, tr } of rows) {
        const keep = selects.every((s) => s.value === "(all)" || String(item[s.name]) === s.value);
        tr.hidden = !keep;
        shown += keep;
      }
      count.textContent = ` ${shown} of ${rows.length} items`;
    }
    selects.forEach((s) => s.addEventListener("change", apply));
    parent.appendChild(table);
    apply();
  }

  for (const section of data.sections) {
    const parent = document.getElementById(section.id);
    if (section.kind === "scatter") section.panels.forEach((panel) => scatter(panel, parent));
    else if (section.kind === "forest") forest(section, parent);
    else if (section.kind === "items") explorer(section, parent);
  }
  document.body.dataset.rendered = "yes";
})();
