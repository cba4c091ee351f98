// Charts for the console's statistics, drawn as SVG with the DOM (no library, nothing fetched).
// Each chart has a visible title, axis labels, an SVG <title>/<desc> for screen readers,
// a <title> on every bar and point, and the numbers as a table under "Data".
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";
  const WIDTH = 760;
  const MAX_LABEL_CHARS = 24;
  let serial = 0;

  function svgEl(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function htmlEl(name, text) {
    const node = document.createElement(name);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // The smallest 1, 2 or 5 x 10^k at or above `value`: axis ticks then read well.
  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
    return 10 * power;
  }

  function plural(count, noun) {
    return `${count} ${noun}${count === 1 ? "" : "s"}`;
  }

  function shorten(text) {
    return text.length > MAX_LABEL_CHARS ? text.slice(0, MAX_LABEL_CHARS - 1) + "\u2026" : text;
  }

  // An <svg> with its accessible name and description, and the title drawn on top.
  function frame(kind, height, title, description) {
    serial += 1;
    const titleId = `chart-${kind}-title-${serial}`;
    const descId = `chart-${kind}-desc-${serial}`;
    const svg = svgEl("svg", {
      viewBox: `0 0 ${WIDTH} ${height}`, role: "img", "aria-labelledby": `${titleId} ${descId}`,
      "data-chart": kind,
    });
    svg.append(svgEl("title", { id: titleId }, title), svgEl("desc", { id: descId }, description));
    svg.append(svgEl("text", { x: 8, y: 18, class: "chart-title" }, title));
    return svg;
  }

  function dataTable(headers, rows) {
    const details = htmlEl("details");
    details.append(htmlEl("summary", "Data"));
    const table = htmlEl("table");
    const head = table.createTHead().insertRow();
    for (const header of headers) head.append(htmlEl("th", header));
    const body = table.createTBody();
    for (const row of rows) {
      const tr = body.insertRow();
      row.forEach((cell) => tr.append(htmlEl("td", cell)));
    }
    details.append(table);
    return details;
  }

  // Daily payments: volume as bars (left axis), count as a line of points (right axis).
  function daily(figure, days, opts) {
    const fmt = opts.formatAmount;
    const margin = { left: 96, right: 64, top: 40, bottom: 64 };
    const height = 330;
    const plotW = WIDTH - margin.left - margin.right;
    const plotH = height - margin.top - margin.bottom;
    const totalVolume = days.reduce((sum, d) => sum + d.volume_minor, 0);
    const totalCount = days.reduce((sum, d) => sum + d.count, 0);
    const busiest = days.reduce((best, d) => (d.volume_minor > best.volume_minor ? d : best), days[0]);
    const description = `Payments per UTC day from ${days[0].day} to ${days[days.length - 1].day}: ` +
      `${plural(totalCount, "payment")}, ${fmt(totalVolume)} in total` +
      (totalVolume > 0 ? `; largest volume on ${busiest.day} (${fmt(busiest.volume_minor)}).` : ".");
    const svg = frame("daily", height, "Daily payments: volume and count", description);
    const maxVolume = niceMax(Math.max(0, ...days.map((d) => d.volume_minor)));
    const maxCount = Math.max(4, Math.ceil(niceMax(Math.max(0, ...days.map((d) => d.count))) / 4) * 4);
    const yVolume = (v) => margin.top + plotH - (v / maxVolume) * plotH;
    const yCount = (c) => margin.top + plotH - (c / maxCount) * plotH;
    for (let i = 0; i <= 4; i += 1) {
      const y = margin.top + plotH - (i / 4) * plotH;
      svg.append(svgEl("line", { x1: margin.left, x2: margin.left + plotW, y1: y, y2: y, class: "grid" }));
      svg.append(svgEl("text", { x: margin.left - 6, y: y + 4, "text-anchor": "end" },
        fmt(Math.round((maxVolume * i) / 4))));
      svg.append(svgEl("text", { x: margin.left + plotW + 6, y: y + 4 }, String((maxCount * i) / 4)));
    }
    const band = plotW / days.length;
    const labelEvery = Math.ceil(days.length / 8);
    const points = [];
    days.forEach((d, i) => {
      const x = margin.left + i * band;
      const top = yVolume(d.volume_minor);
      const bar = svgEl("rect", { x: x + band * 0.15, y: top, width: band * 0.7, height: margin.top + plotH - top,
        class: "bar", "data-day": d.day });
      bar.append(svgEl("title", {}, `${d.day}: ${fmt(d.volume_minor)}, ${plural(d.count, "payment")}`));
      svg.append(bar);
      points.push([x + band / 2, yCount(d.count)]);
      if (i % labelEvery === 0) {
        svg.append(svgEl("text", { x: x + band / 2, y: margin.top + plotH + 16, "text-anchor": "middle" },
          d.day.slice(5)));
      }
    });
    svg.append(svgEl("polyline", { points: points.map((p) => p.join(",")).join(" "), class: "line" }));
    const legendX = margin.left + plotW - 200;
    svg.append(svgEl("rect", { x: legendX, y: 10, width: 12, height: 10, class: "legend-bar" }));
    svg.append(svgEl("text", { x: legendX + 16, y: 19 }, `volume (${opts.currency})`));
    svg.append(svgEl("circle", { cx: legendX + 118, cy: 15, r: 3.5, class: "legend-point" }));
    svg.append(svgEl("text", { x: legendX + 126, y: 19 }, "payments"));
    days.forEach((d, i) => {
      const point = svgEl("circle", { cx: points[i][0], cy: points[i][1], r: 3.5, class: "point", "data-day": d.day });
      point.append(svgEl("title", {}, `${d.day}: ${plural(d.count, "payment")}`));
      svg.append(point);
    });
    svg.append(svgEl("line", { x1: margin.left, x2: margin.left + plotW, y1: margin.top + plotH,
      y2: margin.top + plotH, class: "axis" }));
    svg.append(svgEl("text", { x: margin.left + plotW / 2, y: height - 18, "text-anchor": "middle",
      class: "axis-label" }, "Day (UTC)"));
    svg.append(svgEl("text", { x: 14, y: margin.top + plotH / 2, "text-anchor": "middle", class: "axis-label",
      transform: `rotate(-90 14 ${margin.top + plotH / 2})` }, `Volume (${opts.currency})`));
    const rightX = WIDTH - 12;
    svg.append(svgEl("text", { x: rightX, y: margin.top + plotH / 2, "text-anchor": "middle", class: "axis-label",
      transform: `rotate(90 ${rightX} ${margin.top + plotH / 2})` }, "Payments (count)"));
    figure.replaceChildren(svg, dataTable(["Day (UTC)", "Payments", "Volume"],
      days.map((d) => [d.day, String(d.count), fmt(d.volume_minor)])));
  }

  // Horizontal bars, one per item, largest scale first: top stores, funding by method.
  function bars(figure, items, opts) {
    const fmt = opts.formatAmount;
    const margin = { left: 180, right: 190, top: 40, bottom: 50 };
    const rowH = 30;
    const height = margin.top + Math.max(items.length, 1) * rowH + margin.bottom;
    const plotW = WIDTH - margin.left - margin.right;
    const total = items.reduce((sum, item) => sum + item.value, 0);
    const description = items.length === 0 ? opts.emptyText :
      `${opts.title}: ` + items.map((item) => `${item.label} ${fmt(item.value)} (${plural(item.count, opts.countNoun)})`).join("; ") + ".";
    const svg = frame(opts.kind, height, opts.title, description);
    const maxValue = niceMax(Math.max(0, ...items.map((item) => item.value)));
    const plotBottom = margin.top + Math.max(items.length, 1) * rowH;
    for (let i = 0; i <= 4; i += 1) {
      const x = margin.left + (i / 4) * plotW;
      svg.append(svgEl("line", { x1: x, x2: x, y1: margin.top, y2: plotBottom, class: "grid" }));
      svg.append(svgEl("text", { x, y: plotBottom + 16, "text-anchor": "middle" },
        fmt(Math.round((maxValue * i) / 4))));
    }
    if (items.length === 0) {
      svg.append(svgEl("text", { x: margin.left + 8, y: margin.top + rowH / 2 + 4, class: "empty-note" },
        opts.emptyText));
    }
    items.forEach((item, i) => {
      const y = margin.top + i * rowH;
      const width = (item.value / maxValue) * plotW;
      const label = svgEl("text", { x: margin.left - 8, y: y + rowH / 2 + 4, "text-anchor": "end" },
        shorten(item.label));
      label.append(svgEl("title", {}, item.label));
      svg.append(label);
      const bar = svgEl("rect", { x: margin.left, y: y + 5, width, height: rowH - 10, class: `bar ${opts.kind}`,
        "data-label": item.label });
      bar.append(svgEl("title", {}, `${item.label}: ${fmt(item.value)}, ${plural(item.count, opts.countNoun)}`));
      svg.append(bar);
      svg.append(svgEl("text", { x: margin.left + width + 6, y: y + rowH / 2 + 4 },
        `${fmt(item.value)} · ${item.count}`));
    });
    svg.append(svgEl("line", { x1: margin.left, x2: margin.left, y1: margin.top, y2: plotBottom, class: "axis" }));
    svg.append(svgEl("text", { x: margin.left + plotW / 2, y: height - 12, "text-anchor": "middle",
      class: "axis-label" }, opts.valueAxis));
    svg.append(svgEl("text", { x: 14, y: margin.top + (plotBottom - margin.top) / 2, "text-anchor": "middle",
      class: "axis-label", transform: `rotate(-90 14 ${margin.top + (plotBottom - margin.top) / 2})` },
      opts.itemAxis));
    figure.replaceChildren(svg, dataTable([opts.itemAxis, opts.countHeader, opts.valueHeader],
      items.map((item) => [item.label, String(item.count), fmt(item.value)])));
    return total;
  }

  window.TokenpayCharts = { daily, bars, niceMax };
})();
