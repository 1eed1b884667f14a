// The search page: plain DOM and fetch against the gateway's public API, no build step.
// Every request goes through api(), so the API key and error wording live in one place.

const $ = (id) => document.getElementById(id);
const MAX_IMAGE_BYTES = 16 * 1024 * 1024;
const POLL_MS = 1000;

const state = {
  query: null,       // {image: base64} | {text} | {item_id}
  queryLabel: "",
  thumbnails: new Map(),
  pollTimer: null,
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// --- talking to the gateway ------------------------------------------------------------

function requestHeaders(hasBody) {
  const headers = {};
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (hasBody) headers["Content-Type"] = "application/json";
  return headers;
}

async function api(path, { method = "GET", body } = {}) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: requestHeaders(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "Cannot reach the FocalServe server. Is it still running?");
  }
  if (response.ok) return response;
  let message = `The server answered with status ${response.status}.`;
  try {
    message = (await response.json()).error.message;
  } catch {
    // not our JSON error shape (a proxy, say): keep the status line
  }
  throw new ApiError(response.status, explain(response, message));
}

function explain(response, message) {
  if (response.status === 401) {
    $("key-row").hidden = false;
    return `This needs a valid API key (${message}). Enter it in the "API key" field.`;
  }
  if (response.status === 503) {
    const wait = response.headers.get("Retry-After") || "a few";
    return `The server is busy right now (${message}). Try again in ${wait} seconds.`;
  }
  if (response.status === 413) return `That is too large for this server: ${message}`;
  return message;
}

const collectionPath = (name) => `/collections/${encodeURIComponent(name)}`;
const itemPath = (name, id) => `${collectionPath(name)}/items/${id.split("/").map(encodeURIComponent).join("/")}`;

// --- messages ----------------------------------------------------------------------------

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function showStatus(message) {
  $("status").textContent = message;
}

async function guarded(action) {
  showError("");
  try {
    await action();
  } catch (error) {
    showError(error instanceof ApiError ? error.message : `Something went wrong in the page: ${error.message}`);
  }
}

// --- collections and conditions -----------------------------------------------------------

function selectedCollection() {
  return $("collection").value;
}

async function loadCollections() {
  const { collections } = await (await api("/collections")).json();
  const select = $("collection");
  const previous = select.value;
  select.replaceChildren(...collections.map((c) => new Option(`${c.name} (${c.items} images, ${c.model})`, c.name)));
  if (!collections.length) {
    showStatus("No collection yet: create one with the API or `focalserve index add`, then reload.");
    renderConditions([]);
    return;
  }
  const names = collections.map((c) => c.name);
  select.value = names.includes(previous) ? previous : (names.includes("demo") ? "demo" : names[0]);
  renderConditions(collections.find((c) => c.name === select.value).conditions);
  schedulePoll();
}

async function refreshConditions() {
  const name = selectedCollection();
  if (!name) return;
  const conditions = await (await api(`${collectionPath(name)}/conditions`)).json();
  if (name === selectedCollection()) renderConditions(conditions);
  schedulePoll();
}

function conditionValue(condition) {
  return condition.instruction ?? "";
}

function renderConditions(conditions) {
  const box = $("conditions");
  const checked = new Set([...box.querySelectorAll("input:checked")].map((input) => input.value));
  const firstRender = !box.dataset.collection || box.dataset.collection !== selectedCollection();
  box.dataset.collection = selectedCollection();
  box.dataset.building = conditions.some((c) => c.status === "building") ? "yes" : "no";
  if (!conditions.length) {
    const empty = document.createElement("p");
    empty.className = "help";
    empty.textContent = "No condition registered on this collection yet: register one below.";
    box.replaceChildren(empty);
    return;
  }
  box.replaceChildren(...conditions.map((condition, index) => {
    const row = document.createElement("div");
    row.className = "condition";
    const input = document.createElement("input");
    input.type = "checkbox";
    input.id = `condition-${index}`;
    input.value = conditionValue(condition);
    input.checked = firstRender ? condition.status === "ready" : checked.has(input.value);
    const label = document.createElement("label");
    label.htmlFor = input.id;
    label.textContent = condition.instruction ?? "plain CLIP embedding (no instruction)";
    row.append(input, label);
    if (condition.status !== "ready") row.append(...conditionProgress(condition, input.id));
    return row;
  }));
}

function conditionProgress(condition, inputId) {
  const note = document.createElement("p");
  note.className = "help";
  note.id = `${inputId}-status`;
  if (condition.status === "failed") {
    note.textContent = `Failed: ${condition.error || "unknown error"}`;
    return [note];
  }
  const bar = document.createElement("progress");
  bar.max = Math.max(condition.total, 1);
  bar.value = condition.embedded;
  bar.setAttribute("aria-labelledby", note.id);
  note.textContent = `Building: ${condition.embedded} of ${condition.total} images embedded`;
  return [bar, note];
}

function schedulePoll() {
  clearTimeout(state.pollTimer);
  if ($("conditions").dataset.building === "yes") {
    state.pollTimer = setTimeout(() => guarded(refreshConditions), POLL_MS);
  }
}

async function registerCondition(event) {
  event.preventDefault();
  const instruction = $("new-instruction").value.trim();
  if (!instruction) throw new ApiError(0, "Type an instruction first, e.g. \"what colour is the shape?\".");
  const name = selectedCollection();
  if (!name) throw new ApiError(0, "Pick a collection first.");
  const response = await api(`${collectionPath(name)}/conditions`, {
    method: "POST",
    body: { instruction, index: $("new-index").value },
  });
  const condition = await response.json();
  $("new-instruction").value = "";
  await refreshConditions();  // first, so that the message never names a condition the list lacks
  showStatus(response.status === 202
    ? `Registered "${condition.instruction}": embedding ${condition.total} images in the background.`
    : `"${condition.instruction}" was already registered.`);
}

// --- the query ----------------------------------------------------------------------------

function setQuery(query, label, previewUrl) {
  state.query = query;
  state.queryLabel = label;
  const preview = $("query-preview");
  preview.hidden = !previewUrl;
  if (previewUrl) {
    preview.src = previewUrl;
    preview.alt = `Query: ${label}`;
  }
  $("query-summary").textContent = query ? `Query: ${label}.` : "No query yet.";
}

function readImageFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    throw new ApiError(0, `"${file.name}" is not an image. Choose a PNG, JPEG or WebP file.`);
  }
  if (file.size > MAX_IMAGE_BYTES) {
    throw new ApiError(0, `"${file.name}" is larger than 16 MB. Choose a smaller image.`);
  }
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      $("query-text").value = "";
      const base64 = String(reader.result).split(",", 2)[1];
      setQuery({ image: base64 }, `the image "${file.name}"`, URL.createObjectURL(file));
      resolve();
    };
    reader.onerror = () => reject(new ApiError(0, `Could not read "${file.name}".`));
    reader.readAsDataURL(file);
  });
}

async function useStoredImage() {
  const name = selectedCollection();
  if (!name) throw new ApiError(0, "Pick a collection first.");
  // Search waits for the pick: pressed meanwhile, it would search the previous query or none.
  $("search").disabled = true;
  try {
    const { items } = await (await api(`${collectionPath(name)}/items?limit=1000`)).json();
    if (!items.length) throw new ApiError(0, `The collection "${name}" has no images yet.`);
    const item = items[Math.floor(Math.random() * items.length)];
    $("query-text").value = "";
    $("query-file").value = "";
    setQuery({ item_id: item.id }, `the stored image "${item.id}" (left out of its own results)`,
      await thumbnail(name, item.id));
  } finally {
    $("search").disabled = false;
  }
}

function onTextInput() {
  const text = $("query-text").value.trim();
  if (text) {
    $("query-file").value = "";
    setQuery({ text }, `the text "${text}"`, null);
  } else if (state.query?.text !== undefined) {
    setQuery(null, "", null);
  }
}

function wireDropZone() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    guarded(() => readImageFile(event.dataTransfer.files[0]));
  });
}

// --- search and results ------------------------------------------------------------------

async function thumbnail(collection, id) {
  // Fetched (not <img src>) so that the API key travels with it, as on every other request.
  const key = `${collection}\n${id}`;
  if (!state.thumbnails.has(key)) {
    const blob = await (await api(`${itemPath(collection, id)}/image`)).blob();
    state.thumbnails.set(key, URL.createObjectURL(blob));
  }
  return state.thumbnails.get(key);
}

function describeMetadata(metadata) {
  return Object.entries(metadata).map(([key, value]) => `${key}: ${value}`).join(", ");
}

async function search(event) {
  event.preventDefault();
  const collection = selectedCollection();
  const conditions = [...$("conditions").querySelectorAll("input:checked")].map((input) => input.value);
  const k = Math.min(Math.max(parseInt($("k").value, 10) || 8, 1), 50);
  if (!collection) throw new ApiError(0, "Pick a collection first.");
  if (!state.query) throw new ApiError(0, "Choose an image, use a stored image, or type a text query first.");
  if (!conditions.length) throw new ApiError(0, "Tick at least one condition to compare.");

  $("search").disabled = true;
  showStatus("Searching…");
  try {
    const answers = await Promise.allSettled(conditions.map(async (condition) => {
      const body = { collection, condition: condition || null, query: state.query, k };
      return (await api("/search", { method: "POST", body })).json();
    }));
    const columns = await Promise.all(answers.map((answer, i) => renderColumn(collection, conditions[i], answer)));
    $("results").replaceChildren(...columns);
    showStatus(summarise(answers, k));
    const failed = answers.find((answer) => answer.status === "rejected");
    if (failed) showError(failed.reason.message);
  } finally {
    $("search").disabled = false;
  }
}

async function renderColumn(collection, condition, answer) {
  const column = document.createElement("section");
  column.className = "column";
  const heading = document.createElement("h3");
  heading.textContent = condition || "plain CLIP embedding";
  column.append(heading);
  column.setAttribute("aria-label", `Results under: ${heading.textContent}`);
  if (answer.status === "rejected") {
    const message = document.createElement("p");
    message.className = "error";
    message.textContent = answer.reason.message;
    column.append(message);
    return column;
  }
  const list = document.createElement("ol");
  const hits = await Promise.all(answer.value.results.map((hit, rank) => renderHit(collection, hit, rank)));
  list.append(...hits);
  if (!hits.length) column.append(Object.assign(document.createElement("p"), { textContent: "No results." }));
  column.append(list);
  return column;
}

async function renderHit(collection, hit, rank) {
  const item = document.createElement("li");
  item.className = "hit";
  item.dataset.id = hit.id;
  const image = document.createElement("img");
  const meta = describeMetadata(hit.metadata);
  image.alt = `${rank + 1}. ${hit.id}${meta ? ` (${meta})` : ""}`;
  try {
    image.src = await thumbnail(collection, hit.id);
  } catch {
    image.alt += " (image unavailable)";
  }
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = `${rank + 1}. score ${hit.score.toFixed(3)}`;
  const details = document.createElement("span");
  details.className = "meta";
  details.textContent = meta || hit.id;
  item.append(image, score, details);
  return item;
}

function summarise(answers, k) {
  const lists = answers.filter((a) => a.status === "fulfilled").map((a) => a.value.results.map((r) => r.id));
  let summary = `Top ${k} for ${state.queryLabel}, under ${answers.length} condition${answers.length > 1 ? "s" : ""}.`;
  if (lists.length >= 2) {
    const first = new Set(lists[0]);
    const shared = lists[1].filter((id) => first.has(id)).length;
    summary += ` The first two columns share ${shared} of ${lists[0].length} images.`;
  }
  return summary;
}

// --- start-up -----------------------------------------------------------------------------

async function start() {
  const auth = await (await api("/ui/auth.json")).json();
  const keyField = $("api-key");
  keyField.value = sessionStorage.getItem("focalserve-api-key") || "";
  $("key-row").hidden = !auth.keys;
  keyField.addEventListener("change", () => {
    sessionStorage.setItem("focalserve-api-key", keyField.value.trim());
    guarded(loadCollections);
  });
  $("collection").addEventListener("change", () => guarded(async () => {
    $("results").replaceChildren();
    if (state.query?.item_id) setQuery(null, "", null);
    await refreshConditions();
  }));
  $("query-file").addEventListener("change", (event) => guarded(() => readImageFile(event.target.files[0])));
  $("query-text").addEventListener("input", onTextInput);
  $("random-item").addEventListener("click", () => guarded(useStoredImage));
  $("search-form").addEventListener("submit", (event) => guarded(() => search(event)));
  $("condition-form").addEventListener("submit", (event) => guarded(() => registerCondition(event)));
  wireDropZone();
  await loadCollections();
}

guarded(start);
