/* What the chart scripts (ledger.js, router-status.js, usage.js) share; loaded before them, deferred as they are. */
(() => {
  "use strict";

  // The figures a page gives its chart as a json_script element; null when it is missing or not JSON.
  function readJson(id) {
    const source = document.getElementById(id);
    if (source === null) return null;
    try {
      return JSON.parse(source.textContent);
    } catch {
      return null;
    }
  }

  function dayLabel(iso) {
    // A calendar date, not an instant: read it as local midnight so no time zone moves it.
    const [year, month, day] = iso.split("-").map(Number);
    return new Date(year, month - 1, day).toLocaleDateString([], { month: "short", day: "numeric" });
  }

  window.TimmyCharts = { readJson, dayLabel };
})();
