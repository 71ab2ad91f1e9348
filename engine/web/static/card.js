// The customer's card: copy buttons, redeem forms sent once, and (in the
// WooCommerce iframe) telling the shop's page how tall the card is.
(function () {
  "use strict";

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () { return fallbackCopy(text); });
    }
    return fallbackCopy(text);
  }

  function fallbackCopy(text) {
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed";
      area.style.top = "-1000px";
      document.body.appendChild(area);
      area.select();
      var done = false;
      try { done = document.execCommand("copy"); } catch (e) { done = false; }
      document.body.removeChild(area);
      if (done) { resolve(); } else { reject(new Error("copy refused")); }
    });
  }

  function selectTarget(target) {
    if (target.select) { target.focus(); target.select(); return; }
    var range = document.createRange();
    range.selectNodeContents(target);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("[data-copy]") : null;
    if (!button) { return; }
    var target = document.querySelector(button.getAttribute("data-copy"));
    if (!target) { return; }
    var text = (target.value !== undefined ? target.value : target.textContent).trim();
    var label = button.getAttribute("data-label") || button.textContent;
    button.setAttribute("data-label", label);
    copyText(text).then(function () {
      button.textContent = button.getAttribute("data-copied") || label;
      button.classList.add("rg-done");
    }, function () {
      selectTarget(target);
      button.textContent = button.getAttribute("data-failed") || label;
    }).then(function () {
      window.setTimeout(function () {
        button.textContent = label;
        button.classList.remove("rg-done");
      }, 2500);
    });
  });

  // A redeem form goes once: a double click or a second tap does nothing (the
  // server would answer with the same reward anyway: the form's token is the
  // redemption's idempotency key).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute("data-once")) { return; }
    if (form.getAttribute("data-sent")) { event.preventDefault(); return; }
    form.setAttribute("data-sent", "1");
    var buttons = form.querySelectorAll("button[type=submit]");
    window.setTimeout(function () {
      for (var i = 0; i < buttons.length; i++) { buttons[i].disabled = true; }
    }, 0);
  }, true);

  // Bring the message after a redemption into view.
  var notice = document.getElementById("rg-notice");
  if (notice) { notice.focus(); }

  // In the WooCommerce iframe: tell the shop's page (and only it) our height.
  var card = document.querySelector(".rg-card[data-parent-origin]");
  if (card && window.parent !== window) {
    var origin = card.getAttribute("data-parent-origin");
    var last = 0;
    var tell = function () {
      var height = Math.ceil(document.documentElement.scrollHeight);
      if (height !== last) {
        last = height;
        window.parent.postMessage({ type: "regulars:height", height: height }, origin);
      }
    };
    tell();
    window.addEventListener("load", tell);
    if (window.ResizeObserver) { new ResizeObserver(tell).observe(document.body); }
  }
})();
