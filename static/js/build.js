// Live build page: follows the REST API (the same JSON scripts use) and updates the page in place:
// state, queue estimate, the steps per extension and for the flavour with their logs, the success
// or failure banner, retries made elsewhere (the API). The server-rendered page is complete on its
// own; this only keeps it current without reloads. Polling: Bakehouse.poll (static/js/live.js).
(() => {
  const root = document.getElementById("build");
  if (!root || !window.Bakehouse) return;
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
  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  };

  // The same words as build_report.duration_text.
  const duration = (seconds) => {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 10) return `${Math.max(seconds, 0).toFixed(1)} s`;
    const whole = Math.round(seconds);
    const hours = Math.floor(whole / 3600);
    const minutes = Math.floor(whole / 60) % 60;
    if (hours) return `${hours} h ${minutes} min`;
    return minutes ? `${minutes} min ${whole % 60} s` : `${whole} s`;
  };
  const clock = (iso) => (iso ? new Date(iso).toISOString().slice(11, 19) : "");

  // --- steps: one <details> per step, in a section per extension and one for the flavour -------
  const stepsRoot = $("steps");

  function stepElement(step) {
    let details = stepsRoot.querySelector(`details[data-step-id="${step.id}"]`);
    if (!details) {
      details = el("details", "step");
      details.dataset.stepId = step.id;
      details.open = true; // a step that appears while watching is running: show its log
      const summary = el("summary");
      summary.append(el("span", "step-icon"), " ", el("span", "step-name"), " ", el("span", "step-outcome"), " ",
        el("span", "muted step-times"), " ", el("span", "step-took"));
      summary.querySelector(".step-icon").setAttribute("aria-hidden", "true");
      const pre = el("pre", "log wrap");
      pre.tabIndex = 0;
      details.append(summary, pre);
    }
    const outcome = step.outcome || "running";
    details.querySelector(".step-icon").className = `step-icon outcome-${outcome}`;
    details.querySelector(".step-name").textContent = step.name;
    details.querySelector(".step-outcome").textContent = outcome;
    details.querySelector(".step-times").textContent = `${clock(step.started_at)}–${clock(step.finished_at)}`;
    details.querySelector(".step-took").textContent = duration(step.duration_seconds) || "…";
    if (step.outcome === "failed") details.open = true;
    return details;
  }

  function renderSteps(groups) {
    if (!groups.length) return;
    const sections = groups.map((group) => {
      let section = stepsRoot.querySelector(`section[data-group="${CSS.escape(group.key)}"]`);
      if (!section) {
        section = el("section", "step-group");
        section.dataset.group = group.key;
        const heading = el("h3", "", `${group.title} `);
        heading.append(el("span", "muted group-took"));
        section.append(heading);
      }
      section.querySelector(".group-took").textContent = duration(group.duration_seconds);
      section.replaceChildren(section.querySelector("h3"), ...group.steps.map(stepElement));
      return section;
    });
    stepsRoot.replaceChildren(...sections);
  }

  // --- status, banners, images --------------------------------------------------------------------
  function renderBuild(build) {
    const state = $("build-state");
    state.textContent = LABELS[build.state] || build.state;
    state.dataset.state = build.state;
    state.className = `badge state-${build.state}`;
    $("current-step").textContent = build.current_step ? `· ${build.current_step}` : "";
    const queue = $("queue-estimate");
    queue.hidden = !build.queue;
    queue.textContent = build.queue ? build.queue.text : "";
    $("build-progress").value = build.progress;
    $("progress-text").textContent = `${build.progress} %`;

    $("build-success").hidden = build.state !== "succeeded";
    if (build.install_command) $("install-command").textContent = build.install_command;
    const failure = build.failure;
    $("build-failure").hidden = !failure;
    $("build-error").textContent = failure && failure.code ? `${failure.code}: ${failure.sentence}` : "";
    $("build-advice").textContent = failure ? failure.advice : "";
    $("build-advice").dataset.kind = failure ? failure.kind : "";
    const retry = $("retry-form");
    if (retry) retry.hidden = !(failure && failure.can_retry) || build.retries.length > 0;

    $("verification").textContent =
      (VERIFICATION[build.verification] || build.verification) +
      (build.verification_reason ? ` (${build.verification_reason})` : "");
    for (const image of build.images) {
      const row = document.querySelector(`#images tr[data-extension="${CSS.escape(image.name)}"]`);
      if (!row) continue;
      const label = image.state.charAt(0).toUpperCase() + image.state.slice(1);
      row.querySelector(".image-state").textContent = label + (image.reused ? " (reused from cache)" : "");
      row.querySelector(".image-file").textContent = image.file_name || "—";
      row.querySelector(".image-sha256").textContent = image.sha256 || "—";
      row.querySelector(".image-verification").textContent =
        (VERIFICATION[image.verification] || image.verification) +
        (image.verification_reason ? ` (${image.verification_reason})` : "");
    }

    renderSteps(build.step_groups);
    const total = $("build-total");
    if (build.duration_seconds !== null) {
      const queued = build.queued_seconds ? ` (after ${duration(build.queued_seconds)} in the queue)` : "";
      const ended = build.finished_at ? `, ended ${clock(build.finished_at)}` : "";
      total.textContent = `Total ${duration(build.duration_seconds)}${queued}; started ${clock(build.started_at)}${ended}.`;
    } else if (build.state === "queued") {
      total.textContent = `Waiting for a worker for ${duration(build.queued_seconds)}.`;
    } else {
      total.textContent = "";
    }

    // A retry started anywhere (this page, another tab, the API) is linked here.
    const retries = $("retries");
    retries.replaceChildren(
      ...build.retries.flatMap((r) => {
        const link = el("a", "", `Retry: attempt ${r.attempt} (${LABELS[r.state] || r.state})`);
        link.href = r.page_url;
        return [link, " "];
      }),
    );

    const finished = FINISHED.has(build.state);
    const cancel = $("cancel-form");
    if (cancel) cancel.hidden = finished;
    $("flavour-link").hidden = build.state !== "succeeded";
    return finished;
  }

  // --- log: each line into the section of the step that wrote it ----------------------------------
  // A line may arrive before its step does (the step started between two reads): it waits for
  // the next render; once the build has ended, whatever still waits goes to the build's section.
  let waiting = [];
  function appendLines(lines, ended) {
    const still = [];
    for (const line of [...waiting, ...lines]) {
      const details = line.step === null ? null : stepsRoot.querySelector(`details[data-step-id="${line.step}"]`);
      if (line.step !== null && !details && !ended) {
        still.push(line);
        continue;
      }
      const pre = (details || $("build-log")).querySelector("pre");
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
      pre.append(`${clock(line.at)} ${line.text}\n`);
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    }
    waiting = still;
  }

  async function pollLog(ended) {
    const response = await fetch(`${logUrl}?after=${logAfter}`, { headers: { Accept: "application/json" } });
    if (!response.ok) return true;
    const body = await response.json();
    appendLines(body.lines, ended && body.finished);
    logAfter = body.next_after;
    return body.finished && !waiting.length;
  }

  // The build is followed even after it ended: a retry or cancel made through the API shows up
  // here too. The log is read until the build has ended and every line is in.
  let logFinished = false;
  window.Bakehouse.poll(apiUrl, async (build) => {
    const ended = renderBuild(build); // steps first, so every new line finds its step's section
    if (!logFinished) logFinished = (await pollLog(ended)) && ended;
    return false;
  });
})();
