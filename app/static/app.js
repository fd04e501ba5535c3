"use strict";
// Pick or drop photos; each goes to POST /v1/captions, at most MAX_IN_FLIGHT at a time. One photo gets
// a large result, several a grid of captioned thumbnails; a photo that fails shows its error in its own tile.
const MAX_IN_FLIGHT = 4;
const RETRIES = 3;  // a 503 (the service's queue full, or its model still loading) is sent again after its Retry-After

const byId = (id) => document.getElementById(id);
const form = byId("form");
const fileInput = byId("file");
const drop = byId("drop");
const chosenLine = byId("chosen");
const beamInput = byId("beam");
const countInput = byId("count");
const submit = byId("submit");
const statusLine = byId("status");
const results = byId("results");
const grid = byId("grid");

let photos = [];           // what was picked: {file, url} and its tile: {tile, result, more}
let running = null;        // the AbortController of the captioning in progress
let defaultBeam = null;    // the model's default beam size, once /v1/model has answered

function element(tag, className = "", text = null) {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== null) node.textContent = text;
  return node;
}

const percent = (probability) => `${Math.round(probability * 100)}%`;

function showStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

// A new pick replaces everything: the photos, their results and warnings, and any captioning still going on.
function choose(files) {
  if (!files.length) return;
  if (running) running.abort();
  results.removeAttribute("aria-busy");
  for (const photo of photos) URL.revokeObjectURL(photo.url);
  photos = files.map((file) => ({ file, url: URL.createObjectURL(file) }));
  grid.className = photos.length === 1 ? "single" : "";
  grid.replaceChildren(...photos.map(tile));
  chosenLine.textContent = photos.length === 1 ? photos[0].file.name : `${photos.length} files chosen`;
  submit.disabled = false;
  showStatus("");
}

function tile(photo) {
  photo.tile = element("li", "tile");
  photo.result = element("div", "result");
  const image = element("img", "photo");
  image.alt = "";  // the caption beside it says what it shows
  image.decoding = "async";
  image.loading = "lazy";
  image.src = photo.url;
  image.addEventListener("error", () => image.replaceWith(element("div", "photo no-preview", "no preview")));
  photo.more = element("div", "more");
  photo.tile.append(photo.result, image, element("p", "name", photo.file.name), photo.more);
  return photo.tile;
}

// The best caption first and large, whether it is likely right, the tags; below the photo, the details, collapsed.
function showCaptions(photo, data) {
  const best = data.captions[0];
  const parts = [element("p", "caption", best.text)];
  if (data.low_confidence != null) {  // null: weights never calibrated
    const verdict = element("p", `verdict ${data.low_confidence ? "unsure" : "sure"}`,
                            data.low_confidence ? "may be wrong" : "likely right");
    if (best.confidence != null) verdict.title = `confidence ${percent(best.confidence)}`;
    parts.push(verdict);
  }
  const tags = data.tags || [];  // older services send no tags
  if (tags.length) {
    const chips = element("ul", "chips");
    chips.setAttribute("aria-label", "tags");
    chips.append(...tags.map((tag) => {
      const chip = element("li", "chip", tag.word);
      chip.title = `${tag.class_name}, ${percent(tag.probability)}`;
      return chip;
    }));
    parts.push(chips);
  }
  const details = element("details", "scores");
  const list = element("ol", "captions");
  list.append(...data.captions.map((caption) => {
    const item = element("li", "", caption.text);
    item.append(element("span", "score", `log p = ${caption.log_prob.toFixed(2)}`
      + (caption.confidence == null ? "" : `, confidence ${percent(caption.confidence)}`)));
    return item;
  }));
  details.append(element("summary", "", "Details"), list,
                 element("p", "model", `${data.model}, ${data.elapsed_ms.toFixed(0)} ms in the service`));
  photo.result.replaceChildren(...parts);
  photo.more.replaceChildren(details);
}

// {data} or {error}; a 503 is tried again after the Retry-After it comes with.
async function post(file, query, signal) {
  for (let attempt = 0; ; attempt++) {
    const body = new FormData();
    body.append("image", file);
    const response = await fetch(`/v1/captions?${query}`, { method: "POST", body, signal });
    const data = await response.json().catch(() => ({ detail: response.statusText }));
    if (response.ok) return { data };
    const retryAfter = Number(response.headers.get("Retry-After"));
    if (response.status === 503 && retryAfter && attempt < RETRIES) {
      await new Promise((resolve) => setTimeout(resolve, retryAfter * 1000));
      continue;
    }
    return { error: `Error ${response.status}: ${data.detail}` };  // every error's detail is one sentence
  }
}

async function caption(photo, query, signal) {
  photo.tile.className = "tile working";
  photo.result.replaceChildren(element("p", "pending", "Captioning…"));
  let outcome;
  try {
    outcome = await post(photo.file, query, signal);
    if (outcome.data && !signal.aborted) showCaptions(photo, outcome.data);
  } catch (error) {  // no answer, or not one the page can read
    outcome = { error: `Error: ${error.message}` };
  }
  if (signal.aborted) return;  // a new pick or a new submit has replaced this one
  photo.tile.className = `tile ${outcome.error ? "failed" : "done"}`;
  if (outcome.error) {
    photo.result.replaceChildren(element("p", "error", outcome.error));
    photo.more.replaceChildren();
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!photos.length) return;
  if (running) running.abort();
  const run = new AbortController();
  running = run;
  const batch = photos;
  const query = new URLSearchParams();
  if (beamInput.value) query.set("beam_size", beamInput.value);  // empty: the model's default
  const count = Math.max(1, Number(countInput.value) || 1);
  query.set("num_captions", String(Math.min(count, Number(beamInput.value || defaultBeam || count))));
  for (const photo of batch) {
    photo.tile.className = "tile";
    photo.result.replaceChildren();
    photo.more.replaceChildren();
  }
  showStatus(batch.length === 1 ? "Captioning…" : `Captioning ${batch.length} photos…`);
  results.setAttribute("aria-busy", "true");  // screen readers announce the results once, when all are in
  const started = performance.now();
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < batch.length && !run.signal.aborted) {
      await caption(batch[next++], query, run.signal);
      done += 1;
      if (batch.length > 1 && !run.signal.aborted) showStatus(`Captioning ${batch.length} photos… ${done} done`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(MAX_IN_FLIGHT, batch.length) }, worker));
  if (run.signal.aborted) return;
  running = null;
  results.removeAttribute("aria-busy");
  const failed = batch.filter((photo) => photo.tile.classList.contains("failed")).length;
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  if (batch.length === 1) showStatus(failed ? "The photo could not be captioned." : `Captioned in ${seconds} s.`, failed > 0);
  else if (failed) showStatus(`${failed} of ${batch.length} files could not be captioned.`, true);
  else showStatus(`${batch.length} photos captioned in ${seconds} s.`);
});

// The drop zone is a button: click, Enter or Space opens the file picker.
drop.addEventListener("click", () => fileInput.click());
drop.addEventListener("keydown", (event) => {
  if (event.key !== "Enter" && event.key !== " ") return;
  event.preventDefault();
  fileInput.click();
});
fileInput.addEventListener("change", () => {
  choose([...fileInput.files]);
  fileInput.value = "";  // so that picking the same files again is a change too
});

// Files may be dropped anywhere on the page: the browser would otherwise leave it to show the file.
for (const type of ["dragenter", "dragover"]) {
  document.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
}
document.addEventListener("dragleave", (event) => event.relatedTarget || drop.classList.remove("over"));
document.addEventListener("drop", async (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  choose(await droppedFiles(event.dataTransfer));
});

// The dropped files, and the photos in dropped folders and their subfolders. The entries are read
// before the first await: the browser empties dataTransfer once the event is over.
async function droppedFiles(transfer) {
  const entries = [...transfer.items].map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry()).filter(Boolean);
  if (!entries.some((entry) => entry.isDirectory)) return [...transfer.files];
  const found = await Promise.all(entries.map((entry) => (entry.isDirectory ? folderPhotos(entry) : fileOf(entry))));
  return found.flat();
}

const fileOf = (entry) => new Promise((resolve, reject) => entry.file(resolve, reject));

async function folderPhotos(folder) {
  const reader = folder.createReader();
  const entries = [];
  for (;;) {  // readEntries gives a folder's entries some at a time, then none
    const some = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (!some.length) break;
    entries.push(...some);
  }
  entries.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
  const files = [];
  for (const entry of entries) {
    if (entry.isDirectory) files.push(...await folderPhotos(entry));
    else {
      const file = await fileOf(entry);
      if (file.type.startsWith("image/")) files.push(file);  // not a folder's .DS_Store, notes and the like
    }
  }
  return files;
}

// What the model knows (its training data, what it is good and bad at), its scores and its default
// beam size, which the beam box shows as its placeholder: left empty, the request takes the default.
const SCORES = ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr"];

async function loadModelInfo() {
  const response = await fetch("/v1/model");
  if (response.status === 503) {  // the model is still loading
    setTimeout(() => loadModelInfo().catch(() => {}), 1000 * (Number(response.headers.get("Retry-After")) || 1));
    return;
  }
  if (!response.ok) return;
  const info = await response.json();
  if (info.decoding) {
    defaultBeam = info.decoding.beam_size;
    beamInput.placeholder = String(defaultBeam);
    byId("model-decoding").textContent = `Default decoding: beam size ${defaultBeam}, at most ${info.decoding.max_length} words.`;
  }
  if (info.note) {
    byId("model-note").textContent = info.note;
    byId("model-note").hidden = false;
  }
  byId("model-id").textContent = `Model ${info.model}`;
  const val = info.scores && info.scores.val;
  if (val && info.data && info.data.name) {
    const scores = SCORES.filter((name) => val[name] != null).map((name) => `${name} ${val[name].toFixed(3)}`);
    byId("model-scores").textContent = `${info.data.name} validation split: ${scores.join(", ")}`;
  }
  byId("model-details").hidden = false;
}

loadModelInfo().catch(() => {});
