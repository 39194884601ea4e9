// The dashboard's behaviour: charts drawn with Chart.js from the JSON the page carries, plot panels fetched
// after the page has loaded, and a running study's table, curves and timeline refreshed without a reload.
"use strict";

const BEST = "#d62728";
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

function readJson(id) {
  const node = document.getElementById(id);
  return node ? JSON.parse(node.textContent) : null;
}

function lineOptions(yTitle) {
  return {
    responsive: true, maintainAspectRatio: false, animation: false, parsing: false, normalized: true,
    interaction: { mode: "nearest", intersect: false },
    scales: { x: { type: "linear", title: { display: true, text: "epoch" }, ticks: { precision: 0 } },
              y: { title: { display: true, text: yTitle } } },
    plugins: { legend: { position: "right", labels: { boxWidth: 12, font: { size: 11 } } } },
  };
}

function points(xs, ys) {
  return xs.map((x, i) => ({ x: x, y: ys[i] })).filter((p) => p.y !== null && p.y !== undefined);
}

function trialDatasets(curves, column) {
  return curves.trials.map((t, i) => ({
    label: t.label,
    data: points(t.epochs, t[column]),
    borderColor: t.best ? BEST : COLORS[i % COLORS.length],
    backgroundColor: t.best ? BEST : COLORS[i % COLORS.length],
    borderWidth: t.best ? 3 : 1.2,
    borderDash: t.status === "completed" ? [] : [5, 4],
    pointRadius: t.best ? 3 : 2,
    order: t.best ? 0 : 1,
  }));
}

const charts = {};

function drawChart(id, datasets, yTitle) {
  const canvas = document.getElementById(id);
  if (!canvas || typeof Chart === "undefined") return;
  if (charts[id]) {
    charts[id].data.datasets = datasets;
    charts[id].update("none");
    return;
  }
  charts[id] = new Chart(canvas, { type: "line", data: { datasets: datasets }, options: lineOptions(yTitle) });
}

function drawStudyCurves(curves) {
  if (!curves) return;
  drawChart("chart-metric", trialDatasets(curves, "metric"), curves.metric);
  drawChart("chart-loss", trialDatasets(curves, "val_loss"), "val loss");
}

function drawRunCurves(curves) {
  if (!curves) return;
  drawChart("chart-run-loss", [
    { label: "train loss", data: points(curves.epochs, curves.train_loss), borderColor: COLORS[0], backgroundColor: COLORS[0] },
    { label: "val loss", data: points(curves.epochs, curves.val_loss), borderColor: COLORS[1], backgroundColor: COLORS[1] },
  ], "loss");
  const names = Object.keys(curves.metrics);
  if (names.length) {
    drawChart("chart-run-metric", names.map((name, i) => ({
      label: name, data: points(curves.epochs, curves.metrics[name]),
      borderColor: COLORS[(i + 2) % COLORS.length], backgroundColor: COLORS[(i + 2) % COLORS.length],
    })), "validation");
  }
}

async function loadPanel(panel) {
  try {
    const response = await fetch(panel.dataset.panelUrl, { credentials: "same-origin" });
    panel.innerHTML = await response.text();
  } catch (error) {
    panel.innerHTML = "<p class=\"note\">Could not draw this part: " + String(error).replace(/[<>&]/g, "") + "</p>";
  }
}

function loadPanels() {
  document.querySelectorAll(".panel[data-panel-url]").forEach(loadPanel);
}

function showState(state) {
  const live = document.getElementById("live-state");
  live.textContent = state.status + " · " + state.trials + " trials, " + state.completed + " completed";
  live.className = "live " + state.status.split(" ")[0];
}

// A running study: ask for news every few seconds; redraw what changed; stop once it has ended.
function followStudy(root) {
  const every = Number(root.dataset.refreshMs) || 2000;
  let last = null;
  let etag = null;  // the version of the study this page shows: the server answers 304 while it is current
  showState({ status: root.dataset.status, trials: document.querySelectorAll("#trials tr.trial").length,
              completed: document.querySelectorAll("#trials .status-completed").length });
  async function poll() {
    let news;
    try {
      const headers = etag ? { "If-None-Match": etag } : {};
      const response = await fetch(root.dataset.liveUrl, { credentials: "same-origin", cache: "no-store", headers });
      if (response.status === 304) {
        setTimeout(poll, every);
        return;
      }
      if (!response.ok) throw new Error(response.status);
      etag = response.headers.get("ETag");
      news = await response.json();
    } catch (error) {
      setTimeout(poll, every * 2);
      return;
    }
    const fingerprint = JSON.stringify([news.state, news.trials.length, news.curves.trials.map((t) => t.epochs.length)]);
    if (fingerprint !== last) {
      last = fingerprint;
      document.getElementById("study-header").innerHTML = news.header;
      document.getElementById("study-trials").innerHTML = news.trials;
      document.getElementById("study-timeline").innerHTML = news.timeline;
      drawStudyCurves(news.curves);
      showState(news.state);
      if (!news.state.status.startsWith("running")) loadPanels();  // the final plots, once
    }
    if (news.state.status.startsWith("running")) setTimeout(poll, every);
  }
  if (root.dataset.status.startsWith("running")) setTimeout(poll, every);
}

document.addEventListener("DOMContentLoaded", () => {
  drawStudyCurves(readJson("curves-data"));
  drawRunCurves(readJson("run-curves-data"));
  loadPanels();
  const study = document.getElementById("study");
  if (study) followStudy(study);
});
