"use strict";
const form = document.getElementById("form");
const fileInput = document.getElementById("file");
const drop = document.getElementById("drop");
const preview = document.getElementById("preview");
const submit = document.getElementById("submit");
const statusLine = document.getElementById("status");
const list = document.getElementById("captions");
let chosen = null;

function choose(file) {
  chosen = file;
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  submit.disabled = false;
  list.replaceChildren();
  showStatus("");
}

function showStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

fileInput.addEventListener("change", () => fileInput.files[0] && choose(fileInput.files[0]));
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files[0]) choose(event.dataTransfer.files[0]);
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!chosen) return;
  const beam = document.getElementById("beam").value;
  const count = Math.min(Number(document.getElementById("count").value), Number(beam));
  const body = new FormData();
  body.append("image", chosen);
  submit.disabled = true;
  showStatus("Captioning…");
  try {
    const response = await fetch(`/v1/captions?beam_size=${beam}&num_captions=${count}`, { method: "POST", body });
    const data = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) {
      showStatus(`Error ${response.status}: ${data.detail}`, true);  // every error's detail is one sentence
      return;
    }
    list.replaceChildren(...data.captions.map((caption) => {
      const item = document.createElement("li");
      item.className = "caption";
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = caption.text;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = `log p = ${caption.log_prob.toFixed(2)}`
        + (caption.confidence === null ? "" : `, confidence ${Math.round(caption.confidence * 100)}%`);
      item.append(text, score);
      return item;
    }));
    document.getElementById("low-confidence").hidden = !data.low_confidence;
    showStatus(`${data.model}, ${data.elapsed_ms.toFixed(0)} ms`);
  } catch (error) {
    showStatus(`Error: ${error}`, true);
  } finally {
    submit.disabled = false;
  }
});

// What the model knows (its training data, what it is good and bad at) and its default beam size.
fetch("/v1/model").then((r) => (r.ok ? r.json() : null)).then((info) => {
  if (!info) return;
  if (info.note) {
    const note = document.getElementById("model-note");
    note.textContent = info.note;
    note.hidden = false;
  }
  const val = info.scores && info.scores.val;
  if (val && val.CIDEr != null && info.data && info.data.name) {
    const scores = document.getElementById("model-scores");
    scores.textContent = `${info.data.name} validation split: BLEU-4 ${val["BLEU-4"].toFixed(3)}, CIDEr ${val.CIDEr.toFixed(3)}`;
    scores.hidden = false;
  }
  if (info.decoding) document.getElementById("beam").value = info.decoding.beam_size;
}).catch(() => {});
