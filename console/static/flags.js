// Live Flags page: asks /flags/feed for flags newer than the last one shown and adds them on top.
// Every value is set with textContent (never innerHTML): a flag's fields are shown as text, whatever they hold.
(function () {
  "use strict";
  var table = document.getElementById("flags");
  if (!table || !table.dataset.feed) { return; }
  var tbody = table.tBodies[0];
  var status = document.getElementById("live-status");
  var last = table.dataset.last;
  var product = table.dataset.product;
  var pollMs = parseInt(table.dataset.pollMs, 10) || 2000;
  var maxRows = 500;

  function cell(row, text, className) {
    var td = document.createElement("td");
    if (className) { td.className = className; }
    td.textContent = text == null ? "" : String(text);
    row.appendChild(td);
    return td;
  }

  function link(td, href, text) {
    td.textContent = "";
    var a = document.createElement("a");
    a.setAttribute("href", href);
    a.textContent = text;
    td.appendChild(a);
  }

  // "2026-12-01T07:31:05.429954+00:00" -> "2026-12-01 07:31:05" (UTC); anything else is shown as it is.
  function when(text) {
    var moment = new Date(text);
    if (typeof text !== "string" || !/[+-]\d\d:\d\d$|Z$/.test(text) || isNaN(moment.getTime())) { return text; }
    return moment.toISOString().slice(0, 19).replace("T", " ");
  }

  function addFlag(flag) {
    var row = document.createElement("tr");
    row.className = "new";
    cell(row, when(flag.flagged_at), "when");
    var bid = cell(row, "");
    if (typeof flag.bid_id === "number") { link(bid, "/bids/" + encodeURIComponent(flag.bid_id), "#" + flag.bid_id); }
    var prod = cell(row, "");
    if (typeof flag.product_id === "number") {
      link(prod, "/bids?product=" + encodeURIComponent(flag.product_id), String(flag.product_id));
      var aside = document.createElement("a");
      aside.className = "aside";
      aside.setAttribute("href", "/flags?product=" + encodeURIComponent(flag.product_id));
      aside.textContent = "flags";
      prod.appendChild(document.createTextNode(" "));
      prod.appendChild(aside);
    }
    cell(row, flag.current_cpc, "num");
    cell(row, flag.adjusted_cpc, "num");
    cell(row, flag.deviation, "num");
    cell(row, flag.deviation_pct, "num");
    cell(row, when(flag.calculated_at), "when");
    cell(row, flag.request_id, "mono");
    tbody.insertBefore(row, tbody.firstChild);
    while (tbody.rows.length > maxRows) { tbody.deleteRow(tbody.rows.length - 1); }
  }

  function say(text, stale) {
    if (!status) { return; }
    status.textContent = text;
    status.className = stale ? "live stale" : "live";
  }

  function poll() {
    var url = table.dataset.feed + "?after=" + encodeURIComponent(last) + (product ? "&product=" + encodeURIComponent(product) : "");
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (response) {
        return response.json().then(function (body) { return { status: response.status, body: body }; });
      })
      .then(function (result) {
        if (result.status === 401) { say("Your session has ended: reload the page to log in again.", true); return; }
        if (result.status !== 200) {
          say("Live updates paused: " + ((result.body.errors || ["error"]).join("; ")) + " (retrying)", true);
        } else {
          result.body.flags.forEach(addFlag);
          last = result.body.last;
          say("Live: updated " + new Date().toISOString().slice(11, 19) + " UTC.", false);
        }
        window.setTimeout(poll, pollMs);
      })
      .catch(function () {
        say("Live updates paused: the console did not answer (retrying).", true);
        window.setTimeout(poll, pollMs);
      });
  }

  window.setTimeout(poll, pollMs);
}());
