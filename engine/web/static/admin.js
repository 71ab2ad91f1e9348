// The dashboard: the overview's channel and period menus apply at once.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  var filters = document.getElementById("filters");
  if (!filters) return;
  filters.querySelectorAll("select").forEach(function (menu) {
    menu.addEventListener("change", function () { filters.submit(); });
  });
})();
