// The fnmesh function browser: lists the gateway's catalog and calls a
// function with POST /v1/functions/{service}/{function}.
"use strict";

const $ = (id) => document.getElementById(id);
let catalog = [];

// exampleOf builds a starting value from a JSON Schema: each property at
// its type's zero value.
function exampleOf(schema, depth = 0) {
  if (!schema || typeof schema !== "object" || depth > 6) return {};
  if ("default" in schema) return schema.default;
  if (Array.isArray(schema.examples) && schema.examples.length) return schema.examples[0];
  const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  switch (type) {
    case "object": {
      const out = {};
      for (const [k, v] of Object.entries(schema.properties || {})) out[k] = exampleOf(v, depth + 1);
      return out;
    }
    case "array": return [];
    case "string": return "";
    case "number": case "integer": return 0;
    case "boolean": return false;
    case "null": return null;
  }
  return schema.properties ? exampleOf({ ...schema, type: "object" }, depth) : {};
}

function select(fn) {
  $("function").value = fn.name;
  $("description").textContent = fn.description || "";
  $("args").value = JSON.stringify(exampleOf(fn.request), null, 2);
  $("async").checked = !!fn.async;
  for (const li of $("functions").children) li.classList.toggle("selected", li.dataset.name === fn.name);
}

async function loadCatalog() {
  try {
    const res = await fetch("/v1/functions");
    const body = await res.json();
    if (!res.ok) throw new Error(`${body.code}: ${body.message}`);
    catalog = body.functions || [];
  } catch (e) {
    $("catalog-status").textContent = "could not load the catalog: " + e.message;
    return;
  }
  $("catalog-status").textContent = catalog.length ? "" : "the catalog is empty: type a function name";
  const list = $("functions");
  list.replaceChildren();
  for (const fn of catalog) {
    const li = document.createElement("li");
    li.dataset.name = fn.name;
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = fn.name;
    b.addEventListener("click", () => select(fn));
    li.append(b);
    for (const [flag, label] of [["public", "public"], ["async", "async"]]) {
      if (fn[flag]) {
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = label;
        li.append(tag);
      }
    }
    if (fn.description) {
      const d = document.createElement("small");
      d.textContent = fn.description;
      li.append(d);
    }
    list.append(li);
  }
  if (catalog.length) select(catalog[0]);
}

function show({ status, statusText, ok, body, requestId, replica, ms }) {
  $("outcome").hidden = false;
  $("outcome").className = "outcome " + (ok ? "ok" : "failed");
  const parts = [`${status} ${statusText}`, `${ms} ms`];
  if (replica) parts.push("replica " + replica);
  if (requestId) parts.push("id " + requestId);
  $("status").textContent = parts.join(" · ");
  const err = $("error");
  if (ok) {
    err.hidden = true;
    $("result").hidden = false;
    $("result").textContent = JSON.stringify(body, null, 2);
    return;
  }
  err.hidden = false;
  $("result").hidden = true;
  $("error-code").textContent = body && body.code ? body.code : "http_" + status;
  $("error-message").textContent = body && body.message ? body.message : String(body);
  const fields = $("error-fields");
  fields.replaceChildren();
  for (const f of (body && body.fields) || []) {
    const li = document.createElement("li");
    li.textContent = `${f.field}: ${f.rule}${f.param ? "=" + f.param : ""}`;
    fields.append(li);
  }
}

async function call(ev) {
  ev.preventDefault();
  const name = $("function").value.trim();
  const dot = name.indexOf(".");
  if (dot < 1 || dot === name.length - 1) {
    show({ status: 0, statusText: "not sent", ok: false, ms: 0, body: { code: "invalid_argument", message: "function name: want service.function, e.g. math.add" } });
    return;
  }
  const args = $("args").value.trim();
  if (args) {
    try { JSON.parse(args); } catch (e) {
      show({ status: 0, statusText: "not sent", ok: false, ms: 0, body: { code: "invalid_argument", message: "arguments are not valid JSON: " + e.message } });
      return;
    }
  }
  const url = new URL(`/v1/functions/${encodeURIComponent(name.slice(0, dot))}/${encodeURIComponent(name.slice(dot + 1))}`, location.href);
  if ($("async").checked) url.searchParams.set("async", "1");
  if ($("timeout").value) url.searchParams.set("timeout_ms", $("timeout").value);
  const headers = { "Content-Type": "application/json" };
  const token = $("token").value.trim();
  if (token) headers.Authorization = "Bearer " + token;
  sessionStorage.setItem("fnmesh-token", token);
  const button = $("call");
  button.disabled = true;
  const start = performance.now();
  try {
    const res = await fetch(url, { method: "POST", headers, body: args });
    const text = await res.text();
    let body;
    try { body = JSON.parse(text); } catch { body = text; }
    show({
      status: res.status, statusText: res.statusText, ok: res.ok, body,
      requestId: res.headers.get("X-Request-Id"), replica: res.headers.get("X-Fnmesh-Replica"),
      ms: Math.round(performance.now() - start),
    });
  } catch (e) {
    show({ status: 0, statusText: "network error", ok: false, ms: Math.round(performance.now() - start), body: { code: "unavailable", message: e.message } });
  } finally {
    button.disabled = false;
  }
}

$("token").value = sessionStorage.getItem("fnmesh-token") || "";
$("call-form").addEventListener("submit", call);
loadCatalog();
