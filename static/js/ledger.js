/* The daily chart of /lightning/ledger (templates/ledger/_chart.html), drawn with the vendored Chart.js.

   The figures come from the json_script #ledger-chart-data. A simulated payment swaps that data in out of band
   (the canvas itself stays), so after every htmx swap the chart is updated in place instead of drawn anew. */
(() => {
  "use strict";

  const INCOMING_COLOUR = "#137a3c"; // --ok in timmy.css
  const OUTGOING_COLOUR = "#b42318"; // --bad

  const readData = () => window.TimmyCharts.readJson("ledger-chart-data");

  const { dayLabel } = window.TimmyCharts;

  function render() {
    if (typeof Chart === "undefined") return;
    const canvas = document.getElementById("ledger-chart-canvas");
    const data = readData();
    if (canvas === null || data === null) return;
    const labels = data.labels.map(dayLabel);
    const chart = Chart.getChart(canvas);
    if (chart !== undefined) {
      chart.data.labels = labels;
      chart.data.datasets[0].data = data.incoming;
      chart.data.datasets[1].data = data.outgoing;
      chart.update("none");
      return;
    }
    new Chart(canvas, {
      type: "bar",
      data: {
        labels,
        datasets: [
          { label: "in (sats)", data: data.incoming, backgroundColor: INCOMING_COLOUR },
          { label: "out (sats)", data: data.outgoing, backgroundColor: OUTGOING_COLOUR },
        ],
      },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        scales: {
          x: { ticks: { maxTicksLimit: 8, maxRotation: 0 } },
          y: { beginAtZero: true, ticks: { precision: 0 } },
        },
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
      },
    });
  }

  document.addEventListener("DOMContentLoaded", render);
  document.addEventListener("htmx:afterSettle", render);
})();
