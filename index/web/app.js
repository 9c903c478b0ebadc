// The avfeat page: plain browser JavaScript, no libraries, every request to this same server.
"use strict";

const $ = (id) => document.getElementById(id);

// ---- talking to the API ----------------------------------------------------------------------

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { /* not JSON: fall through */ }
  if (!response.ok) {
    // The API answers every error with {"error": "one line"}.
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function jsonPost(path, payload) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) });
}

function filePost(path, file) {
  const form = new FormData();
  form.append("file", file, file.name);
  return api(path, { method: "POST", body: form });
}

function seconds(value) {
  return `${Number(value).toFixed(2)} s`;
}

function setStatus(element, text, isError = false) {
  element.textContent = text;
  element.classList.toggle("error", isError);
}

// ---- start-up: the index, the video list, tabs ----------------------------------------------

async function loadIndex() {
  try {
    const health = await api("/health");
    const windows = Object.entries(health.windows).map(([m, n]) => `${n} ${m}`).join(", ");
    $("index-info").textContent = `${health.index}: ${health.videos} videos, windows ${windows} (${health.window} s), on ${health.device}`
      + (health.cache ? "" : " — cache unavailable: video spans, rerank and locate are off");
    const listing = await api("/api/videos?limit=5000");
    const list = $("video-ids");
    for (const video of listing.videos) {
      const option = document.createElement("option");
      option.value = video.video_id;
      option.label = `${seconds(video.start)}–${seconds(video.end)}`;
      list.appendChild(option);
    }
  } catch (error) {
    $("index-info").textContent = `cannot read the index: ${error.message}`;
  }
}

function setUpTabs() {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      for (const other of document.querySelectorAll(".tab")) {
        other.classList.toggle("active", other === tab);
        $(other.dataset.panel).hidden = other !== tab;
      }
    });
  }
}

// A drop zone hands a dropped file to its <input type=file> and fires its change event, so
// dropping and picking take the same path.
function setUpDrop(zone, input) {
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      input.dispatchEvent(new Event("change"));
    }
  });
}

// ---- search -------------------------------------------------------------------------------------

function searchParams(excludeVideo) {
  const params = new URLSearchParams();
  params.set("k", $("k").value || "8");
  params.set("rerank", $("rerank").value || "0");
  params.set("one_per_video", $("one-per-video").checked ? "true" : "false");
  if ($("side").value) params.set("side", $("side").value);
  if (excludeVideo) params.set("exclude_video", excludeVideo);
  for (const condition of $("where").value.split(/\s+/).filter(Boolean)) params.append("where", condition);
  return params;
}

async function runSearch(describe, request) {
  const hits = $("hits");
  hits.dataset.state = "loading";
  setStatus($("status"), `searching with ${describe}…`);
  const began = performance.now();
  try {
    const answer = await request();
    const took = ((performance.now() - began) / 1000).toFixed(2);
    setStatus($("status"), `${answer.hits.length} hits for ${describe} (its ${answer.side} against the ${answer.searched} index) in ${took} s`);
    renderTiles(answer.hits.map((hit) => ({ ...hit, label: `#${hit.rank} · score ${hit.score === null ? "–" : hit.score.toFixed(3)}` })));
    hits.dataset.state = "done";
  } catch (error) {
    setStatus($("status"), error.message, true);
    hits.replaceChildren();
    hits.dataset.state = "error";
  }
}

// The query above the hits: the chosen file plays from a local object URL (nothing is fetched
// again), an indexed span shows its id and times with its own player.
let queryUrl = null;

function showQuery(kind, source, name, what) {
  const view = $("query-view");
  if (queryUrl) URL.revokeObjectURL(queryUrl);
  queryUrl = source && source.startsWith("blob:") ? source : null;
  const player = document.createElement(kind);
  if (kind !== "img") { player.controls = true; player.preload = "metadata"; }
  player.src = source;
  player.className = "query-media";
  const caption = document.createElement("figcaption");
  const label = document.createElement("div");
  label.className = "what";
  label.textContent = what;
  const title = document.createElement("code");
  title.className = "name";
  title.textContent = name;
  title.title = name;
  caption.append(label, title);
  view.replaceChildren(player, caption);
  view.hidden = false;
}

function showFile(file) {
  const type = file.type.split("/")[0];
  const kind = type === "audio" ? "audio" : type === "image" ? "img" : "video";
  showQuery(kind, URL.createObjectURL(file), file.name, `searching with this ${type === "image" ? "image" : type === "audio" ? "sound" : "video"}`);
}

function searchFile(file) {
  showFile(file);
  return runSearch(file.name, () => filePost(`/api/search?${searchParams(null)}`, file));
}

function searchSpan(videoId, start, end, excludeOwn) {
  const payload = { video_id: videoId };
  if (start !== "" && start !== undefined) payload.start = Number(start);
  if (end !== "" && end !== undefined) payload.end = Number(end);
  const span = payload.start !== undefined ? ` ${seconds(payload.start)}–${payload.end !== undefined ? seconds(payload.end) : "end"}` : "";
  const fragment = payload.start !== undefined ? `#t=${payload.start}${payload.end !== undefined ? `,${payload.end}` : ""}` : "";
  showQuery("video", `/media/${encodeURIComponent(videoId)}${fragment}`, videoId, `searching with the indexed span${span || " (whole video)"}`);
  return runSearch(`${videoId}${span}`, () => jsonPost(`/api/search?${searchParams(excludeOwn ? videoId : null)}`, payload));
}

async function locateFile(file) {
  const hits = $("hits");
  hits.dataset.state = "loading";
  setStatus($("status"), `looking for where ${file.name} was cut from…`);
  try {
    const answer = await filePost(`/api/locate?k=5`, file);
    const threshold = answer.threshold === null || answer.threshold === undefined ? "–" : answer.threshold.toFixed(3);
    setStatus($("status"), answer.candidates.length
      ? `${answer.candidates.length} candidate sources for ${file.name}, best first (the best must score ≥ ${threshold} to count as found)`
      : `${file.name} was not found: no indexed video scores ≥ ${threshold}`);
    renderTiles(answer.candidates.map((c) => ({
      ...c, start: c.time, end: null,
      label: `#${c.rank} · starts at ${seconds(c.time)} · ${c.votes} ${c.votes === 1 ? "vote" : "votes"} · score ${c.score === null ? "–" : c.score.toFixed(3)} (threshold ${threshold})`,
    })));
    hits.dataset.state = "done";
  } catch (error) {
    setStatus($("status"), error.message, true);
    hits.dataset.state = "error";
  }
}

// One tile per hit: a player that starts at the hit (the #t=START,END media fragment), its
// score, id, span and metadata, and buttons to replay it, show where its sound is, or search with it.
function renderTiles(items) {
  const grid = $("hits");
  grid.replaceChildren();
  for (const item of items) {
    const tile = document.createElement("figure");
    tile.className = "hit";
    tile.dataset.videoId = item.video_id;
    tile.dataset.start = item.start;
    tile.dataset.rank = item.rank;

    const frame = document.createElement("div");
    frame.className = "frame";
    const video = document.createElement("video");
    video.controls = true;
    video.preload = "metadata";
    video.playsInline = true;
    video.src = item.media;
    frame.appendChild(video);
    tile.appendChild(frame);

    const caption = document.createElement("figcaption");
    const title = document.createElement("div");
    title.className = "title";
    title.textContent = item.label;
    const id = document.createElement("code");
    id.className = "video-id";
    id.textContent = item.video_id;
    id.title = item.video_id;  // the whole id where the tile cuts it short
    const span = document.createElement("div");
    span.className = "span";
    span.textContent = item.end === null ? `from ${seconds(item.start)}` : `${seconds(item.start)} – ${seconds(item.end)}`;
    caption.append(title, id, span);

    const metadata = document.createElement("div");
    metadata.className = "metadata";
    for (const [name, value] of Object.entries(item.metadata || {})) {
      if (value === null) continue;
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.textContent = `${name}=${value}`;
      metadata.appendChild(chip);
    }
    caption.appendChild(metadata);

    const actions = document.createElement("div");
    actions.className = "actions";
    const replay = button("▶ from the hit", () => { video.currentTime = Number(item.start); video.play(); });
    replay.classList.add("replay");
    const heat = button("where is the sound?", () => toggleHeat(frame, item, heat));
    const similar = button("more like this", () => {
      $("video-id").value = item.video_id;
      $("start").value = Number(item.start).toFixed(2);
      $("end").value = item.end === null ? "" : Number(item.end).toFixed(2);
      searchSpan(item.video_id, $("start").value, $("end").value, $("exclude-own").checked);
    });
    actions.append(replay, heat, similar);
    caption.appendChild(actions);
    tile.appendChild(caption);
    grid.appendChild(tile);
  }
}

function button(text, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = text;
  element.addEventListener("click", onClick);
  return element;
}

// The attention map: the frame at the hit's start as the visual model saw it, under a heat map
// of how well each patch matches the hit's sound (GET /api/attention), laid over the player.
function toggleHeat(frame, item, control) {
  const shown = frame.querySelector("img.heat");
  if (shown) {
    shown.remove();
    control.classList.remove("on");
    return;
  }
  const image = document.createElement("img");
  image.className = "heat";
  image.alt = `where the sound is at ${seconds(item.start)}`;
  image.title = "click to hide";
  // The sound of the hit's window, over the frame in its middle (a hit's start may come before its object shows).
  const middle = item.end === null ? Number(item.start) : (Number(item.start) + Number(item.end)) / 2;
  image.src = `/api/attention/${encodeURIComponent(item.video_id)}?time=${Number(item.start).toFixed(3)}&frame=${middle.toFixed(3)}`;
  image.addEventListener("click", () => toggleHeat(frame, item, control));
  image.addEventListener("error", () => { image.remove(); control.classList.remove("on"); setStatus($("status"), "no attention map for this hit (is the cache at hand?)", true); });
  frame.appendChild(image);
  control.classList.add("on");
}

// ---- sync -----------------------------------------------------------------------------------

async function runSync(describe, request) {
  const canvas = $("sync-curve");
  canvas.dataset.state = "loading";
  setStatus($("sync-status"), `estimating the offset of ${describe}…`);
  $("sync-result").textContent = "";
  try {
    const answer = await request();
    if (answer.silent) {  // nothing to hear: no offset, no curve
      $("sync-result").textContent = `silent: no offset, confidence ${answer.confidence.toFixed(2)}`;
      setStatus($("sync-status"), describe);
      canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
      canvas.dataset.state = "done";
      return;
    }
    const late = answer.offset > 0 ? "audio late" : answer.offset < 0 ? "audio early" : "in sync";
    $("sync-result").textContent = `offset ${answer.offset >= 0 ? "+" : ""}${answer.offset.toFixed(3)} s (${late}), confidence ${answer.confidence.toFixed(2)}`;
    setStatus($("sync-status"), describe);
    drawCurve(canvas, answer.lags, answer.curve, answer.offset);
    canvas.dataset.state = "done";
  } catch (error) {
    setStatus($("sync-status"), error.message, true);
    canvas.dataset.state = "error";
  }
}

// Round tick values from lo to hi, about ``count`` of them, a 1, 2 or 5 times a power of ten apart.
function niceTicks(lo, hi, count) {
  const raw = (hi - lo) / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || 10 * power;
  const ticks = [];
  for (let i = Math.ceil(lo / step - 1e-9); i * step <= hi + step * 1e-9; i += 1) ticks.push(i * step);
  return { ticks, step, digits: Math.max(0, -Math.floor(Math.log10(step) + 1e-9)) };
}

// The lag curve, drawn by hand: axes with round, evenly spaced ticks and their names, the curve, and the offset.
function drawCurve(canvas, lags, curve, offset) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);

  const points = lags.map((lag, i) => [lag, curve[i]]).filter(([, value]) => value !== null && Number.isFinite(value));
  if (!points.length) return;
  const pad = { left: 70, right: 16, top: 16, bottom: 40 };
  const xMin = lags[0], xMax = lags[lags.length - 1];
  let yMin = Math.min(...points.map((p) => p[1])), yMax = Math.max(...points.map((p) => p[1]));
  if (yMax === yMin) { yMax += 1; yMin -= 1; }
  const x = (lag) => pad.left + ((lag - xMin) / (xMax - xMin)) * (width - pad.left - pad.right);
  const y = (value) => pad.top + (1 - (value - yMin) / (yMax - yMin)) * (height - pad.top - pad.bottom);

  const style = getComputedStyle(document.body);
  const ink = style.getPropertyValue("--ink").trim() || "#222";
  const faint = style.getPropertyValue("--faint").trim() || "#ccc";
  g.font = "12px system-ui, sans-serif";
  g.lineWidth = 1;

  // Grid and ticks: round values, evenly spaced, as many as the width holds (about one per 70 px).
  g.strokeStyle = faint;
  g.fillStyle = ink;
  g.textAlign = "center";
  const xs = niceTicks(xMin, xMax, Math.max(2, Math.floor((width - pad.left - pad.right) / 70)));
  for (const lag of xs.ticks) {
    g.beginPath(); g.moveTo(x(lag), pad.top); g.lineTo(x(lag), height - pad.bottom); g.stroke();
    g.fillText(lag.toFixed(xs.digits), x(lag), height - pad.bottom + 16);
  }
  g.textAlign = "right";
  const ys = niceTicks(yMin, yMax, 4);
  for (const value of ys.ticks) {
    g.beginPath(); g.moveTo(pad.left, y(value)); g.lineTo(width - pad.right, y(value)); g.stroke();
    g.fillText(value.toFixed(ys.digits), pad.left - 6, y(value) + 4);
  }
  const xName = "lag (s), positive = audio late", yName = "score";
  g.textAlign = "center";
  g.fillText(xName, (pad.left + width - pad.right) / 2, height - 6);
  g.save();
  g.translate(14, (pad.top + height - pad.bottom) / 2);
  g.rotate(-Math.PI / 2);
  g.fillText(yName, 0, 0);
  g.restore();
  // What was drawn, for assistive technology and checks: the axis names and tick labels.
  canvas.dataset.xTicks = JSON.stringify(xs.ticks.map((t) => t.toFixed(xs.digits)));
  canvas.dataset.yTicks = JSON.stringify(ys.ticks.map((t) => t.toFixed(ys.digits)));
  canvas.dataset.xName = xName;
  canvas.dataset.yName = yName;

  // The curve.
  g.strokeStyle = "#2563eb";
  g.lineWidth = 1.6;
  g.beginPath();
  points.forEach(([lag, value], i) => (i ? g.lineTo(x(lag), y(value)) : g.moveTo(x(lag), y(value))));
  g.stroke();

  // The estimate.
  g.strokeStyle = "#dc2626";
  g.setLineDash([5, 4]);
  g.beginPath(); g.moveTo(x(offset), pad.top); g.lineTo(x(offset), height - pad.bottom); g.stroke();
  g.setLineDash([]);
  g.fillStyle = "#dc2626";
  g.textAlign = offset > (xMin + xMax) / 2 ? "right" : "left";
  g.fillText(` offset ${offset >= 0 ? "+" : ""}${offset.toFixed(3)} s `, x(offset), pad.top + 12);
}

// ---- wiring -----------------------------------------------------------------------------------

function main() {
  setUpTabs();
  setUpDrop($("drop"), $("file"));
  setUpDrop($("sync-drop"), $("sync-file"));

  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    $("locate").disabled = !file;
    if (file) searchFile(file);
  });
  $("locate").addEventListener("click", () => {
    const file = $("file").files[0];
    if (file) locateFile(file);
  });
  $("by-video").addEventListener("submit", (event) => {
    event.preventDefault();
    searchSpan($("video-id").value.trim(), $("start").value, $("end").value, $("exclude-own").checked);
  });
  $("sync-file").addEventListener("change", () => {
    const file = $("sync-file").files[0];
    if (file) runSync(file.name, () => filePost("/api/sync", file));
  });
  $("sync-by-video").addEventListener("submit", (event) => {
    event.preventDefault();
    const videoId = $("sync-video-id").value.trim();
    runSync(videoId, () => jsonPost("/api/sync", { video_id: videoId }));
  });
  loadIndex();
}

main();
