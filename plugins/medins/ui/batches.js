/*
 * The batches page: recent batches with their progress, one batch's problem requests, success rates.
 *
 * Plain JavaScript, no build step. Everything shown comes from the status API (docs/status-api.md),
 * fetched with the caller's Airflow session: the api-server keeps the user's token in an HttpOnly
 * cookie that the browser sends with every same-origin request, so the page never sees the token.
 * Personal data arrives masked. Text is always set with textContent, never parsed as HTML.
 *
 *   /medins/ui/             recent batches, success rate over time, by interface and institution
 *   /medins/ui/?batch=ID    one batch: progress, counts by state, its failed, rejected and unknown
 *                           requests with their reasons, links to its DAG run and mapped chunks
 */
"use strict";

(() => {
  const API = new URL("../api/v1/", document.baseURI);
  const AIRFLOW = new URL("../../", document.baseURI);

  const STATES = ["SUCCESS", "FAILURE", "REJECTED", "UNKNOWN", "CANCELLED", "PROCESSING", "RETRY", "PENDING"];
  const FINAL = new Set(["SUCCESS", "FAILURE", "REJECTED", "UNKNOWN", "CANCELLED"]);
  const PROBLEMS = ["FAILURE", "REJECTED", "UNKNOWN"];

  const RUNNING_REFRESH_MS = 3000;
  const IDLE_REFRESH_MS = 30000;
  const CHART_REFRESH_MS = 15000;
  const BATCH_PAGE_SIZE = 10;
  const PROBLEM_PAGE_SIZE = 20;

  // Which DAG runs the list shows; medins_call registers a one-request batch for every single call.
  const DAG_FILTERS = {
    batches: { label: "Batches and nightly runs", dags: ["medins_batch", "medins_nightly"] },
    calls: { label: "Single calls (medins_call)", dags: ["medins_call"] },
    all: { label: "All", dags: [] },
  };
  const PERIODS = {
    hour: { label: "Last hour, per minute", interval: "minute", hours: 1 },
    day: { label: "Last 24 hours, per hour", interval: "hour", hours: 24 },
    week: { label: "Last 7 days, per hour", interval: "hour", hours: 168 },
  };
  // The task of each DAG that sends a batch's requests; mapped over chunks unless said otherwise.
  const SENDING_TASK = { medins_call: { task: "call_interface", mapped: false } };
  const DEFAULT_SENDING_TASK = { task: "send_chunk", mapped: true };

  const numbers = new Intl.NumberFormat("en-US");
  const query = new URLSearchParams(window.location.search);

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  // -- DOM helpers --------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else if (name.startsWith("data-") || name.startsWith("aria-") || name === "role" || name === "title") {
        node.setAttribute(name, String(value));
      } else node[name] = value;
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    for (const child of children.flat()) if (child) node.append(child);
    return node;
  }

  function stateColor(node, state) {
    node.style.setProperty("--state-color", `var(--${state})`);
    return node;
  }

  function formatNumber(value) {
    return numbers.format(value);
  }

  function formatRate(rate) {
    return `${(100 * rate).toFixed(1)} %`;
  }

  function formatTime(iso) {
    if (!iso) return "";
    return new Date(iso).toLocaleString("sv-SE", { hour12: false }).slice(0, 19);
  }

  function successRate(byStatus) {
    let final = 0;
    for (const [state, count] of Object.entries(byStatus)) if (FINAL.has(state)) final += count;
    return final ? (byStatus.SUCCESS || 0) / final : null;
  }

  function sum(values) {
    return values.reduce((total, value) => total + value, 0);
  }

  // -- the status API and Airflow's UI ------------------------------------------------------------

  async function api(path, params) {
    const url = new URL(path, API);
    for (const [name, value] of Object.entries(params || {})) {
      if (value === undefined || value === null || value === "") continue;
      for (const one of Array.isArray(value) ? value : [value]) url.searchParams.append(name, one);
    }
    const reply = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!reply.ok) {
      let detail = reply.statusText;
      try {
        detail = (await reply.json()).detail || detail;
      } catch {
        // not JSON: keep the status text
      }
      throw new ApiError(reply.status, typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return reply.json();
  }

  function airflowUrl(path) {
    return new URL(path, AIRFLOW).href;
  }

  function runUrl(batch) {
    return airflowUrl(`dags/${encodeURIComponent(batch.dag_id)}/runs/${encodeURIComponent(batch.run_id)}`);
  }

  function chunksUrl(batch) {
    const sending = SENDING_TASK[batch.dag_id] || DEFAULT_SENDING_TASK;
    return `${runUrl(batch)}/tasks/${sending.task}${sending.mapped ? "/mapped" : ""}`;
  }

  // The Airflow UI frames this page in a sandbox without allow-top-navigation, so a link of ours
  // cannot navigate the window around it. The frame is same-origin: the link is followed from an
  // anchor in the Airflow UI's own document instead, which opens the page in the UI as usual.
  function followInAirflow(event) {
    if (window.top === window) return;
    let top;
    try {
      top = window.top.document;
    } catch {
      return;
    }
    event.preventDefault();
    const anchor = top.createElement("a");
    anchor.href = event.currentTarget.href;
    if (event.ctrlKey || event.metaKey || event.shiftKey) {
      anchor.target = "_blank";
      anchor.rel = "noopener";
    }
    top.body.append(anchor);
    anchor.click();
    anchor.remove();
  }

  function airflowLink(href, text, attrs) {
    const link = el("a", { href, text, ...attrs });
    link.addEventListener("click", followInAirflow);
    return link;
  }

  function runLinks(batch) {
    if (!batch.dag_id || !batch.run_id) return el("span", { class: "muted", text: "no DAG run" });
    const links = [airflowLink(runUrl(batch), "DAG run", { "data-link": "run" })];
    if (batch.chunks) {
      const label = SENDING_TASK[batch.dag_id] ? "Call" : `Chunks (${formatNumber(batch.chunks)})`;
      links.push(airflowLink(chunksUrl(batch), label, { "data-link": "chunks" }));
    }
    return el("span", { class: "links" }, links);
  }

  function pageUrl(params) {
    const url = new URL(window.location.href);
    url.search = new URLSearchParams(params).toString();
    return url.href;
  }

  // -- pieces ---------------------------------------------------------------------------------------

  function stateBadge(status) {
    return el("span", { class: `badge ${status}`, text: status, "data-status": status });
  }

  function stackedBar(byStatus, total, attrs) {
    const bar = el("div", { class: "bar", ...attrs });
    for (const state of STATES) {
      const count = byStatus[state] || 0;
      if (!count || !total) continue;
      const part = el("span", { title: `${state}: ${formatNumber(count)}` });
      part.style.width = `${(100 * count) / total}%`;
      part.style.background = `var(--${state})`;
      bar.append(part);
    }
    return bar;
  }

  function progress(batch, big) {
    const bar = stackedBar(batch.counts, batch.total, {
      role: "progressbar",
      "aria-valuemin": 0,
      "aria-valuemax": 100,
      "aria-valuenow": batch.percentage,
      "aria-label": `${batch.batch_id}: ${batch.percentage} % final`,
    });
    if (big) bar.classList.add("big");
    const label = el("div", {
      class: "label",
      text: `${formatNumber(batch.current)} / ${formatNumber(batch.total)} final · ${batch.percentage} %`,
    });
    return el("div", { class: "progress" }, bar, label);
  }

  function counts(byStatus) {
    const list = el("div", { class: "counts" });
    for (const state of STATES) {
      const count = byStatus[state];
      if (count === undefined) continue;
      const item = el("span", { class: "count", "data-state": state, "data-count": count, title: state });
      item.append(`${state} `, el("b", { text: formatNumber(count) }));
      list.append(stateColor(item, state));
    }
    if (!list.childElementCount) list.append(el("span", { class: "muted", text: "no requests" }));
    return list;
  }

  function tile(name, value, attrs) {
    return el("div", { class: "tile", ...attrs }, el("div", { class: "value", text: value }), el("div", { class: "name", text: name }));
  }

  function legend() {
    return el(
      "div",
      { class: "legend" },
      STATES.map((state) => stateColor(el("span", { class: "count", text: state }), state)),
    );
  }

  // Success rate and states of each interface or institution, as stacked bars.
  function ratesTable(title, byCode, dataName) {
    const rows = Object.entries(byCode).map(([code, byStatus]) => {
      const total = sum(Object.values(byStatus));
      const rate = successRate(byStatus);
      return el(
        "tr",
        { [`data-${dataName}`]: code || "(none)", "data-total": total },
        el("td", { class: "id", text: code || "(none)" }),
        el("td", { class: "bar-cell" }, stackedBar(byStatus, total)),
        el("td", { class: "num", text: rate === null ? "–" : formatRate(rate), "data-rate": rate ?? "" }),
        el("td", { class: "num muted", text: formatNumber(total) }),
      );
    });
    const table = el(
      "table",
      { class: "rates" },
      el("thead", {}, el("tr", {}, ["", "", "success", "requests"].map((name, i) => el("th", { class: i > 1 ? "num" : "", text: name })))),
      el("tbody", {}, rows),
    );
    return el("div", {}, el("h3", { text: title }), rows.length ? table : el("p", { class: "empty", text: "No requests." }));
  }

  // Success rate per interval as an SVG bar chart; intervals without final requests have no bar.
  function timelineChart(timeline) {
    const step = timeline.interval === "minute" ? 60e3 : 3600e3;
    const from = Math.floor(new Date(timeline.created_from).getTime() / step) * step;
    const to = new Date(timeline.created_to).getTime();
    const slots = Math.max(1, Math.floor((to - from) / step) + 1);
    const byStart = new Map(timeline.buckets.map((bucket) => [new Date(bucket.start).getTime(), bucket]));

    // Drawn at the width it is shown at, so that its text is not stretched.
    const width = Math.max(480, document.getElementById("main").clientWidth || 960);
    const height = 180;
    const left = 36;
    const bottom = 20;
    const plot = height - bottom - 8;
    const slot = (width - left) / slots;
    const chart = svg("svg", {
      class: "chart",
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": `Success rate per ${timeline.interval}`,
    });
    for (const mark of [0, 0.5, 1]) {
      const y = 8 + plot * (1 - mark);
      chart.append(svg("line", { class: "grid-line", x1: left, x2: width, y1: y, y2: y }));
      const label = svg("text", { x: 0, y: y + 3 });
      label.textContent = `${mark * 100} %`;
      chart.append(label);
    }
    const labelEvery = Math.ceil(slots / 8);
    for (let i = 0; i < slots; i++) {
      const start = from + i * step;
      const bucket = byStart.get(start);
      const x = left + i * slot;
      if (i % labelEvery === 0 && x + 70 < width) {
        const label = svg("text", { x: x + 1, y: height - 4 });
        label.textContent = formatTime(new Date(start).toISOString()).slice(timeline.interval === "minute" ? 11 : 5, 16);
        chart.append(label);
      }
      if (!bucket) continue;
      const rate = bucket.success_rate;
      const finalCount = sum(Object.entries(bucket.by_status).filter(([s]) => FINAL.has(s)).map(([, n]) => n));
      const barHeight = finalCount ? Math.max(1, plot * rate) : 0;
      const bar = svg("rect", {
        x: x + slot * 0.1,
        y: 8 + plot - barHeight,
        width: Math.max(1, slot * 0.8),
        height: barHeight,
        fill: rate >= 0.95 ? "var(--SUCCESS)" : rate >= 0.8 ? "var(--RETRY)" : "var(--FAILURE)",
        "data-start": bucket.start,
        "data-total": bucket.total,
        "data-rate": rate,
      });
      const title = svg("title");
      title.textContent = `${formatTime(bucket.start)}: ${formatRate(rate)} of ${formatNumber(finalCount)} final, ${formatNumber(bucket.total)} requests`;
      bar.append(title);
      chart.append(bar);
    }
    return chart;
  }

  function select(options, value, onChange, attrs) {
    const node = el(
      "select",
      attrs,
      Object.entries(options).map(([key, option]) => el("option", { value: key, text: option.label, selected: key === value })),
    );
    node.addEventListener("change", () => {
      node.blur();
      onChange(node.value);
    });
    return node;
  }

  function pager(page, pageSize, total, go) {
    const pages = Math.max(1, Math.ceil(total / pageSize));
    const previous = el("button", { type: "button", text: "‹ Newer", disabled: page <= 1 });
    const next = el("button", { type: "button", text: "Older ›", disabled: page >= pages });
    previous.addEventListener("click", () => go(page - 1));
    next.addEventListener("click", () => go(page + 1));
    return el("div", { class: "toolbar" }, previous, el("span", { class: "muted", text: `page ${page} of ${pages}` }), next);
  }

  function section(id, ...children) {
    return el("section", { id }, children);
  }

  // -- the overview: recent batches and success rates ----------------------------------------------

  const overview = {
    dagFilter: query.get("dags") in DAG_FILTERS ? query.get("dags") : "batches",
    period: query.get("period") in PERIODS ? query.get("period") : "day",
    page: 1,
    chartsAt: 0,
    charts: null,

    async refresh() {
      const filter = DAG_FILTERS[this.dagFilter];
      const listing = await api("batches", {
        dag_id: filter.dags,
        page: this.page,
        page_size: BATCH_PAGE_SIZE,
      });
      if (!this.charts || Date.now() - this.chartsAt >= CHART_REFRESH_MS) {
        const period = PERIODS[this.period];
        const from = new Date(Date.now() - period.hours * 3600e3).toISOString();
        const [timeline, statistics] = await Promise.all([
          api("statistics/timeline", { interval: period.interval, created_from: from }),
          api("statistics", { created_from: from }),
        ]);
        this.charts = { timeline, statistics };
        this.chartsAt = Date.now();
      }
      this.render(listing);
      return listing.items.some((batch) => batch.status === "RUNNING") ? RUNNING_REFRESH_MS : IDLE_REFRESH_MS;
    },

    render(listing) {
      document.title = "Batches · medins";
      setTitle("Batches");
      const rows = listing.items.map((batch) =>
        el(
          "tr",
          { "data-batch-id": batch.batch_id, "data-status": batch.status, "data-total": batch.total },
          el(
            "td",
            {},
            el("a", { class: "id", href: pageUrl({ batch: batch.batch_id }), text: batch.batch_id, "data-link": "batch" }),
            el("div", { class: "muted small", text: batch.dag_id || "" }),
          ),
          el("td", {}, stateBadge(batch.status)),
          el("td", { class: "muted", text: formatTime(batch.created_at) }),
          el("td", {}, progress(batch, false)),
          el("td", {}, counts(batch.counts)),
          el("td", {}, runLinks(batch)),
        ),
      );
      const table = el(
        "table",
        { id: "batches" },
        el("thead", {}, el("tr", {}, ["Batch", "State", "Created", "Progress", "Requests by state", "Airflow"].map((name) => el("th", { text: name })))),
        el("tbody", {}, rows),
      );
      const toolbar = el(
        "div",
        { class: "toolbar" },
        select(DAG_FILTERS, this.dagFilter, (value) => {
          this.dagFilter = value;
          this.page = 1;
          refreshNow();
        }, { "aria-label": "Which DAG runs" }),
        el("span", { class: "muted", text: `${formatNumber(listing.total)} batches` }),
      );

      const { timeline, statistics } = this.charts;
      const period = el(
        "div",
        { class: "toolbar" },
        select(PERIODS, this.period, (value) => {
          this.period = value;
          this.charts = null;
          refreshNow();
        }, { "aria-label": "Period" }),
      );
      const rate = successRate(statistics.by_status);
      const tiles = el(
        "div",
        { class: "tiles" },
        tile("requests", formatNumber(statistics.total), { "data-tile": "total" }),
        tile("success rate", rate === null ? "–" : formatRate(rate), { "data-tile": "success-rate" }),
        PROBLEMS.map((state) => tile(state, formatNumber(statistics.by_status[state] || 0), { "data-tile": state })),
      );

      replaceMain(
        section(
          "recent",
          el("h2", { text: "Recent batches" }),
          toolbar,
          rows.length ? table : el("p", { class: "empty", text: "No batches yet." }),
          listing.total > BATCH_PAGE_SIZE ? pager(this.page, BATCH_PAGE_SIZE, listing.total, (page) => {
            this.page = page;
            refreshNow();
          }) : null,
          legend(),
        ),
        section(
          "rates",
          el("h2", { text: "Success rate" }),
          period,
          tiles,
          el("h3", { text: `Over time (per ${timeline.interval}, by creation time)` }),
          timelineChart(timeline),
          el("div", { class: "grid" }, ratesTable("By interface", statistics.by_api_code, "api-code"), ratesTable("By institution", statistics.by_org_code, "org-code")),
        ),
      );
    },
  };

  // -- one batch ------------------------------------------------------------------------------------

  const detail = {
    batchId: query.get("batch"),
    problemStates: PROBLEMS,
    page: 1,

    async refresh() {
      const [batch, statistics, problems] = await Promise.all([
        api(`batches/${encodeURIComponent(this.batchId)}`),
        api("statistics", { batch_id: this.batchId }),
        api("tasks", {
          batch_id: this.batchId,
          status: this.problemStates,
          page: this.page,
          page_size: PROBLEM_PAGE_SIZE,
        }),
      ]);
      this.render(batch, statistics, problems);
      return batch.status === "RUNNING" ? RUNNING_REFRESH_MS : IDLE_REFRESH_MS;
    },

    render(batch, statistics, problems) {
      document.title = `${batch.batch_id} · Batches · medins`;
      setTitle(`Batch ${batch.batch_id}`);
      const rate = successRate(statistics.by_status);
      const facts = el(
        "div",
        { class: "toolbar" },
        stateBadge(batch.status),
        el("span", { class: "muted", text: batch.dag_id || "" }),
        el("span", { class: "muted", text: `created ${formatTime(batch.created_at)}` }),
        batch.finished_at ? el("span", { class: "muted", text: `finished ${formatTime(batch.finished_at)}` }) : null,
        runLinks(batch),
      );
      const registered = el(
        "div",
        { class: "tiles" },
        tile("requests", formatNumber(batch.total), { "data-tile": "total" }),
        tile("final", formatNumber(batch.current), { "data-tile": "current" }),
        tile("success rate", rate === null ? "–" : formatRate(rate), { "data-tile": "success-rate" }),
        batch.already_stored ? tile("already stored", formatNumber(batch.already_stored), { "data-tile": "already-stored" }) : null,
      );

      const states = el(
        "div",
        { class: "toolbar" },
        PROBLEMS.map((state) => {
          const box = el("input", { type: "checkbox", checked: this.problemStates.includes(state), value: state });
          box.addEventListener("change", () => {
            this.problemStates = PROBLEMS.filter((s) => (s === state ? box.checked : this.problemStates.includes(s)));
            this.page = 1;
            refreshNow();
          });
          return el("label", {}, box, ` ${state} (${formatNumber(batch.counts[state] || 0)})`);
        }),
      );
      const rows = problems.items.map((task) =>
        el(
          "tr",
          { "data-task-id": task.task_id, "data-status": task.status },
          el("td", { class: "id", text: task.task_id }),
          el("td", {}, stateBadge(task.status)),
          el("td", { class: "id code", text: task.api_code || "" }),
          el("td", { class: "id code", text: task.org_code || "" }),
          el("td", { class: "num", text: task.attempts }),
          el("td", { class: "reason", text: task.error || task.err_msg || "" }),
          el("td", { class: "request-data", text: describeRequest(task.request) }),
        ),
      );
      const table = el(
        "table",
        { id: "problems", "data-total": problems.total },
        el("thead", {}, el("tr", {}, ["Request", "State", "Interface", "Institution", "Tries", "Reason", "Request data (masked)"].map((name) => el("th", { text: name })))),
        el("tbody", {}, rows),
      );

      replaceMain(
        el("p", {}, el("a", { href: pageUrl({}), text: "← All batches", "data-link": "overview" })),
        section(
          "batch",
          facts,
          progress(batch, true),
          counts(batch.counts),
          registered,
          el("div", { class: "grid" }, ratesTable("Success rate by interface", statistics.by_api_code, "api-code"), ratesTable("Success rate by institution", statistics.by_org_code, "org-code")),
        ),
        section(
          "problems-section",
          el("h2", { text: `Failed, rejected and unknown requests (${formatNumber(problems.total)})` }),
          states,
          rows.length ? table : el("p", { class: "empty", text: "None." }),
          problems.total > PROBLEM_PAGE_SIZE ? pager(this.page, PROBLEM_PAGE_SIZE, problems.total, (page) => {
            this.page = page;
            refreshNow();
          }) : null,
        ),
      );
      const batchSection = document.getElementById("batch");
      batchSection.dataset.batchId = batch.batch_id;
      batchSection.dataset.status = batch.status;
    },
  };

  // The request as submitted, masked by the API: "api_code org_code  field=value ...".
  function describeRequest(request) {
    const data = request && typeof request.data === "object" && request.data !== null ? request.data : {};
    const fields = Object.entries(data).map(([name, value]) => `${name}=${typeof value === "object" ? JSON.stringify(value) : value}`);
    const extra = Object.keys(request || {}).filter((name) => !["api_code", "org_code", "data", "request_id"].includes(name));
    return [...fields, ...extra.map((name) => `${name}=${JSON.stringify(request[name])}`)].join("  ");
  }

  // -- refreshing -----------------------------------------------------------------------------------

  const view = detail.batchId ? detail : overview;
  let timer = null;
  let refreshes = 0;
  let running = false;

  function setTitle(text) {
    document.getElementById("title").textContent = text;
  }

  function replaceMain(...children) {
    const main = document.getElementById("main");
    const scroll = window.scrollY;
    main.replaceChildren(...children.filter(Boolean));
    window.scrollTo(0, scroll);
  }

  function showProblem(message, link) {
    const box = document.getElementById("problem");
    if (!message) {
      box.hidden = true;
      box.replaceChildren();
      return;
    }
    box.replaceChildren(message, link ? " " : "", link || "");
    box.hidden = false;
  }

  function refreshNow() {
    clearTimeout(timer);
    timer = setTimeout(cycle, 0);
  }

  async function cycle() {
    if (running) return;
    if (document.activeElement instanceof HTMLSelectElement) {
      // Redrawing would close a list someone has open: wait until they have chosen.
      clearTimeout(timer);
      timer = setTimeout(cycle, 1000);
      return;
    }
    running = true;
    let delay = IDLE_REFRESH_MS;
    try {
      delay = await view.refresh();
      showProblem(null);
    } catch (error) {
      delay = explain(error);
    } finally {
      running = false;
    }
    refreshes += 1;
    document.body.dataset.refreshes = String(refreshes);
    document.body.dataset.refreshedAt = new Date().toISOString();
    const status = document.getElementById("refresh");
    status.textContent = delay
      ? `Updated ${formatTime(document.body.dataset.refreshedAt)}, next in ${delay / 1000} s`
      : `Updated ${formatTime(document.body.dataset.refreshedAt)}`;
    clearTimeout(timer);
    if (delay && !document.hidden) timer = setTimeout(cycle, delay);
  }

  // Show why a refresh failed; return when to try again, or 0 to stop.
  function explain(error) {
    if (error instanceof ApiError && error.status === 401) {
      showProblem("Your Airflow session has ended.", airflowLink(airflowUrl(""), "Sign in again"));
      return 0;
    }
    if (error instanceof ApiError && error.status === 403) {
      showProblem(`Not allowed: ${error.message}`);
      return 0;
    }
    if (error instanceof ApiError && error.status === 404) {
      showProblem(error.message, el("a", { href: pageUrl({}), text: "All batches" }));
      return 0;
    }
    if (error instanceof ApiError && error.status === 503) {
      showProblem(`${error.message} Trying again.`);
      return RUNNING_REFRESH_MS * 3;
    }
    showProblem(`Could not load the page's data: ${error.message}`);
    return IDLE_REFRESH_MS;
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refreshNow();
  });
  cycle();
})();
