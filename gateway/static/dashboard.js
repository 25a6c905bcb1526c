// The dashboard: polls GET /v1/dashboard once a second and draws what it says.
// No framework and no build step. Every value from the server goes in with textContent,
// never as HTML: job errors and usernames come from people.
"use strict";

const POLL_MS = 1000;
const TOKEN_KEY = "fedcluster-token";
const USER_KEY = "fedcluster-user";
const COUNTERS = [  // [counter, label, unit]
  ["rounds", "rounds", ""], ["tasks", "tasks", ""], ["retries", "retries", ""],
  ["failures", "failures", ""], ["declined", "rejections", ""], ["stragglers", "stragglers", ""],
  ["rounds_failed", "rounds failed", ""], ["nodes_alive", "nodes alive", ""],
];
const COLOURS = ["#2f5fd0", "#d0682f", "#1a7f37", "#9b2fd0", "#c0262d", "#0f8b8d", "#7a5c00", "#d02f8b"];

const $ = (id) => document.getElementById(id);
let chart = null;
let leaderboardChoice = null;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function cell(text, numeric) { return el("td", text, numeric ? "num" : ""); }

function percent(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(2) + " %"; }
function seconds(x) {
  if (x === null || x === undefined) return "–";
  return x < 10 ? x.toFixed(2) + " s" : x < 600 ? x.toFixed(1) + " s" : (x / 60).toFixed(1) + " min";
}
function clock(iso) { return iso ? new Date(iso).toLocaleTimeString([], {hour12: false}) : ""; }

function replaceRows(tbody, rows) { tbody.replaceChildren(...rows); }

function renderNodes(cluster) {
  const rows = cluster.nodes.map((n) => {
    const state = n.alive ? "alive" : "dead";
    const tr = el("tr", null, state);
    tr.dataset.node = n.address;
    tr.append(cell(n.address), el("td", state, "state state-" + state),
      cell((100 * n.load_probability).toFixed(0) + " %", true), cell(n.tasks_in_flight, true),
      cell(n.tasks_done, true), cell(n.failures, true),
      cell(n.last_seen_s_ago === null ? "never" : seconds(n.last_seen_s_ago) + " ago", true));
    return tr;
  });
  replaceRows($("nodes").tBodies[0], rows);
  const alive = cluster.nodes.filter((n) => n.alive).length;
  $("nodes-summary").textContent = `${alive} alive, ${cluster.nodes.length - alive} dead`;
  $("cluster-error").hidden = !cluster.error;
  $("cluster-error").textContent = cluster.error || "";
}

function renderCounters(cluster) {
  $("coordinator").textContent = cluster.coordinator
    ? `${cluster.coordinator} · policy ${cluster.policy}` : "unreachable";
  const items = COUNTERS.map(([key, label, unit]) => {
    const box = el("div");
    box.dataset.counter = key;
    box.append(el("dt", label), el("dd", (cluster.counters[key] || 0) + unit));
    return box;
  });
  $("counters").replaceChildren(...items);
}

function jobRow(job) {
  const tr = el("tr", null, job.state);
  tr.dataset.job = job.id;
  tr.dataset.points = job.rounds.length;
  const last = job.rounds.length ? job.rounds[job.rounds.length - 1] : null;
  tr.append(cell(job.id, true), cell(job.user), cell(job.dataset),
    el("td", job.state + (job.cancel_requested && job.state === "running" ? " (stopping)" : ""),
      "state state-" + job.state),
    cell(`${job.rounds.length}/${job.settings.rounds}`, true),
    cell(percent(job.final_validation_error ?? (last && last.validation_error)), true),
    cell(seconds(job.timing.train_s), true));
  if (job.error) tr.title = job.error;
  return tr;
}

function renderJobs(jobs) {
  const shown = [...jobs.running, ...jobs.queued, ...jobs.recent];
  replaceRows($("jobs").tBodies[0], shown.map(jobRow));
  const c = jobs.counts;
  $("jobs-summary").textContent =
    `${c.running} running, ${c.queued} queued, ${c.done} done, ${c.failed} failed, ${c.cancelled} cancelled`;
}

function renderCurves(jobs) {
  const withRounds = [...jobs.running, ...jobs.recent].filter((j) => j.rounds.length);
  const datasets = withRounds.map((job) => ({
    label: `job ${job.id} (${job.user})`,
    jobId: job.id,
    data: job.rounds.map((r) => ({x: r.round, y: 100 * r.validation_error})),
    borderColor: COLOURS[job.id % COLOURS.length],
    backgroundColor: COLOURS[job.id % COLOURS.length],
    borderDash: job.state === "running" ? [] : [4, 3],
    pointRadius: 2, tension: 0,
  }));
  if (typeof Chart === "undefined") return;  // the library failed to load: tables still work
  if (!chart) {
    chart = new Chart($("curves"), {
      type: "line", data: {datasets},
      options: {
        animation: false, maintainAspectRatio: false, parsing: true,
        scales: {
          x: {type: "linear", title: {display: true, text: "round"}, ticks: {precision: 0}},
          y: {title: {display: true, text: "validation error (%)"}, suggestedMin: 0},
        },
        plugins: {legend: {position: "bottom"}},
      },
    });
  } else {
    chart.data.datasets = datasets;
    chart.update("none");
  }
}

function renderLeaderboard(boards) {
  const select = $("leaderboard-dataset");
  const names = Object.keys(boards);
  if (leaderboardChoice === null || !names.includes(leaderboardChoice)) {
    leaderboardChoice = names.includes("letters") ? "letters" : (names[0] || null);
  }
  if ([...select.options].map((o) => o.value).join() !== names.join()) {
    select.replaceChildren(...names.map((n) => { const o = el("option", n); o.value = n; return o; }));
  }
  select.value = leaderboardChoice || "";
  const entries = leaderboardChoice ? boards[leaderboardChoice] : [];
  replaceRows($("leaderboard").tBodies[0], entries.map((e) => {
    const tr = el("tr");
    tr.dataset.job = e.job;
    tr.append(cell(e.rank, true), cell(e.job, true), cell(e.user), cell(percent(e.validation_error), true),
      cell(e.rounds, true), cell(seconds(e.train_s), true), cell(seconds(e.time_to_target_s), true));
    return tr;
  }));
}

function renderEvents(events) {
  const bad = /dead|failed|lost|retried|removed/;
  $("events").replaceChildren(...events.map((e) => {
    const li = el("li", null, bad.test(e.kind) ? "bad" : "");
    li.dataset.kind = e.kind;
    const when = el("time", clock(e.at));
    when.dateTime = e.at;
    li.append(when, el("span", e.kind.replaceAll("_", " "), "kind"), el("span", e.message, "message"));
    if (e.cause) li.append(el("span", e.cause, "cause"));
    return li;
  }));
}

function render(view) {
  renderNodes(view.cluster);
  renderCounters(view.cluster);
  renderJobs(view.jobs);
  renderCurves(view.jobs);
  renderLeaderboard(view.leaderboards);
  renderEvents(view.events);
}

function setConnection(text, state) {
  const pill = $("connection");
  pill.textContent = text;
  pill.className = "pill " + (state || "");
}

function showLogin(message) {
  $("board").hidden = true;
  $("who").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

async function poll() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? {Authorization: "Bearer " + token} : {};
  try {
    const answer = await fetch("/v1/dashboard", {headers, cache: "no-store",
                                                  signal: AbortSignal.timeout(5000)});
    if (answer.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      setConnection("logged out", "");
      showLogin(token ? "Your session has expired: log in again." : "");
      return;  // polling starts again after a login
    }
    if (!answer.ok) {
      setConnection(`gateway answered ${answer.status}: retrying`, "down");
    } else {
      const view = await answer.json();
      $("login").hidden = true;
      $("board").hidden = false;
      $("who").hidden = view.public && !token;
      $("username").textContent = sessionStorage.getItem(USER_KEY) || "";
      render(view);
      setConnection(`live · ${clock(view.generated_at)}`, "live");
    }
  } catch (err) {
    setConnection("gateway unreachable: retrying", "down");
  }
  setTimeout(poll, POLL_MS);
}

async function logIn(event) {
  event.preventDefault();
  const username = $("login-username").value;
  const password = $("login-password").value;
  try {
    const answer = await fetch("/v1/tokens", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({username, password}), signal: AbortSignal.timeout(15000),
    });
    const body = await answer.json().catch(() => ({}));
    if (!answer.ok) {
      $("login-error").textContent = body.detail || `the gateway answered ${answer.status}`;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, body.token);
    sessionStorage.setItem(USER_KEY, username);
    $("login-password").value = "";
    $("login-error").textContent = "";
    poll();
  } catch (err) {
    $("login-error").textContent = "the gateway cannot be reached: try again";
  }
}

function logOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(USER_KEY);
  showLogin("");
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", logIn);
  $("logout").addEventListener("click", logOut);
  $("leaderboard-dataset").addEventListener("change", (e) => { leaderboardChoice = e.target.value; });
  poll();
});
