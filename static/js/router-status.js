/* The request charts of /router/status (templates/providers/_status.html), drawn with the vendored Chart.js.

   The figures come from the json_script #router-chart-data, read again after every htmx refresh of the status
   region. Each canvas carries hx-preserve, so it survives the refresh and its chart is updated in place instead
   of being drawn anew; a provider that appears gets a new chart. */
(() => {
  "use strict";

  const SUCCESS_COLOUR = "#137a3c"; // --ok in timmy.css
  const FAILURE_COLOUR = "#b42318"; // --bad

  function clock(date) {
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  const readData = () => window.TimmyCharts.readJson("router-chart-data");

  function create(canvas, labels, ranges, series) {
    return new Chart(canvas, {
      type: "bar",
      data: {
        labels,
        datasets: [
          { label: "succeeded", data: series.successes, backgroundColor: SUCCESS_COLOUR, stack: "requests" },
          { label: "failed", data: series.failures, backgroundColor: FAILURE_COLOUR, stack: "requests" },
        ],
      },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        scales: {
          x: { stacked: true, ticks: { maxTicksLimit: 6, maxRotation: 0 } },
          y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } },
        },
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 12 } },
          tooltip: { callbacks: { title: (items) => (items.length ? ranges[items[0].dataIndex] : "") } },
        },
      },
    });
  }

  function render() {
    if (typeof Chart === "undefined") return;
    const data = readData();
    if (data === null) return;
    const starts = data.labels.map((iso) => new Date(iso));
    const labels = starts.map(clock);
    const ranges = starts.map((start) => `${clock(start)}–${clock(new Date(start.getTime() + data.bucket_seconds * 1000))}`);
    for (const canvas of document.querySelectorAll("canvas[data-provider]")) {
      const series = data.providers[canvas.dataset.provider];
      if (series === undefined) continue;
      const chart = Chart.getChart(canvas);
      if (chart === undefined) {
        create(canvas, labels, ranges, series);
        continue;
      }
      chart.data.labels = labels;
      chart.data.datasets[0].data = series.successes;
      chart.data.datasets[1].data = series.failures;
      chart.options.plugins.tooltip.callbacks.title = (items) => (items.length ? ranges[items[0].dataIndex] : "");
      chart.update("none");
    }
  }

  document.addEventListener("DOMContentLoaded", render);
  document.addEventListener("htmx:afterSettle", render);
})();
