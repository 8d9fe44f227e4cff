// Flywheel review: keyboard shortcuts for every action, lease renewal while an item is open, and the
// countdowns of the lease and of the undo window. Every action is a plain form, so the pages also work
// without this script.
"use strict";

(function () {
  function typing(el) {
    return el && (el.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(el.tagName));
  }

  function visible(el) {
    return !el.closest("[hidden]") && el.getClientRects().length > 0;
  }

  function shortcut(key) {
    const candidates = document.querySelectorAll("[data-key]");
    for (const el of candidates) {
      if (el.dataset.key === key && visible(el) && !el.disabled) return el;
    }
    return null;
  }

  document.addEventListener("submit", function (event) {
    // One submission per action form: a key held down (or a double click) must not decide twice. (Not for
    // GET forms such as the export, which stay on the page; and no disabling of the buttons here, which
    // would drop the clicked button's name and value from what the form sends.)
    const form = event.target;
    if (form.method.toLowerCase() !== "post") return;
    if (form.dataset.sent) { event.preventDefault(); return; }
    form.dataset.sent = "1";
  });

  document.addEventListener("keydown", function (event) {
    const target = event.target;
    if (typing(target)) {
      if (event.key === "Escape") { target.blur(); event.preventDefault(); return; }
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && target.form) {
        event.preventDefault();
        target.form.requestSubmit();
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const el = shortcut(event.key);
    if (!el) return;
    event.preventDefault();
    if (el.hasAttribute("data-focus")) {
      el.focus();
      if (el.setSelectionRange && typeof el.value === "string") el.setSelectionRange(el.value.length, el.value.length);
    } else if (el.dataset.toggle) {
      const panel = document.querySelector(el.dataset.toggle);
      if (panel) panel.hidden = !panel.hidden;
    } else {
      el.click();
    }
  });

  // Countdowns: data-seconds-left is measured by the server, so the browser's clock does not matter.
  const started = performance.now();
  const countdowns = Array.from(document.querySelectorAll("[data-seconds-left]"));
  function tick() {
    for (const el of countdowns) {
      if (el.dataset.expired) continue;
      const left = Math.max(0, parseFloat(el.dataset.secondsLeft) - (performance.now() - started) / 1000);
      const out = el.querySelector(".countdown");
      if (out) out.textContent = String(Math.ceil(left));
      if (left <= 0) {
        el.dataset.expired = "1";
        const how = el.dataset.expire || "";
        if (how === "hide") el.hidden = true;
        else if (how.startsWith("text:")) el.textContent = how.slice(5);
        for (const k of el.querySelectorAll("[data-key]")) k.removeAttribute("data-key");
      }
    }
  }
  if (countdowns.length) { tick(); setInterval(tick, 250); }

  // Keep the lease while the item is open (a closed tab lets it expire: the item returns to the queue).
  const item = document.querySelector("[data-renew-url]");
  if (item) {
    const every = Math.max(5, parseFloat(item.dataset.renewSeconds || "60")) * 1000;
    setInterval(async function () {
      if (document.hidden) return;
      try {
        const response = await fetch(item.dataset.renewUrl, {
          method: "POST", credentials: "same-origin", headers: {"X-CSRF-Token": item.dataset.csrf}});
        if (response.ok) {
          const body = await response.json();
          const lease = document.querySelector(".lease");
          if (lease && body.lease_seconds_left) {
            lease.dataset.secondsLeft = String(body.lease_seconds_left + (performance.now() - started) / 1000);
          }
        }
      } catch (e) { /* the next tick tries again */ }
    }, every);
  }
})();
