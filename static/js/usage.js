/* The charts of /router/usage (templates/providers/usage.html), drawn with the vendored Chart.js.

   The figures come from the json_script #usage-chart-data: tokens per day stacked by provider (one stack for the
   tokens in, one for the tokens out), and latency percentiles per day as lines. */
(() => {
  "use strict";

  // Distinct, colour-blind-safe hues (Okabe-Ito), one per provider in name order.
  const PALETTE = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000"];

  const readData = () => window.TimmyCharts.readJson("usage-chart-data");

  const { dayLabel } = window.TimmyCharts;

  function tokensChart(canvas, labels, data) {
    const datasets = [];
    Object.entries(data.tokens).forEach(([provider, series], index) => {
      const colour = PALETTE[index % PALETTE.length];
      datasets.push({ label: `${provider} in`, data: series.in, backgroundColor: colour, stack: "in" });
      datasets.push({ label: `${provider} out`, data: series.out, backgroundColor: `${colour}99`, stack: "out" });
    });
    new Chart(canvas, {
      type: "bar",
      data: { labels, datasets },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        scales: {
          x: { stacked: true, ticks: { maxTicksLimit: 10, maxRotation: 0 } },
          y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } },
        },
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
      },
    });
  }

  function latencyChart(canvas, labels, data) {
    const line = (label, values, colour, dash) => ({
      label,
      data: values,
      borderColor: colour,
      backgroundColor: colour,
      borderDash: dash,
      spanGaps: true,
      tension: 0,
    });
    new Chart(canvas, {
      type: "line",
      data: {
        labels,
        datasets: [
          line("latency p50 (ms)", data.latency_p50, PALETTE[0], []),
          line("latency p95 (ms)", data.latency_p95, PALETTE[5], []),
          line("first token p50 (ms)", data.ttft_p50, PALETTE[0], [4, 4]),
          line("first token p95 (ms)", data.ttft_p95, PALETTE[5], [4, 4]),
        ],
      },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        scales: {
          x: { ticks: { maxTicksLimit: 10, maxRotation: 0 } },
          y: { beginAtZero: true, ticks: { precision: 0 } },
        },
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
      },
    });
  }

  function render() {
    if (typeof Chart === "undefined") return;
    const data = readData();
    if (data === null) return;
    const labels = data.days.map(dayLabel);
    const tokens = document.getElementById("usage-tokens-chart");
    const latency = document.getElementById("usage-latency-chart");
    if (tokens !== null && Chart.getChart(tokens) === undefined) tokensChart(tokens, labels, data);
    if (latency !== null && Chart.getChart(latency) === undefined) latencyChart(latency, labels, data);
  }

  document.addEventListener("DOMContentLoaded", render);
})();
