// Live build page: polls the REST API (the same JSON scripts use) and updates the page in place.
// The server-rendered page is complete on its own; this only keeps it current without reloads.
(() => {
  const root = document.getElementById("build");
  if (!root) return;
  const apiUrl = root.dataset.apiUrl;
  const logUrl = root.dataset.logUrl;
  let logAfter = Number(root.dataset.logAfter || 0);
  const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
  const LABELS = {
    queued: "Queued", fetching: "Fetching", baking: "Baking", verifying: "Verifying", signing: "Signing",
    publishing: "Publishing", succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled",
  };
  const VERIFICATION = { "": "not yet", verified: "Verified with systemd-sysext", skipped: "Skipped", failed: "Failed" };
  const $ = (id) => document.getElementById(id);

  const duration = (seconds) => {
    if (seconds === null || seconds === undefined) return "…";
    if (seconds < 10) return `${seconds.toFixed(1)} s`;
    const whole = Math.round(seconds);
    const minutes = Math.floor(whole / 60);
    return minutes ? `${minutes} min ${whole % 60} s` : `${whole} s`;
  };

  const cell = (row, label, text, className) => {
    const td = document.createElement("td");
    td.dataset.label = label;
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
  };

  function renderBuild(build) {
    const state = $("build-state");
    state.textContent = LABELS[build.state] || build.state;
    state.dataset.state = build.state;
    state.className = `badge state-${build.state}`;
    $("current-step").textContent = build.current_step ? `· ${build.current_step}` : "";
    $("queue-position").textContent = build.queue_position ? `· position ${build.queue_position} in the queue` : "";
    $("build-progress").value = build.progress;
    $("progress-text").textContent = `${build.progress} %`;
    const error = $("build-error");
    error.hidden = !build.error_code;
    error.textContent = build.error_code ? `${build.error_code}: ${build.error_message}` : "";
    const whose = $("build-error-whose");
    const note = whose.dataset[build.error_kind] || "";
    whose.hidden = !note;
    whose.textContent = note;
    $("verification").textContent =
      (VERIFICATION[build.verification] || build.verification) +
      (build.verification_reason ? ` (${build.verification_reason})` : "");

    for (const image of build.images) {
      const row = document.querySelector(`#images tr[data-extension="${CSS.escape(image.name)}"]`);
      if (!row) continue;
      const state = image.state.charAt(0).toUpperCase() + image.state.slice(1);
      row.querySelector(".image-state").textContent = state + (image.reused ? " (reused from cache)" : "");
      row.querySelector(".image-file").textContent = image.file_name || "—";
      row.querySelector(".image-sha256").textContent = image.sha256 || "—";
      row.querySelector(".image-verification").textContent =
        (VERIFICATION[image.verification] || image.verification) +
        (image.verification_reason ? ` (${image.verification_reason})` : "");
    }

    const steps = document.querySelector("#steps tbody");
    if (build.steps.length) {
      steps.replaceChildren(
        ...build.steps.map((step) => {
          const row = document.createElement("tr");
          cell(row, "Step", step.name);
          cell(row, "Outcome", step.outcome || "running");
          cell(row, "Took", duration(step.duration_seconds));
          return row;
        }),
      );
    }

    const finished = FINISHED.has(build.state);
    const cancel = $("cancel-form");
    if (cancel) cancel.hidden = finished;
    const retry = $("retry-form");
    if (retry) retry.hidden = !(build.state === "failed" || build.state === "cancelled");
    $("flavour-link").hidden = build.state !== "succeeded";
    return finished;
  }

  async function pollLog() {
    const response = await fetch(`${logUrl}?after=${logAfter}`, { headers: { Accept: "application/json" } });
    if (!response.ok) return true;
    const body = await response.json();
    const log = $("log");
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    for (const line of body.lines) {
      const time = new Date(line.at).toISOString().slice(11, 19);
      log.append(`${time} ${line.text}\n`);
    }
    logAfter = body.next_after;
    if (atBottom) log.scrollTop = log.scrollHeight;
    return body.finished;
  }

  async function tick() {
    let finished = false;
    try {
      const response = await fetch(apiUrl, { headers: { Accept: "application/json" } });
      if (response.ok) finished = renderBuild(await response.json());
      const logDone = await pollLog();
      finished = finished && logDone;
    } catch (error) {
      // A dropped connection (server restart): keep polling, the page is still right so far.
    }
    if (!finished) setTimeout(tick, 1500);
  }

  if (root.dataset.active === "true") tick();
  else pollLog(); // an ended build: pick up any last lines written after the page rendered
})();
