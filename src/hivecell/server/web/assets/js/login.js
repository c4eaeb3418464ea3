// The middleware redirects here with ?failed=1 when a token was given but not accepted.
if (new URLSearchParams(location.search).has("failed")) {
  document.getElementById("failed").hidden = false;
}
