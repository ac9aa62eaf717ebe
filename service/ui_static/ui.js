"use strict";
// /ui's one script: fetch the server-rendered panels with the token the user entered. The token
// stays in this tab's sessionStorage and travels only as the API's Authorization header: never
// in a URL, a cookie or the page itself.
(function () {
  const KEY = "neffcache-token";
  const REFRESH_MS = 30000;
  const panels = document.getElementById("panels");
  const form = document.getElementById("token-form");
  const input = document.getElementById("token");
  const status = document.getElementById("status");
  const forget = document.getElementById("forget");

  function say(state, message) {
    status.dataset.state = state;
    status.textContent = message;
  }

  async function detail(response) {
    try {
      return (await response.json()).detail || response.statusText;
    } catch (_) {
      return response.statusText;
    }
  }

  async function load() {
    const token = sessionStorage.getItem(KEY);
    forget.hidden = !token;
    let response;
    try {
      // location.search carries the page's own parameters (?hours=168), never the token.
      response = await fetch("ui/panels" + location.search, {
        headers: token ? { Authorization: "Bearer " + token } : {},
        cache: "no-store",
      });
    } catch (error) {
      say("error", "the service did not answer: " + error.message);
      return;
    }
    if (response.ok) {
      panels.innerHTML = await response.text();
      form.hidden = true;
      say("ok", "updated " + new Date().toLocaleTimeString());
      return;
    }
    panels.replaceChildren();
    if (response.status === 401 || response.status === 403) {
      if (response.status === 401 && token) {
        sessionStorage.removeItem(KEY);
        forget.hidden = true;
      }
      form.hidden = false;
      say("refused", "refused (" + response.status + "): " + (await detail(response)));
      return;
    }
    say("error", "error " + response.status + ": " + (await detail(response)));
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    sessionStorage.setItem(KEY, input.value.trim());
    input.value = "";
    load();
  });
  forget.addEventListener("click", function () {
    sessionStorage.removeItem(KEY);
    load();
  });
  document.getElementById("refresh").addEventListener("click", load);
  setInterval(function () {
    if (status.dataset.state === "ok") load();
  }, REFRESH_MS);
  load();
})();
