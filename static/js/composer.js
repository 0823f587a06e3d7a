// The composer's live parts. Without JavaScript every step still works: the server checks the
// picks and the fragment when a step is submitted and shows the same hints.
(() => {
  // --- every step: the address, the "Every step is a link" text and the step links follow the form,
  // so a link copied (or a step clicked) after changing a field carries that change along.
  const shareUrl = document.getElementById("share-url");
  const wizardForm = shareUrl && document.querySelector("main form[method=get]");
  if (wizardForm) {
    const stateQuery = () => {
      const query = new URLSearchParams();
      for (const [name, value] of new FormData(wizardForm)) {
        // The same pruning the server does: no control parameters, no empty fields.
        if (name === "go" || name === "csrfmiddlewaretoken" || !String(value).trim()) continue;
        query.append(name, value);
      }
      return query.toString();
    };
    const syncLinks = () => {
      const query = stateQuery();
      const here = new URL(wizardForm.getAttribute("action") || window.location.pathname, window.location.href);
      here.search = query;
      history.replaceState(null, "", here);
      shareUrl.textContent = here.href;
      for (const link of document.querySelectorAll(".steps a")) {
        const url = new URL(link.href);
        url.search = query;
        link.href = url.href;
      }
    };
    wizardForm.addEventListener("change", syncLinks);
    wizardForm.addEventListener("input", syncLinks);
    wizardForm.addEventListener("bakehouse:picked", syncLinks);
  }

  // --- step 2: requires / conflicts hints as you pick -----------------------------------------
  const relationsScript = document.getElementById("relations");
  const hintsBox = document.getElementById("relation-hints");
  if (relationsScript && hintsBox) {
    const relations = JSON.parse(relationsScript.textContent);
    const selects = new Map(
      [...document.querySelectorAll("[data-extension-select]")].map((s) => [s.dataset.extensionSelect, s]),
    );
    // What the server found wrong with the link itself (picks this list cannot offer) stays shown.
    const serverHints = [...hintsBox.querySelectorAll('[data-kind="unavailable"]')];
    const groups = (requires) => (requires || []).map((g) => (Array.isArray(g) ? g : [g]));
    const why =
      "they install the same files (binaries, units), and when two merged sysexts provide one path " +
      "one silently hides the other";

    const hint = (kind, text, fixes = []) => {
      const box = document.createElement("div");
      box.className = kind === "requires" || kind === "conflicts" ? "hint problem" : "hint";
      box.dataset.kind = kind;
      const p = document.createElement("p");
      p.textContent = text;
      box.appendChild(p);
      for (const [label, name] of fixes) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "secondary";
        button.textContent = label;
        button.addEventListener("click", () => {
          const select = selects.get(name);
          select.value = relations[name].latest;
          render();
          select.form.dispatchEvent(new Event("bakehouse:picked"));
          select.focus();
        });
        box.appendChild(button);
      }
      return box;
    };

    function render() {
      const picked = new Set([...selects].filter(([, s]) => s.value).map(([name]) => name));
      const hints = [...serverHints];
      const seenPairs = new Set();
      for (const name of [...picked].sort()) {
        const rel = relations[name];
        for (const group of groups(rel.requires)) {
          if (group.some((other) => picked.has(other))) continue;
          const fixes = group.filter((o) => relations[o]).map((o) => [`Add ${o} ${relations[o].latest}`, o]);
          hints.push(hint("requires", `${name} requires ${group.join(" or ")}.`, fixes));
        }
        for (const other of rel.conflicts || []) {
          const pair = [name, other].sort().join(" and ");
          if (picked.has(other) && !seenPairs.has(pair)) {
            seenPairs.add(pair);
            hints.push(hint("conflicts", `${pair} conflict: ${why}. Choose one.`));
          }
        }
        if (rel.min_flatcar) {
          hints.push(
            hint("needs", `${name} needs Flatcar ${rel.min_flatcar} or newer: check the LTS release your nodes run (LTS-2023 is older).`),
          );
        }
        if (rel.replaces && rel.replaces.length) {
          hints.push(hint("replaces", `${name} replaces Flatcar's bundled ${rel.replaces.join(", ")}: they will be masked.`));
        }
      }
      if (!hints.length) {
        const p = document.createElement("p");
        p.className = "muted";
        p.textContent = picked.size ? "Everything you picked has what it needs." : "Requirements and conflicts of what you pick show up here.";
        hints.push(p);
      }
      hintsBox.replaceChildren(...hints);
    }

    for (const select of selects.values()) select.addEventListener("change", render);
    // A pick made while this deferred script was still loading fired no event we could hear.
    render();
  }

  // --- step 3: Butane fragment checked as you type --------------------------------------------
  const fragment = document.querySelector("[data-validate-fragment]");
  const report = document.getElementById("fragment-check");
  if (fragment && report) {
    const form = fragment.closest("form");
    const csrf = document.querySelector("input[name=csrfmiddlewaretoken]");
    let timer = null;
    let sequence = 0;
    const check = async () => {
      const mine = ++sequence;
      const body = new URLSearchParams({ fragment: fragment.value, channel: form.dataset.channel || "" });
      try {
        const response = await fetch(form.dataset.checkFragmentUrl, {
          method: "POST",
          body,
          headers: { "X-CSRFToken": csrf ? csrf.value : "" },
        });
        if (!response.ok || mine !== sequence) return;
        const result = await response.json();
        const problems = result.problems || [];
        fragment.setAttribute("aria-invalid", problems.length ? "true" : "false");
        report.className = problems.length ? "errorlist" : "muted";
        report.textContent = !fragment.value.trim()
          ? ""
          : problems.length
            ? problems.join(" ")
            : `Valid Butane ${result.butane_version} fragment.`;
      } catch (error) {
        report.textContent = "";
      }
    };
    fragment.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(check, 400);
    });
    if (fragment.value.trim()) check();
  }
})();
