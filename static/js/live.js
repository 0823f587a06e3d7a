// Live pages: one small polling helper shared by every page that follows the API.
//
//   Bakehouse.poll(url, onBody, {interval})  GETs url (JSON) every `interval` ms and calls
//     onBody(body); polling stops when onBody returns true. A failed request keeps polling.
//   Bakehouse.watch(url, key, onChange)       calls onChange(body) whenever key(body) differs
//     from what it was when the page loaded.
//
// Hook for server-rendered pages: an element with data-live-url reloads the page when the list
// of builds behind that URL changes (a build started or ended, also through the API):
//   <div hidden data-live-url="{% url 'builds-api:flavour-builds' flavour.pk %}?limit=5"></div>
(() => {
  const Bakehouse = (window.Bakehouse = window.Bakehouse || {});

  Bakehouse.poll = (url, onBody, { interval = 1500 } = {}) => {
    const tick = async () => {
      let done = false;
      try {
        const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
        if (response.ok) done = Boolean(await onBody(await response.json()));
      } catch (error) {
        // A dropped connection (server restart): keep polling, the page is still right so far.
      }
      if (!done) setTimeout(tick, interval);
    };
    tick();
  };

  Bakehouse.watch = (url, key, onChange, options = {}) => {
    let seen;
    Bakehouse.poll(
      url,
      (body) => {
        const now = JSON.stringify(key(body));
        if (seen === undefined) seen = now;
        else if (now !== seen) return onChange(body) !== false;
        return false;
      },
      options,
    );
  };

  // Which builds exist and which of them still run: new ones and endings change the page.
  const buildsKey = (body) => (body.results || body).map((build) => [build.id, FINISHED.has(build.state)]);
  const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

  document.querySelectorAll("[data-live-url]").forEach((element) => {
    Bakehouse.watch(element.dataset.liveUrl, buildsKey, () => window.location.reload(), { interval: 3000 });
  });
})();
