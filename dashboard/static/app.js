// The dashboard's only script (served from the package; the CSP allows no other).
// - forms with data-confirm ask first;
// - a <main data-refresh="N"> reloads its content every N seconds while the tab is visible.
"use strict";

document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

function refreshEvery(main, seconds) {
  setInterval(async () => {
    if (document.hidden) return;
    const response = await fetch(window.location.href, { credentials: "same-origin" });
    if (!response.ok) return;
    // The server escaped everything it rendered; this only swaps its markup in.
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("main");
    if (fresh) main.replaceChildren(...fresh.childNodes);
  }, seconds * 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  const main = document.getElementById("main");
  const seconds = Number(main && main.dataset.refresh);
  if (seconds > 0) refreshEvery(main, seconds);
  document.documentElement.dataset.js = "ready";
});
