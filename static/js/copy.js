/* Copy buttons: `<button type="button" class="copy-button" data-copy="TEXT" data-copy-source="ID">` puts TEXT on
   the clipboard. Where the browser gives no clipboard (an address that is not a secure context, a refused
   permission), the element ID is shown in full and selected instead, for Ctrl+C.

   One listener on the document, so buttons that htmx swaps in later work too. */
(() => {
  "use strict";

  const FEEDBACK_MS = 2000;
  const labels = new WeakMap(); // button -> its own label, while it shows feedback

  // One polite live region for the page: a screen reader hears what happened to the copy.
  function announce(message) {
    let region = document.getElementById("copy-status");
    if (region === null) {
      region = document.createElement("span");
      region.id = "copy-status";
      region.className = "visually-hidden";
      region.setAttribute("role", "status");
      document.body.append(region);
    }
    region.textContent = message;
  }

  function feedback(button, message) {
    if (!labels.has(button)) labels.set(button, button.textContent);
    button.textContent = message;
    button.dataset.copied = "true";
    announce(message);
    window.clearTimeout(Number(button.dataset.copyTimer || 0));
    button.dataset.copyTimer = String(
      window.setTimeout(() => {
        button.textContent = labels.get(button);
        labels.delete(button);
        delete button.dataset.copied;
      }, FEEDBACK_MS),
    );
  }

  function selectSource(button, text) {
    const source = document.getElementById(button.dataset.copySource || "");
    if (source === null) return false;
    // A shortened hash shows its whole value before it is selected.
    if (source.textContent !== text) source.textContent = text;
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    return true;
  }

  async function copy(button) {
    const text = button.dataset.copy || "";
    if (!text) return;
    try {
      if (!navigator.clipboard) throw new Error("no clipboard");
      await navigator.clipboard.writeText(text);
      feedback(button, "Copied");
    } catch (error) {
      feedback(button, selectSource(button, text) ? "Selected: press Ctrl+C" : "Cannot copy here");
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target instanceof Element ? event.target.closest("button.copy-button[data-copy]") : null;
    if (button !== null) copy(button);
  });
})();
