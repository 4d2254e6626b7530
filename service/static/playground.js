// The playground: plain JavaScript over the service's own REST API (same origin, relative URLs, so it
// also works behind a path prefix). No library, no build step, no request to any other host.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "faces.apiKey";
const MIN_DISPLAY_PX = 256; // small resolutions are scaled up (nearest neighbour) to at least this
const LADDER_PX = 160;
const N_VARIATIONS = 6;
const SEED_MAX = 4294967295;

const state = {
  models: [], // GET /models -> models
  last: null, // what made the face on show: {query, seed, model, res, truncation}
  lastBlobUrl: null,
  frames: [], // interpolation frames as data: URLs
  walkBody: null,
  timer: null,
};

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function apiKey() {
  return localStorage.getItem(KEY_STORE) || "";
}

function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

async function errorMessage(resp) {
  const text = await resp.text();
  try {
    const body = JSON.parse(text);
    if (typeof body.detail === "string") return body.detail;
    if (body.detail !== undefined) return JSON.stringify(body.detail);
  } catch (_) {
    // not JSON (a proxy's error page, say): show its text
  }
  return text.trim().slice(0, 300) || resp.statusText || "no message";
}

async function api(method, path, { query = null, body = null } = {}) {
  const url = path + (query ? "?" + new URLSearchParams(query) : "");
  const init = { method, headers: authHeaders(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  let resp;
  try {
    resp = await fetch(url, init);
  } catch (err) {
    throw new ApiError(0, `the service did not answer (${err.message})`);
  }
  if (!resp.ok) throw new ApiError(resp.status, await errorMessage(resp));
  return resp;
}

function showError(el, err) {
  el.textContent = err.status ? `${err.status}: ${err.message}` : err.message;
  el.hidden = false;
  if (err.status === 401) {
    $("key-box").open = true;
    $("key-status").textContent = "This service needs an API key: enter it above.";
  }
}

function clearError(el) {
  el.hidden = true;
  el.textContent = "";
}

async function busy(button, work) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

// ---------------------------------------------------------------- models

function currentModel() {
  return state.models.find((m) => m.name === $("model").value);
}

function fillResolutions() {
  const model = currentModel();
  const select = $("res");
  const previous = Number(select.value);
  select.replaceChildren();
  for (const r of model ? model.resolutions : []) select.add(new Option(`${r} × ${r}`, String(r)));
  if (model && model.resolutions.length) {
    const keep = model.resolutions.includes(previous);
    select.value = String(keep ? previous : Math.max(...model.resolutions));
  }
}

async function loadModels() {
  const box = $("models-error");
  clearError(box);
  try {
    const data = await (await api("GET", "models")).json();
    state.models = data.models.filter((m) => m.status === "ready");
    const select = $("model");
    select.replaceChildren();
    for (const m of data.models) {
      const option = new Option(m.status === "ready" ? m.name : `${m.name} (unavailable)`, m.name);
      option.disabled = m.status !== "ready";
      option.selected = m.name === data.default;
      select.add(option);
    }
    fillResolutions();
    return true;
  } catch (err) {
    showError(box, err);
    return false;
  }
}

// ---------------------------------------------------------------- curl

function shellQuote(text) {
  return "'" + text.replace(/'/g, "'\\''") + "'";
}

function curlFor(path, { query = null, body = null, out }) {
  const url = new URL(path + (query ? "?" + new URLSearchParams(query) : ""), location.href);
  const parts = ["curl", "-fsS", "-X", "POST", shellQuote(url.href)];
  if (apiKey()) parts.push("-H", '"X-API-Key: $FACES_API_KEY"');
  if (body) parts.push("-H", shellQuote("Content-Type: application/json"), "-d", shellQuote(JSON.stringify(body)));
  parts.push("-o", out);
  return parts.join(" ");
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (_) {
    // no clipboard API outside secure contexts (plain http on another host): select the text instead
    const range = document.createRange();
    range.selectNodeContents($("curl"));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    return document.execCommand && document.execCommand("copy");
  }
}

// ---------------------------------------------------------------- generate

const EXT = { png: "png", jpeg: "jpg", webp: "webp" };

function generateQuery() {
  const query = { res: $("res").value, seed: $("seed").value.trim() };
  const n = Number($("count").value);
  if (n > 1) {
    query.n = String(n);
    query.layout = $("layout").value;
  }
  if ($("truncate").checked) query.truncation = $("truncation").value;
  query.format = $("format").value;
  query.model = $("model").value;
  return query;
}

function scaleImage(img, minPx) {
  const apply = () => {
    const scale = Math.max(1, Math.ceil(minPx / img.naturalWidth));
    img.style.width = `${img.naturalWidth * scale}px`;
  };
  if (img.complete && img.naturalWidth) apply();
  else img.addEventListener("load", apply, { once: true });
}

function faceImage(src, alt, minPx = MIN_DISPLAY_PX) {
  const img = new Image();
  img.alt = alt;
  img.src = src;
  scaleImage(img, minPx);
  return img;
}

function labelled(img, text) {
  const fig = document.createElement("figure");
  const cap = document.createElement("figcaption");
  cap.textContent = text;
  fig.append(img, cap);
  return fig;
}

function seedRange(seeds) {
  return seeds.length === 1 ? `seed ${seeds[0]}` : `seeds ${seeds[0]}–${seeds[seeds.length - 1]}`;
}

async function generate() {
  const query = generateQuery();
  const errorBox = $("gen-error");
  clearError(errorBox);
  try {
    const resp = await api("POST", "generate", { query });
    const images = $("gen-images");
    let caption, download, seeds;
    if (state.lastBlobUrl) URL.revokeObjectURL(state.lastBlobUrl);
    const blob = await resp.blob();
    state.lastBlobUrl = URL.createObjectURL(blob);
    const model = resp.headers.get("X-Model") || query.model;
    const res = Number(resp.headers.get("X-Resolution") || query.res);
    if ((resp.headers.get("Content-Type") || "").startsWith("application/json")) {
      const data = JSON.parse(await blob.text());
      seeds = data.seeds;
      images.replaceChildren(
        ...data.images.map((im) =>
          labelled(faceImage(`data:${data.media_type};base64,${im.data}`, `face, seed ${im.seed}`), `seed ${im.seed}`),
        ),
      );
      download = "faces.json";
    } else {
      const header = resp.headers.get("X-Seed") || resp.headers.get("X-Seeds") || query.seed;
      seeds = header.split(",").map(Number);
      const what = query.n ? `${seeds.length} faces, ${seedRange(seeds)}` : `face, seed ${seeds[0]}`;
      images.replaceChildren(faceImage(state.lastBlobUrl, what));
      download = query.n ? `faces-${seeds[0]}.${EXT[query.format]}` : `face-${seeds[0]}.${EXT[query.format]}`;
    }
    const trunc = query.truncation ? ` · truncation ${query.truncation}` : "";
    caption = `${seedRange(seeds)} · model ${model} · ${res} × ${res} px · ${query.format.toUpperCase()}, ${(blob.size / 1024).toFixed(1)} KiB${trunc}`;
    $("gen-caption").textContent = caption;
    const link = $("gen-download");
    link.href = state.lastBlobUrl;
    link.download = download;
    state.last = { query, seed: seeds[0], model, res, truncation: query.truncation || null, out: download };
    $("gen-result").hidden = false;
    $("gen-actions").hidden = false;
    $("curl").hidden = true;
    $("curl-status").textContent = "";
  } catch (err) {
    showError(errorBox, err);
  }
}

async function showCurl() {
  if (!state.last) return;
  const text = curlFor("generate", { query: state.last.query, out: state.last.out });
  const pre = $("curl");
  pre.textContent = text;
  pre.hidden = false;
  const copied = await copyText(text);
  const keyNote = apiKey() ? " Set FACES_API_KEY to your key first." : "";
  $("curl-status").textContent = (copied ? "Copied to the clipboard." : "Select the command and copy it.") + keyNote;
}

// ---------------------------------------------------------------- every resolution

async function ladder() {
  if (!state.last) return;
  const { seed, model, truncation } = state.last;
  const info = state.models.find((m) => m.name === model);
  const section = $("ladder-section");
  const errorBox = $("ladder-error");
  clearError(errorBox);
  section.hidden = false;
  const figures = await Promise.all(
    info.resolutions.map(async (res) => {
      const query = { res: String(res), seed: String(seed), model };
      if (truncation) query.truncation = truncation;
      try {
        const blob = await (await api("POST", "generate", { query })).blob();
        const img = new Image(); // every rung at one size, so the detail each resolution adds shows
        img.alt = `seed ${seed} at ${res} px`;
        img.src = URL.createObjectURL(blob);
        img.style.width = `${LADDER_PX}px`;
        return labelled(img, `${res} px`);
      } catch (err) {
        showError(errorBox, err);
        return null;
      }
    }),
  );
  for (const old of $("ladder").querySelectorAll("img")) URL.revokeObjectURL(old.src);
  $("ladder").replaceChildren(...figures.filter(Boolean));
  section.scrollIntoView({ block: "nearest" });
}

// ---------------------------------------------------------------- variations

function normal() {
  // Box-Muller: one standard normal sample
  const u = 1 - Math.random();
  const v = Math.random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

async function variations() {
  if (!state.last) return;
  const { seed, model, res, truncation } = state.last;
  const nudge = Number($("nudge").value);
  const section = $("vary-section");
  const errorBox = $("vary-error");
  clearError(errorBox);
  section.hidden = false;
  try {
    const query = { model };
    if (truncation) query.truncation = truncation;
    const resp = await api("GET", `latents/${seed}`, { query });
    const z = (await resp.json()).latent;
    const latents = Array.from({ length: N_VARIATIONS }, () => z.map((v) => v + nudge * normal()));
    const body = { model, res: Number(res), format: "png", layout: "json", latents };
    const data = await (await api("POST", "generate", { body })).json();
    $("vary-hint").textContent = `The z of seed ${seed} plus ${nudge.toFixed(2)} × random normal noise (GET /latents/${seed}, then latents to POST /generate).`;
    $("variations").replaceChildren(
      ...data.images.map((im, i) =>
        labelled(faceImage(`data:${data.media_type};base64,${im.data}`, `variation ${i + 1} of seed ${seed}`, 128), `#${i + 1}`),
      ),
    );
  } catch (err) {
    showError(errorBox, err);
  }
  section.scrollIntoView({ block: "nearest" });
}

// ---------------------------------------------------------------- interpolate

function walkBody() {
  const seeds = $("walk-seeds")
    .value.split(/[\s,;]+/)
    .filter(Boolean)
    // numbers go as numbers; anything else goes as typed, for the API to say what is wrong with it
    .map((s) => (/^\d+$/.test(s) ? Number(s) : s));
  const body = {
    seeds,
    steps: Number($("walk-steps").value),
    method: $("walk-method").value,
    loop: $("walk-loop").checked,
    res: Number($("res").value),
    model: $("model").value,
  };
  if ($("truncate").checked) body.truncation = Number($("truncation").value);
  return body;
}

function showFrame(i) {
  const n = state.frames.length;
  if (!n) return;
  const k = ((i % n) + n) % n;
  $("walk-slider").value = String(k);
  $("walk-frame").src = state.frames[k];
  $("walk-pos").textContent = `${k + 1} / ${n}`;
}

function stopPlaying() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
  $("walk-play").textContent = "Play";
  $("walk-play").setAttribute("aria-pressed", "false");
}

function togglePlay() {
  if (state.timer) return stopPlaying();
  if (!state.frames.length) return;
  state.timer = setInterval(() => showFrame(Number($("walk-slider").value) + 1), 1000 / 12);
  $("walk-play").textContent = "Pause";
  $("walk-play").setAttribute("aria-pressed", "true");
}

async function interpolate() {
  stopPlaying();
  const errorBox = $("walk-error");
  clearError(errorBox);
  const body = walkBody();
  try {
    const data = await (await api("POST", "interpolate", { body: { ...body, output: "frames", format: "png" } })).json();
    state.frames = data.frames.map((f) => `data:${data.media_type};base64,${f}`);
    state.walkBody = body;
    const slider = $("walk-slider");
    slider.max = String(state.frames.length - 1);
    scaleImage($("walk-frame"), MIN_DISPLAY_PX);
    showFrame(0);
    $("walk-result").hidden = false;
  } catch (err) {
    showError(errorBox, err);
  }
}

async function downloadWalk(output, format, name) {
  if (!state.walkBody) return;
  const errorBox = $("walk-error");
  clearError(errorBox);
  try {
    const blob = await (await api("POST", "interpolate", { body: { ...state.walkBody, output, format } })).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  } catch (err) {
    showError(errorBox, err);
  }
}

// ---------------------------------------------------------------- wiring

function randomSeed() {
  const buf = new Uint32Array(1);
  crypto.getRandomValues(buf);
  $("seed").value = String(buf[0] % (SEED_MAX + 1));
}

function syncTruncation() {
  const on = $("truncate").checked;
  $("truncation").disabled = !on;
  $("truncation-out").textContent = on ? Number($("truncation").value).toFixed(2) : "off";
}

function syncLayout() {
  $("layout").disabled = Number($("count").value) <= 1;
}

function isTyping(target) {
  return target instanceof HTMLInputElement || target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement;
}

function wire() {
  $("gen-form").addEventListener("submit", (e) => {
    e.preventDefault();
    busy($("generate"), generate);
  });
  $("walk-form").addEventListener("submit", (e) => {
    e.preventDefault();
    busy($("interpolate"), interpolate);
  });
  $("dice").addEventListener("click", () => {
    randomSeed();
    $("gen-form").requestSubmit();
  });
  $("model").addEventListener("change", fillResolutions);
  $("truncate").addEventListener("change", syncTruncation);
  $("truncation").addEventListener("input", syncTruncation);
  $("count").addEventListener("input", syncLayout);
  $("nudge").addEventListener("input", () => ($("nudge-out").textContent = Number($("nudge").value).toFixed(2)));
  $("copy-curl").addEventListener("click", showCurl);
  $("ladder-btn").addEventListener("click", () => busy($("ladder-btn"), ladder));
  $("vary-btn").addEventListener("click", () => busy($("vary-btn"), variations));
  $("walk-slider").addEventListener("input", () => {
    stopPlaying();
    showFrame(Number($("walk-slider").value));
  });
  $("walk-play").addEventListener("click", togglePlay);
  $("walk-gif").addEventListener("click", () => busy($("walk-gif"), () => downloadWalk("animation", "gif", "walk.gif")));
  $("walk-strip").addEventListener("click", () => busy($("walk-strip"), () => downloadWalk("strip", "png", "strip.png")));

  $("api-key").value = apiKey();
  $("key-box").open = Boolean(apiKey());
  $("key-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    localStorage.setItem(KEY_STORE, $("api-key").value.trim());
    $("key-status").textContent = "Saved in this browser.";
    if (await loadModels()) $("gen-form").requestSubmit();
  });
  $("key-clear").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORE);
    $("api-key").value = "";
    $("key-status").textContent = "Forgotten.";
  });

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || isTyping(e.target)) return;
    const seed = Number($("seed").value) || 0;
    if (e.key === "g") $("gen-form").requestSubmit();
    else if (e.key === "d") $("dice").click();
    else if (e.key === "[" || e.key === "]") {
      $("seed").value = String(Math.min(SEED_MAX, Math.max(0, seed + (e.key === "]" ? 1 : -1))));
      $("gen-form").requestSubmit();
    } else if (e.key === " " && !$("walk-result").hidden && !(e.target instanceof HTMLButtonElement)) {
      e.preventDefault();
      togglePlay();
    }
  });
}

async function main() {
  wire();
  syncTruncation();
  syncLayout();
  if (await loadModels()) await busy($("generate"), generate);
  document.body.dataset.ready = "true"; // for tests and scripts: the first face (or its error) is on show
}

main();
