// Live review page: while a version is pinning, poll its REST representation (the JSON scripts
// use) and show each pinned sha256 and the outcome in place. The page is complete without it.
(() => {
  const status = document.getElementById("version-status");
  if (!status || status.dataset.active !== "true") return;
  const BADGES = { approved: ["green", "Approved"], "pin-failed": ["red", "Pinning failed"], pinning: ["yellow", "Pinning digests"] };

  function render(version) {
    const badge = document.querySelector("#version-badge .badge");
    const [colour, words] = BADGES[version.status] || ["blue", version.status_text];
    if (badge) {
      badge.className = `badge badge-${colour}`;
      badge.dataset.status = version.status;
      badge.textContent = words;
    }
    for (const digest of version.digests) {
      const row = document.querySelector(
        `#source-urls tr[data-arch="${CSS.escape(digest.arch)}"][data-source="${CSS.escape(digest.source_id)}"]`,
      );
      if (row) row.querySelector(".pinned-sha256").textContent = digest.sha256;
    }
    if (version.status === "approved") {
      status.textContent = status.dataset.doneApproved;
      status.className = "hint ok";
      return true;
    }
    if (version.status === "pinning") {
      status.textContent = status.dataset.pinning + (version.pinning_error ? ` (${version.pinning_error})` : "");
      return false;
    }
    if (version.status === "pin-failed") {
      status.textContent = status.dataset.doneFailed.replace("{reason}", version.pinning_error || "no reason recorded");
      status.className = "hint problem";
    } else {
      status.textContent = version.status_text;
    }
    const decision = document.getElementById("decision");
    if (decision) decision.hidden = !["proposed", "pin-failed"].includes(version.status);
    return true;
  }

  async function tick() {
    let finished = false;
    try {
      const answer = await fetch(status.dataset.apiUrl, { headers: { Accept: "application/json" } });
      if (answer.ok) finished = render(await answer.json());
    } catch (error) {
      // A dropped connection (server restart): keep polling.
    }
    if (!finished) window.setTimeout(tick, 1000);
  }
  tick();
})();
