// The console's own script: draws each timeline chart from the Vega-Lite specification the
// server rendered, and turns a drag across the chart into a new window (an htmx request).
"use strict";

function drawTimelines(root) {
  root.querySelectorAll(".timeline-chart[data-spec]").forEach((element) => {
    if (element.dataset.drawn) return;
    element.dataset.drawn = "1";
    const spec = JSON.parse(element.dataset.spec);
    // SVG, so each interval is an element a test (or a screen reader) can find.
    vegaEmbed(element, spec, { renderer: "svg", actions: false }).then((result) => {
      element.vegaView = result.view;
      element.dataset.ready = "1";
      // The drag ends where the button is let go: anywhere on the page, not only on the chart.
      result.view.addEventListener("pointerdown", () => {
        document.addEventListener("pointerup", () => pickWindow(element, result.view), { once: true });
      });
    });
  });
}

function pickWindow(element, view) {
  const picked = view.signal("pick");
  const range = picked && picked.start;
  if (!range || range.length !== 2 || +range[0] === +range[1]) return;
  // Whole seconds: a dragged window has no meaningful milliseconds.
  const [start, end] = range.map((t) =>
    new Date(Math.round(+t / 1000) * 1000).toISOString().replace(".000Z", "Z"),
  );
  const url = `${element.dataset.base}?start=${start}&end=${end}`;
  htmx.ajax("GET", url, { target: "#window-view", swap: "innerHTML" }).then(() => {
    history.pushState({}, "", url);
  });
}

function useShownWindow() {
  const shown = document.querySelector("#timeline");
  const form = document.querySelector("#backfill-form");
  if (!shown || !form) return;
  form.elements.start.value = shown.dataset.windowStart.replace("Z", "");
  form.elements.end.value = shown.dataset.windowEnd.replace("Z", "");
}

document.addEventListener("DOMContentLoaded", () => {
  drawTimelines(document);
  const button = document.querySelector("#use-window");
  if (button) button.addEventListener("click", useShownWindow);
});
document.addEventListener("htmx:load", (event) => drawTimelines(event.target));
