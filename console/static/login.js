// The login form: a session cookie and its CSRF token, then back to the page that sent us here.
"use strict";
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await Console.api("/api/login", { method: "POST", json: { name: document.getElementById("name").value,
                                                              password: document.getElementById("password").value } });
    const next = new URLSearchParams(location.search).get("next");
    location.href = next && next.startsWith("/") && !next.startsWith("//") ? next : "/review";
  } catch (error) {
    Console.notice(document.getElementById("message"), error.message, "error");
  }
});
