"use strict";
const $ = (id) => document.getElementById(id);
const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4"];
const UNREACHABLE = "The service cannot be reached; check that it is running, then try again.";

function showError(msg) { const e = $("error"); e.textContent = msg; e.hidden = !msg; }

function esc(s) { const d = document.createElement("div"); d.textContent = String(s ?? ""); return d.innerHTML; }

let latest = 0;  // the newest photo asked about: an older answer arriving later is dropped

// what is going on, for everyone (a spinner) and for screen readers (role=status)
function status(msg, busy) {
  const s = $("status");
  s.textContent = msg || ""; s.classList.toggle("busy", !!busy);
  $("random").disabled = !!busy;  // one random photo at a time: rapid clicks had stored unseen answers
  document.body.setAttribute("aria-busy", busy ? "true" : "false");
}

// a new request, or a refusal before one: older answers are dropped and their results hidden
function startOver(error) {
  const mine = ++latest;
  showError(error || "");
  status("");
  $("result").hidden = true;  // no stale results under a new photo's error
  return mine;
}

function failed(mine, msg) { if (mine === latest) { status(""); showError(msg); } }

async function identify(blob, name) {
  const mine = startOver();
  status(`Identifying ${name || "the photo"}…`, true);
  const form = new FormData();
  form.append("image", blob, name || "photo.jpg");
  form.append("preview", "true");  // the photo as the service read it: the boxes are drawn on that
  let res;
  try { res = await fetch("/v1/identify", { method: "POST", body: form }); }
  catch (err) { failed(mine, UNREACHABLE); return; }
  const body = await res.json().catch(() => ({}));
  if (mine !== latest) return;
  if (!res.ok) {
    failed(mine, res.status === 503 ? "The service is busy; try again in a moment."
                                    : "Could not identify this photo: " + (body.detail || res.statusText));
    return;
  }
  if (await render(blob, body, mine)) {
    const top = body.categories[0], best = body.matches[0];
    const found = top ? `: ${top.category} (${(100 * top.probability).toFixed(0)}%)` : "";
    status(`Identified ${name || "the photo"}${found}` + (best ? `, best match ${resultName(best)}.` : "."));
    await loadHistory();
  }
}

async function bitmapOf(blob, r) {
  // the service's own copy first: EXIF orientation applied exactly as for the boxes (a browser
  // may skip it, e.g. in WebP) and any format it reads (e.g. TIFF); else the browser's decoding
  try { if (r.preview) return await createImageBitmap(await (await fetch(r.preview)).blob()); }
  catch (err) { /* fall through */ }
  try { return await createImageBitmap(blob, { imageOrientation: "from-image" }); }
  catch (err) { return null; }
}

async function render(blob, r, mine) {
  const img = await bitmapOf(blob, r);
  if (mine !== latest) return false;  // another photo was chosen meanwhile
  $("result").hidden = false;
  const canvas = $("canvas"), ctx = canvas.getContext("2d");
  const [w0, h0] = r.image_size;  // the preview is smaller, with the same shape
  const scale = Math.min(400 / w0, 400 / h0, 4);
  // a strip of a photo (10000 x 10) keeps a visible height
  canvas.width = Math.max(1, Math.round(w0 * scale)); canvas.height = Math.max(8, Math.round(h0 * scale));
  if (img) ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  else {
    ctx.fillStyle = "#eee"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "#555"; ctx.font = "14px sans-serif";
    ctx.fillText("(this browser cannot show this image format)", 10, 24);
  }
  const sx = canvas.width / r.image_size[0], sy = canvas.height / r.image_size[1];
  r.detections.forEach((d, i) => {
    const [x, y, w, h] = d.box, c = COLOURS[i % COLOURS.length];
    ctx.strokeStyle = c; ctx.lineWidth = 3; ctx.strokeRect(x * sx, y * sy, w * sx, h * sy);
    ctx.fillStyle = c; ctx.font = "14px sans-serif";
    const label = `${i + 1} ${d.tag} ${d.score.toFixed(2)}`;  // kept inside the canvas on a narrow screen
    const lx = Math.max(0, Math.min(x * sx + 3, canvas.width - ctx.measureText(label).width - 2));
    ctx.fillText(label, lx, Math.max(14, y * sy - 3));
  });
  canvas.setAttribute("aria-label", r.detections.length
    ? `The photo, with ${r.detections.length} detected product(s): ` + r.detections.map((d) => d.tag).join(", ")
    : "The photo");
  // each box's tag, and the object's other likely tags, which the canvas has no room for
  $("detections-section").hidden = !r.detections.length;
  $("detections").innerHTML = r.detections.map((d, i) =>
    `<li><span class="swatch" style="background:${COLOURS[i % COLOURS.length]}"></span>
     <span class="tag">${esc(d.tag)}</span> ${d.score.toFixed(2)}${(d.alternatives || []).length
       ? ` <span class="alt">or ${d.alternatives.map((a) => `${esc(a.tag)} ${a.score.toFixed(2)}`).join(", ")}</span>`
       : ""}</li>`).join("");
  $("categories").innerHTML = r.categories.length ? r.categories.map((c) =>
    `<li><span class="cat">${esc(c.category)}</span> <span class="prob">${(100 * c.probability).toFixed(1)}%</span>
     <div class="bar"><span style="width:${(100 * c.probability).toFixed(1)}%"></span></div></li>`).join("")
    : "<li>No category information in this catalog.</li>";
  $("matches").innerHTML = r.matches.map((m) =>
    `<div class="match"><img src="${m.thumbnail}" alt="${esc(resultName(m))}"><div>${esc(resultName(m))}</div>
     <div>score ${m.score.toFixed(3)}</div></div>`).join("");
  return true;
}

// types.result_name: the title, else "product P", else (no product, or a -1 distractor) "item N"
function resultName(m) {
  if (m.title) return m.title;
  return m.product_id !== null && m.product_id !== undefined && m.product_id >= 0
    ? `product ${m.product_id}` : `item ${m.id}`;
}

async function loadHistory() {
  const res = await fetch("/v1/history");
  if (!res.ok) return;
  const rows = await res.json();
  $("history").querySelector("tbody").innerHTML = rows.map((r) =>
    `<tr><td><img src="${r.thumbnail}" alt="photo asked about"></td><td>${esc(r.top_category)}</td>
     <td>${(100 * r.probability).toFixed(1)}%</td><td>${esc(r.top_product)}</td>
     <td>${when(r.at)}</td></tr>`).join("");
}

// the time of day today, the date and time before
function when(at) {
  const d = new Date(at * 1000);
  return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}

function pick(files) {
  const all = Array.from(files || []);
  if (!all.length) return;
  const photos = all.filter((f) => !f.type || f.type.startsWith("image/"));
  if (!photos.length) { startOver(`${all[0].name} is not an image.`); return; }
  identify(photos[0], photos[0].name);
  if (all.length > 1) {
    status(`Identifying ${photos[0].name}, the first photo of the ${all.length} files dropped…`, true);
  }
}

$("file").addEventListener("change", (e) => { pick(e.target.files); e.target.value = ""; });  // the same file again
const drop = $("drop");
drop.addEventListener("keydown", (e) => {  // a label is not a button for the keyboard: Enter and Space open it
  if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); }
});
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); pick(e.dataTransfer.files); });
$("random").addEventListener("click", async () => {
  const mine = startOver();
  status("Picking a catalog photo…", true);
  let r;
  try {
    const res = await fetch("/v1/random");
    if (!res.ok) { failed(mine, "No catalog photo available."); return; }
    r = await res.json();
  } catch (err) { failed(mine, UNREACHABLE); return; }
  if (mine !== latest) return;  // another photo was chosen meanwhile
  const bytes = Uint8Array.from(atob(r.jpeg_base64), (c) => c.charCodeAt(0));
  identify(new Blob([bytes], { type: "image/jpeg" }), `catalog-${r.id}.jpg`);
});
loadHistory();
