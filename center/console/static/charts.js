// Charts for the console's statistics, drawn as SVG with the DOM (no library, nothing fetched).
// Each chart has a visible title, axis labels, an SVG <title>/<desc> for screen readers,
// a <title> on every bar and point (the daily chart: on every day), and the numbers as a table under
// "Data". Charts are drawn at the width of their figure: call them again when it changes.
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";
  const WIDTH = 760; // the widest a chart is drawn
  const MIN_WIDTH = 280; // narrower than this, the drawing is scaled down
  const NARROW_WIDTH = 520; // below this, narrower margins and fewer ticks
  const DAY_LABEL_PX = 46; // room for one "MM-DD" label under the daily chart
  let serial = 0;

  function svgEl(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function htmlEl(name, text, className) {
    const node = document.createElement(name);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
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

  function shorten(text, maxChars) {
    return text.length > maxChars ? text.slice(0, maxChars - 1) + "\u2026" : text;
  }

  // An <svg> with its accessible name and description, and the title drawn on top.
  function frame(kind, width, height, title, description) {
    serial += 1;
    const titleId = `chart-${kind}-title-${serial}`;
    const descId = `chart-${kind}-desc-${serial}`;
    const svg = svgEl("svg", {
      viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-labelledby": `${titleId} ${descId}`,
      "data-chart": kind,
    });
    svg.append(svgEl("title", { id: titleId }, title), svgEl("desc", { id: descId }, description));
    svg.append(svgEl("text", { x: 8, y: 18, class: "chart-title" }, title));
    return svg;
  }

  // The chart's numbers as a table; the columns in `numeric` are right-aligned.
  function dataTable(headers, rows, numeric) {
    const details = htmlEl("details");
    details.append(htmlEl("summary", "Data"));
    const table = htmlEl("table");
    table.className = "data";
    const head = table.createTHead().insertRow();
    headers.forEach((header, i) => head.append(htmlEl("th", header, numeric.includes(i) ? "num" : "")));
    const body = table.createTBody();
    for (const row of rows) {
      const tr = body.insertRow();
      row.forEach((cell, i) => tr.append(htmlEl("td", cell, numeric.includes(i) ? "num" : "")));
    }
    details.append(table);
    return details;
  }

  // Drawn at the width it is shown at (one SVG unit = one CSS pixel), so text keeps its size on a phone.
  function chartWidth(figure) {
    const shown = Math.floor(figure.clientWidth || WIDTH);
    return Math.max(MIN_WIDTH, Math.min(WIDTH, shown));
  }

  function isNarrow(width) {
    return width < NARROW_WIDTH;
  }

  // Horizontal grid lines with their labels on the left, for one panel [top, top + height].
  function yGrid(group, box, ticks, maxValue, label) {
    for (let i = 0; i <= ticks; i += 1) {
      const y = box.top + box.height - (i / ticks) * box.height;
      group.append(svgEl("line", { x1: box.left, x2: box.left + box.width, y1: y, y2: y, class: "grid" }));
      group.append(svgEl("text", { x: box.left - 6, y: y + 4, "text-anchor": "end", class: "tick" },
        label((maxValue * i) / ticks)));
    }
  }

  // Daily payments in two panels over the same days: volume as bars against a money axis, and the
  // count as points against a count axis of its own (the count never reads off the money axis).
  function daily(figure, days, opts) {
    const fmt = opts.formatAmount;
    const width = chartWidth(figure);
    const narrow = isNarrow(width);
    const left = narrow ? 74 : 96;
    const plotW = width - left - 16;
    const volume = { left, width: plotW, top: 50, height: narrow ? 150 : 190 };
    const count = { left, width: plotW, top: volume.top + volume.height + 34, height: narrow ? 70 : 90 };
    const height = count.top + count.height + 48;
    const totalVolume = days.reduce((sum, d) => sum + d.volume_minor, 0);
    const totalCount = days.reduce((sum, d) => sum + d.count, 0);
    const busiest = days.reduce((best, d) => (d.volume_minor > best.volume_minor ? d : best), days[0]);
    const description = `Payments per UTC day from ${days[0].day} to ${days[days.length - 1].day}: ` +
      `${plural(totalCount, "payment")}, ${fmt(totalVolume)} in total` +
      (totalVolume > 0 ? `; largest volume on ${busiest.day} (${fmt(busiest.volume_minor)}).` : ".");
    const svg = frame("daily", width, height, "Daily payments: volume and count", description);
    const maxVolume = niceMax(Math.max(0, ...days.map((d) => d.volume_minor)));
    const maxCount = Math.max(2, Math.ceil(niceMax(Math.max(0, ...days.map((d) => d.count))) / 2) * 2);
    const band = plotW / days.length;
    const today = opts.today || "";

    const volumePanel = svgEl("g", { "data-panel": "volume" });
    volumePanel.append(svgEl("text", { x: left, y: volume.top - 10, class: "axis-label" },
      `Volume (${opts.currency})`));
    yGrid(volumePanel, volume, narrow ? 2 : 4, maxVolume, (v) => fmt(Math.round(v)));
    days.forEach((d, i) => {
      const top = volume.top + volume.height - (d.volume_minor / maxVolume) * volume.height;
      const bar = svgEl("rect", { x: left + i * band + band * 0.15, y: top, width: band * 0.7,
        height: volume.top + volume.height - top, class: d.day === today ? "bar today" : "bar", "data-day": d.day });
      bar.append(svgEl("title", {}, `${d.day}: ${fmt(d.volume_minor)}`));
      volumePanel.append(bar);
    });
    svg.append(volumePanel);

    const countPanel = svgEl("g", { "data-panel": "count" });
    countPanel.append(svgEl("text", { x: left, y: count.top - 10, class: "axis-label" }, "Payments (count)"));
    yGrid(countPanel, count, 2, maxCount, (c) => String(c));
    const points = days.map((d, i) => [left + i * band + band / 2,
      count.top + count.height - (d.count / maxCount) * count.height]);
    countPanel.append(svgEl("polyline", { points: points.map((p) => p.join(",")).join(" "), class: "line" }));
    days.forEach((d, i) => {
      const point = svgEl("circle", { cx: points[i][0], cy: points[i][1], r: 3.5, class: "point", "data-day": d.day });
      point.append(svgEl("title", {}, `${d.day}: ${plural(d.count, "payment")}`));
      countPanel.append(point);
    });
    svg.append(countPanel);

    const bottom = count.top + count.height;
    svg.append(svgEl("line", { x1: left, x2: left + plotW, y1: bottom, y2: bottom, class: "axis" }));
    const every = Math.ceil(days.length / Math.max(1, Math.floor(plotW / DAY_LABEL_PX)));
    dayLabels(svg, days, { left, band, y: bottom + 16, every, today });
    svg.append(svgEl("text", { x: left + plotW / 2, y: height - 8, "text-anchor": "middle", class: "axis-label" },
      "Day (UTC)"));
    // On top of both panels, one target per day: every day's date shows on hover, even a day without
    // payments, whose bar has no height to point at.
    days.forEach((d, i) => {
      const hit = svgEl("rect", { x: left + i * band, y: volume.top, width: band, height: bottom - volume.top,
        class: "hit", "data-day": d.day });
      hit.append(svgEl("title", {}, `${d.day}${d.day === today ? " (today)" : ""}: ${fmt(d.volume_minor)}, ` +
        plural(d.count, "payment")));
      svg.append(hit);
    });
    figure.replaceChildren(svg, dataTable(["Day (UTC)", "Payments", "Volume"],
      days.map((d) => [d.day, String(d.count), fmt(d.volume_minor)]), [1, 2]));
  }

  // Every `every`-th day counted back from the last, so the last day (today) always has its label.
  function dayLabels(svg, days, at) {
    const last = days.length - 1;
    days.forEach((d, i) => {
      if ((last - i) % at.every !== 0) return;
      const isToday = d.day === at.today;
      const label = svgEl("text", { x: at.left + i * at.band + at.band / 2, y: at.y,
        "text-anchor": i === last ? "end" : "middle", class: isToday ? "day-label today" : "day-label",
        "data-day": d.day }, isToday ? "today" : d.day.slice(5));
      svg.append(label);
    });
  }

  // Horizontal bars, one per item, largest scale first: top stores, funding by method.
  function bars(figure, items, opts) {
    const fmt = opts.formatAmount;
    const width = chartWidth(figure);
    const narrow = isNarrow(width);
    const margin = narrow ? { left: Math.round(width * 0.3), right: Math.round(width * 0.32), top: 44, bottom: 44 }
      : { left: 180, right: 190, top: 44, bottom: 50 };
    const labelChars = Math.max(6, Math.floor((margin.left - 14) / 6.5));
    const rowH = 30;
    const height = margin.top + Math.max(items.length, 1) * rowH + margin.bottom;
    const plotW = width - margin.left - margin.right;
    const total = items.reduce((sum, item) => sum + item.value, 0);
    const description = items.length === 0 ? opts.emptyText :
      `${opts.title}: ` + items.map((item) => `${item.label} ${fmt(item.value)} (${plural(item.count, opts.countNoun)})`).join("; ") + ".";
    const svg = frame(opts.kind, width, height, opts.title, description);
    const maxValue = niceMax(Math.max(0, ...items.map((item) => item.value)));
    const plotBottom = margin.top + Math.max(items.length, 1) * rowH;
    const ticks = narrow ? 2 : 4;
    for (let i = 0; i <= ticks; i += 1) {
      const x = margin.left + (i / ticks) * plotW;
      svg.append(svgEl("line", { x1: x, x2: x, y1: margin.top, y2: plotBottom, class: "grid" }));
      svg.append(svgEl("text", { x, y: plotBottom + 16, "text-anchor": i === ticks ? "end" : "middle" },
        fmt(Math.round((maxValue * i) / ticks))));
    }
    if (items.length === 0) {
      svg.append(svgEl("text", { x: margin.left + 8, y: margin.top + rowH / 2 + 4, class: "empty-note" },
        opts.emptyText));
    }
    items.forEach((item, i) => {
      const y = margin.top + i * rowH;
      const barW = (item.value / maxValue) * plotW;
      const label = svgEl("text", { x: margin.left - 8, y: y + rowH / 2 + 4, "text-anchor": "end" },
        shorten(item.label, labelChars));
      label.append(svgEl("title", {}, item.label));
      svg.append(label);
      const bar = svgEl("rect", { x: margin.left, y: y + 5, width: barW, height: rowH - 10, class: `bar ${opts.kind}`,
        "data-label": item.label });
      bar.append(svgEl("title", {}, `${item.label}: ${fmt(item.value)}, ${plural(item.count, opts.countNoun)}`));
      svg.append(bar);
      svg.append(svgEl("text", { x: margin.left + barW + 6, y: y + rowH / 2 + 4 },
        `${fmt(item.value)} · ${item.count}`));
    });
    svg.append(svgEl("line", { x1: margin.left, x2: margin.left, y1: margin.top, y2: plotBottom, class: "axis" }));
    svg.append(svgEl("text", { x: margin.left + plotW / 2, y: height - 12, "text-anchor": "middle",
      class: "axis-label" }, opts.valueAxis));
    svg.append(svgEl("text", { x: margin.left - 8, y: margin.top - 8, "text-anchor": "end", class: "axis-label" },
      opts.itemAxis));
    figure.replaceChildren(svg, dataTable([opts.itemAxis, opts.countHeader, opts.valueHeader],
      items.map((item) => [item.label, String(item.count), fmt(item.value)]), [1, 2]));
    return total;
  }

  window.TokenpayCharts = { daily, bars, niceMax };
})();
