// tokenpay operator console. Vanilla JS; every value from the center is put in the page as text
// (textContent), never as HTML. Talks only to this origin: /v1/center and /console/api/*.
"use strict";

(function () {
  const POLL_MS = 1000;
  const WATCH_MS = 2000; // how often the top-ups page asks whether a shown command was run
  const PAGE_ROWS = 50;
  const state = {
    csrf: null, role: null, currency: "", exponent: 0, pollTimer: null, loginSerial: 0,
    watched: new Map(), watchTimer: null,
    filters: {}, offsets: {}, statementParty: null, statementFilters: {}, statementOffset: 0,
    stats: null, resizeTimer: null, drawnWidth: null,
  };
  const TABLE_VIEWS = ["search", "topups", "payments", "refunds", "payouts"];
  const RESIZE_MS = 150; // charts are redrawn at their new width once the window stops changing
  const $ = (id) => document.getElementById(id);

  // --- formatting -------------------------------------------------------------------------------
  function formatAmount(minor) {
    const unit = 10 ** state.exponent;
    const abs = Math.abs(minor);
    const whole = String(Math.floor(abs / unit)).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    const fraction = state.exponent ? "." + String(abs % unit).padStart(state.exponent, "0") : "";
    return `${minor < 0 ? "-" : ""}${whole}${fraction} ${state.currency}`;
  }

  function formatTime(ms) {
    if (ms === null || ms === undefined) return "";
    return new Date(ms).toISOString().slice(0, 19).replace("T", " ") + " UTC";
  }

  function el(name, text, className) {
    const node = document.createElement(name);
    if (text !== undefined && text !== null) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  // --- talking to the center --------------------------------------------------------------------
  class ApiFailure extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, method = "GET") {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = state.csrf || "";
    const response = await fetch(path, { method, headers, credentials: "same-origin", cache: "no-store" });
    let body = {};
    try {
      body = await response.json();
    } catch (_ignored) {
      body = {};
    }
    if (!response.ok) {
      const error = body.error || {};
      throw new ApiFailure(response.status, error.code || "http_error", error.message || `HTTP ${response.status}`);
    }
    return body;
  }

  function showMessage(text) {
    $("error").hidden = true;
    $("message").textContent = text;
    $("message").hidden = false;
  }

  function hideBanners() {
    $("error").hidden = true;
    $("message").hidden = true;
  }

  function showError(error) {
    if (error instanceof ApiFailure && error.code === "console_login_required") {
      startLogin("Your console session has ended; log in again.");
      return;
    }
    $("message").hidden = true;
    $("error").textContent = error instanceof ApiFailure ? `${error.message} (${error.code})` : String(error.message);
    $("error").hidden = false;
  }

  function query(params) {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== "" && value !== null && value !== undefined) search.set(key, String(value));
    }
    return search.toString();
  }

  // --- login ------------------------------------------------------------------------------------
  function stopPolling() {
    if (state.pollTimer !== null) clearTimeout(state.pollTimer);
    state.pollTimer = null;
  }

  async function startLogin(note) {
    stopPolling();
    state.loginSerial += 1;
    const serial = state.loginSerial;
    $("app-view").hidden = true;
    $("who").hidden = true;
    hideBanners(); // an error or a result from the session that ended no longer applies
    clearData();
    $("login-view").hidden = false;
    $("challenge-code").textContent = "\u2026";
    $("login-status").textContent = note || "Asking the center for a login code\u2026";
    try {
      const challenge = await api("/console/api/challenge", "POST");
      if (serial !== state.loginSerial) return;
      $("challenge-code").textContent = challenge.challenge;
      $("login-status").textContent = `Waiting for your wallet to approve this code (valid ${challenge.expires_in_s} s)\u2026`;
      state.pollTimer = setTimeout(() => poll(serial), POLL_MS);
    } catch (error) {
      $("login-status").textContent = `Could not get a login code: ${error.message}`;
    }
  }

  async function poll(serial) {
    if (serial !== state.loginSerial) return;
    try {
      const answer = await api("/console/api/login-status");
      if (serial !== state.loginSerial) return;
      if (answer.status === "approved") {
        state.csrf = answer.csrf_token;
        await enterConsole();
        return;
      }
      if (answer.status === "expired") {
        $("login-status").textContent = "This code has expired or was used. Press \u201cNew code\u201d.";
        return;
      }
    } catch (error) {
      if (error instanceof ApiFailure && error.code === "unknown_challenge") {
        $("login-status").textContent = "The center no longer knows this code. Press \u201cNew code\u201d.";
        return;
      }
      $("login-status").textContent = `Still waiting (${error.message})\u2026`;
    }
    state.pollTimer = setTimeout(() => poll(serial), POLL_MS);
  }

  async function enterConsole() {
    const me = await api("/console/api/me");
    stopPolling();
    state.csrf = me.csrf_token;
    state.role = me.role;
    $("operator-name").textContent = me.name;
    $("operator-role").textContent = me.role;
    $("who").hidden = false;
    $("login-view").hidden = true;
    $("app-view").hidden = false;
    selectTab("search");
  }

  async function logout() {
    try {
      await api("/console/api/logout", "POST");
    } catch (_ignored) {
      // The session may already be gone; the login view is right either way.
    }
    state.csrf = null;
    state.role = null;
    stopWatching();
    startLogin("You have logged out.");
  }

  // --- tables -----------------------------------------------------------------------------------
  const money = (value) => formatAmount(value);
  // Each column: [key, heading, format(value, row), class (num, mono, party), title(row) shown on hover].
  const COLUMNS = {
    search: [
      ["name", "Name", null, "party"], ["role", "Role"], ["party_id", "Id", null, "mono"],
      ["status", "Status"], ["balance_minor", "Balance", money, "num"], ["created_at_ms", "Since", formatTime],
    ],
    statement: [
      ["created_at_ms", "When", formatTime], ["kind", "Kind"], ["ref", "Reference", null, "mono"],
      ["order_ref", "Order"], ["counterparty_name", "Counterparty", (v, row) => v || row.counterparty],
      ["debit_minor", "Out", (v) => (v ? money(v) : ""), "num"], ["credit_minor", "In", (v) => (v ? money(v) : ""), "num"],
      ["balance_minor", "Balance", money, "num"],
    ],
    topups: [
      ["created_at_ms", "Requested", formatTime], ["topup_id", "Top-up", null, "mono"], ["member_name", "Member"],
      ["member_id", "Member id", null, "mono"], ["amount_minor", "Amount", money, "num"], ["method", "Method"],
      ["status", "Status"],
      // Who decided: the operator's name when the center knows it; what it recorded (operator:<id>) on hover.
      ["decided_by", "Decided by", (v, row) => row.decided_by_name || v, "", (row) => row.decided_by],
      ["decided_at_ms", "Decided", formatTime],
    ],
    payments: [
      ["created_at_ms", "When", formatTime], ["payment_id", "Payment", null, "mono"], ["buyer_name", "Buyer"],
      ["store_name", "Store"], ["amount_minor", "Amount", money, "num"], ["refunded_minor", "Refunded", money, "num"],
      ["order_ref", "Order"],
    ],
    refunds: [
      ["created_at_ms", "When", formatTime], ["refund_id", "Refund", null, "mono"],
      ["payment_id", "Payment", null, "mono"], ["store_name", "Store"], ["buyer_name", "Buyer"],
      ["amount_minor", "Refunded", money, "num"], ["paid_minor", "Of payment", money, "num"],
    ],
    payouts: [
      ["created_at_ms", "Claimed", formatTime], ["payout_id", "Payout", null, "mono"], ["store_name", "Store"],
      ["amount_minor", "Amount", money, "num"], ["bank_account", "Bank account", null, "mono"], ["status", "Status"],
      ["batch_id", "Batch", null, "mono"], ["settled_at_ms", "Settled", formatTime],
    ],
  };

  function renderTable(box, view, result, exportQuery, onPage) {
    box.replaceChildren();
    const tools = el("div", undefined, "table-tools");
    const exportLink = el("a", "Export CSV");
    exportLink.href = `/console/api/export/${view}.csv?${exportQuery}`;
    exportLink.setAttribute("download", "");
    exportLink.dataset.export = view;
    const shown = result.rows.length ? `rows ${result.offset + 1}\u2013${result.offset + result.rows.length}` : "no rows";
    tools.append(el("span", shown, "row-count"), exportLink);
    const previous = el("button", "\u2190 Previous");
    previous.type = "button";
    previous.disabled = result.offset === 0;
    previous.addEventListener("click", () => onPage(Math.max(0, result.offset - result.limit)));
    const next = el("button", "Next \u2192");
    next.type = "button";
    next.disabled = !result.has_more;
    next.addEventListener("click", () => onPage(result.offset + result.limit));
    tools.append(previous, next);
    box.append(tools);
    if (result.rows.length === 0) {
      box.append(el("p", "Nothing matches.", "empty"));
      return;
    }
    const table = el("table");
    table.dataset.view = view;
    const head = table.createTHead().insertRow();
    const columns = COLUMNS[view];
    for (const [, label, , className] of columns) head.append(el("th", label, className === "num" ? "num" : ""));
    const withActions = view === "topups" && state.role === "operator";
    if (withActions) head.append(el("th", DECIDE_LABEL));
    const body = table.createTBody();
    for (const row of result.rows) {
      const tr = body.insertRow();
      tr.dataset.id = row.party_id || row.topup_id || row.payment_id || row.refund_id || row.payout_id ||
        row.transfer_id || "";
      for (const [key, label, format, className, titleOf] of columns) {
        const td = el("td", undefined, className === "party" ? "" : className || "");
        td.dataset.col = key;
        td.dataset.label = label; // the heading, shown beside the value when a narrow screen stacks the row
        const title = titleOf ? titleOf(row) : "";
        if (title) td.title = title;
        const text = format ? format(row[key], row) : row[key];
        if (className === "party") {
          const open = el("button", text, "link open-statement");
          open.type = "button";
          open.addEventListener("click", () => openStatement(row.party_id));
          td.append(open);
        } else {
          td.textContent = text === null || text === undefined ? "" : String(text);
        }
        tr.append(td);
      }
      if (withActions) tr.append(decisionCell(row));
    }
    box.append(table);
  }

  // A console session never decides: each pending top-up shows the command that signs the decision on the
  // operator's token (the wallet fetches and shows the top-up first). The page then watches for the result.
  const DECIDE_LABEL = "Decide with your token";

  function decisionCell(row) {
    const td = el("td", undefined, "decide");
    td.dataset.label = DECIDE_LABEL;
    if (row.status !== "pending") return td;
    for (const decision of ["confirm", "decline"]) {
      // The command may wrap on a narrow screen, but only between words: never inside the id.
      const code = el("code", `wallet operator ${decision}-topup `, "decision-command");
      code.append(el("span", row.topup_id, "id"));
      code.dataset.decision = decision;
      td.append(code);
    }
    state.watched.set(row.topup_id, row);
    return td;
  }

  function stopWatching() {
    if (state.watchTimer !== null) clearTimeout(state.watchTimer);
    state.watchTimer = null;
    state.watched.clear();
  }

  function watchDecisions() {
    if (state.watchTimer !== null) clearTimeout(state.watchTimer);
    state.watchTimer = state.watched.size ? setTimeout(checkDecisions, WATCH_MS) : null;
  }

  async function checkDecisions() {
    state.watchTimer = null;
    if ($("panel-topups").hidden || !state.watched.size) return;
    const ids = [...state.watched.keys()].slice(0, PAGE_ROWS);
    try {
      const answer = await api(`/console/api/topups/decisions?${query({ ids: ids.join(",") })}`);
      const decided = answer.decisions.filter((d) => d.status !== "pending" && state.watched.has(d.topup_id));
      for (const decision of decided) {
        const row = state.watched.get(decision.topup_id);
        showMessage(`Top-up ${decision.topup_id} ${decision.status}: ${formatAmount(row.amount_minor)} for ` +
          `${row.member_name}, by ${decision.decided_by}.`);
      }
      if (decided.length) {
        state.watched.clear();
        await loadView("topups");
        return;
      }
    } catch (error) {
      showError(error);
      return;
    }
    watchDecisions();
  }

  async function loadView(view) {
    const filters = state.filters[view] || {};
    const offset = state.offsets[view] || 0;
    const box = $(`table-${view}`);
    if (view === "topups") stopWatching();
    const serial = state.loginSerial;
    try {
      const result = await api(`/console/api/${view}?${query({ ...filters, limit: PAGE_ROWS, offset })}`);
      if (serial !== state.loginSerial) return; // logged out meanwhile: not shown to whoever logs in next
      $("error").hidden = true; // an earlier refusal no longer applies
      renderTable(box, view, result, query(filters), (nextOffset) => {
        state.offsets[view] = nextOffset;
        loadView(view);
      });
      if (view === "topups") watchDecisions();
    } catch (error) {
      if (serial !== state.loginSerial) return;
      box.replaceChildren(); // the rows of the previous filters do not answer the refused ones
      showError(error);
    }
  }

  function closeStatement() {
    state.statementParty = null;
    $("statement").hidden = true;
    $("table-statement").replaceChildren();
    for (const id of ["statement-title", "statement-id", "statement-balance", "statement-opening"]) {
      $(id).textContent = "";
    }
  }

  // What one session read is not shown to the next, nor under the login view.
  function clearData() {
    stopWatching();
    closeStatement();
    for (const view of TABLE_VIEWS) $(`table-${view}`).replaceChildren();
    for (const chart of ["chart-daily", "chart-top-stores", "chart-funding"]) $(chart).replaceChildren();
    $("stats-period").textContent = "";
    state.stats = null;
    for (const view of [...TABLE_VIEWS, "stats"]) {
      $(`form-${view}`).reset();
      state.filters[view] = formFilters($(`form-${view}`));
      state.offsets[view] = 0;
    }
  }

  function formFilters(form) {
    const values = {};
    for (const [key, value] of new FormData(form).entries()) values[key] = String(value).trim();
    return values;
  }

  // --- statement --------------------------------------------------------------------------------
  async function openStatement(partyId) {
    state.statementParty = partyId;
    state.statementFilters = {};
    state.statementOffset = 0;
    $("form-statement").reset();
    await loadStatement();
  }

  async function loadStatement() {
    const partyId = state.statementParty;
    const filters = state.statementFilters;
    const serial = state.loginSerial;
    try {
      const result = await api(`/console/api/members/${encodeURIComponent(partyId)}/statement?` +
        query({ ...filters, limit: PAGE_ROWS, offset: state.statementOffset }));
      if (serial !== state.loginSerial || partyId !== state.statementParty) return; // no longer asked for
      const party = result.party;
      $("statement-title").textContent = `Statement of ${party.name}`;
      $("statement-id").replaceChildren(`${party.role} `, el("span", party.party_id, "id"), `, ${party.status}`);
      $("statement-balance").textContent = formatAmount(party.balance_minor);
      $("statement-opening").textContent = formatAmount(result.opening_balance_minor);
      $("error").hidden = true;
      renderTable($("table-statement"), "statement", result, query({ party_id: partyId, ...filters }), (offset) => {
        state.statementOffset = offset;
        loadStatement();
      });
      $("statement").hidden = false;
    } catch (error) {
      if (serial !== state.loginSerial || partyId !== state.statementParty) return;
      // Rows and opening balance were for other dates; the party's header still holds.
      $("table-statement").replaceChildren();
      $("statement-opening").textContent = "";
      showError(error);
    }
  }

  // --- statistics -------------------------------------------------------------------------------
  async function loadStats() {
    const filters = state.filters.stats || { days: "30" };
    const serial = state.loginSerial;
    try {
      const stats = await api(`/console/api/stats?${query(filters)}`);
      if (serial !== state.loginSerial) return;
      $("error").hidden = true;
      state.stats = { stats, filters };
      drawStats(stats, filters);
    } catch (error) {
      if (serial !== state.loginSerial) return;
      state.stats = null;
      for (const chart of ["chart-daily", "chart-top-stores", "chart-funding"]) $(chart).replaceChildren();
      $("stats-period").textContent = "";
      showError(error);
    }
  }

  function drawStats(stats, filters) {
    state.drawnWidth = $("chart-daily").clientWidth;
    $("stats-period").textContent = `${stats.from_day} to ${stats.to_day} (UTC), ${stats.days} days.`;
    const common = { formatAmount, currency: state.currency };
    // The last day of the period is the center's today (UTC).
    window.TokenpayCharts.daily($("chart-daily"), stats.daily, { ...common, today: stats.to_day });
    window.TokenpayCharts.bars($("chart-top-stores"), stats.top_stores.map((s) => ({
      label: s.name, value: s.volume_minor, count: s.count,
    })), { ...common, kind: "top-stores", title: "Top stores by payment volume", itemAxis: "Store",
      valueAxis: `Volume (${state.currency})`, countNoun: "payment", countHeader: "Payments",
      valueHeader: "Volume", emptyText: "No payments in this period." });
    window.TokenpayCharts.bars($("chart-funding"), stats.funding.map((f) => ({
      label: f.method, value: f.amount_minor, count: f.count,
    })), { ...common, kind: "funding", title: "Funding by method (confirmed top-ups)", itemAxis: "Method",
      valueAxis: `Confirmed (${state.currency})`, countNoun: "top-up", countHeader: "Top-ups",
      valueHeader: "Amount", emptyText: "No confirmed top-ups in this period." });
    for (const [chart, view] of [["chart-daily", "stats-daily"], ["chart-top-stores", "stats-top-stores"],
      ["chart-funding", "stats-funding"]]) {
      const link = el("a", "Export CSV");
      link.href = `/console/api/export/${view}.csv?${query(filters)}`;
      link.setAttribute("download", "");
      link.dataset.export = view;
      $(chart).append(link);
    }
  }

  function redrawCharts() {
    if (state.resizeTimer !== null) clearTimeout(state.resizeTimer);
    state.resizeTimer = setTimeout(() => {
      state.resizeTimer = null;
      // Only when the width changed: a redraw replaces the SVGs, which a reader (or a test) may hold.
      const changed = $("chart-daily").clientWidth !== state.drawnWidth;
      if (state.stats && !$("panel-stats").hidden && changed) drawStats(state.stats.stats, state.stats.filters);
    }, RESIZE_MS);
  }

  // --- tabs and wiring --------------------------------------------------------------------------
  const LOADERS = {
    search: () => loadView("search"), topups: () => loadView("topups"), payments: () => loadView("payments"),
    refunds: () => loadView("refunds"), payouts: () => loadView("payouts"), stats: loadStats,
  };

  function selectTab(name) {
    for (const tab of document.querySelectorAll("[role=tab]")) {
      const selected = tab.dataset.tab === name;
      tab.setAttribute("aria-selected", selected ? "true" : "false");
      $(tab.getAttribute("aria-controls")).hidden = !selected;
    }
    LOADERS[name]();
  }

  function wireForms() {
    for (const view of ["search", "topups", "payments", "refunds", "payouts", "stats"]) {
      const form = $(`form-${view}`);
      if (!state.filters[view]) state.filters[view] = formFilters(form);
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        state.filters[view] = formFilters(form);
        state.offsets[view] = 0;
        if (view === "search") closeStatement(); // a new search: the statement opened from the last one goes
        LOADERS[view]();
      });
    }
    $("form-statement").addEventListener("submit", (event) => {
      event.preventDefault();
      state.statementFilters = formFilters($("form-statement"));
      state.statementOffset = 0;
      loadStatement();
    });
    for (const tab of document.querySelectorAll("[role=tab]")) {
      tab.addEventListener("click", () => selectTab(tab.dataset.tab));
    }
    $("logout").addEventListener("click", logout);
    $("new-code").addEventListener("click", () => startLogin());
    window.addEventListener("resize", redrawCharts);
  }

  async function boot() {
    wireForms();
    try {
      const center = await api("/v1/center");
      state.currency = center.currency;
      state.exponent = center.minor_exponent;
      $("center-id").textContent = `center ${center.center_id} \u00b7 ${center.currency}`;
    } catch (error) {
      showError(error);
      return;
    }
    try {
      await enterConsole();
    } catch (_notLoggedIn) {
      startLogin();
    }
  }

  document.addEventListener("DOMContentLoaded", boot);
})();
