// Live updates on top of pages that work without script: a region marked data-live="<s>" is
// fetched again every <s> seconds and replaced, until the server sends it without data-live
// (e.g. a receipt that is done). The person can pause and resume (WCAG 2.2.2). Its requests
// say they are live updates (X-Custodian-Live), so what lies outside the region is not
// fetched again.
(function () {
  "use strict";
  var region = document.getElementById("live");
  var toggle = document.getElementById("live-toggle");
  if (!region || !region.hasAttribute("data-live") || !toggle) return;
  var seconds = Math.max(2, parseInt(region.getAttribute("data-live"), 10) || 5);
  var paused = false;
  var timer = null;
  toggle.hidden = false;
  function label() {
    toggle.textContent = paused ? toggle.getAttribute("data-resume") : toggle.getAttribute("data-pause");
    toggle.setAttribute("aria-pressed", paused ? "true" : "false");
  }
  function schedule() {
    clearTimeout(timer);
    if (!paused) timer = setTimeout(update, seconds * 1000);
  }
  function update() {
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html", "X-Custodian-Live": "1" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var next = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        if (!next) return;
        // Unchanged, it is left as it is: the keyboard's focus and a screen reader's place
        // in it stay where they were.
        if (next.innerHTML !== region.innerHTML) region.innerHTML = next.innerHTML;
        if (next.hasAttribute("data-live")) {
          schedule();
        } else {
          region.removeAttribute("data-live");
          toggle.hidden = true;
        }
      })
      .catch(function () { schedule(); });
  }
  toggle.addEventListener("click", function () {
    paused = !paused;
    label();
    schedule();
  });
  label();
  schedule();
})();
