// Live job page: the server sends the page's live part (rendered HTML) whenever the job
// changes (server-sent events, /jobs/<id>/events); it replaces the part, without a reload.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !live.dataset.events || !window.EventSource) { return; }
  var source = new EventSource(live.dataset.events);
  source.addEventListener("update", function (event) {
    var data = JSON.parse(event.data);
    live.innerHTML = data.html;
    live.dataset.updates = String(Number(live.dataset.updates || "0") + 1);
    live.dataset.state = data.state;
  });
  source.addEventListener("end", function () {
    source.close();
    live.dataset.ended = "1";
  });
}());
