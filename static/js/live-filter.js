// Filter as you type: a form marked data-live-filter="ID" fetches its own GET URL as the user
// types and swaps the element ID from the answer (and the text of data-live-count's element).
// Without JavaScript the form submits as usual.
(() => {
  const form = document.querySelector("form[data-live-filter]");
  if (!form) return;
  const targetId = form.dataset.liveFilter;
  let timer = null;
  let controller = null;

  async function refresh() {
    const query = new URLSearchParams(new FormData(form));
    for (const [key, value] of [...query.entries()]) if (!value) query.delete(key);
    const url = `${window.location.pathname}${query.toString() ? `?${query}` : ""}`;
    if (controller) controller.abort();
    controller = new AbortController();
    try {
      const answer = await fetch(url, { headers: { Accept: "text/html" }, signal: controller.signal });
      if (!answer.ok) return;
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = page.getElementById(targetId);
      const current = document.getElementById(targetId);
      if (fresh && current) current.replaceWith(fresh);
      // The count stays in place (a live region), so screen readers announce the new number.
      const countId = form.dataset.liveCount;
      const count = countId && document.getElementById(countId);
      const freshCount = countId && page.getElementById(countId);
      if (count && freshCount) count.textContent = freshCount.textContent;
      window.history.replaceState(null, "", url);
    } catch (error) {
      if (error.name !== "AbortError") throw error;
    }
  }

  const soon = () => {
    clearTimeout(timer);
    timer = setTimeout(refresh, 200);
  };
  form.addEventListener("input", soon);
  form.addEventListener("change", soon);
})();
