// longdoc demo page: classify a document with POST /classify (return_chunks) and show why it got its label.
// Rendering stays cheap for very long documents: the text is cut only at chunk boundaries, so a document of
// n chunks becomes about 2n spans, whatever its length; the spans are built once into a DocumentFragment.
"use strict";

(() => {
  const BINS = 10;
  const EXPLAIN = {
    mean_logits: "Every chunk weighs the same in the mean of the chunks' logits.",
    weighted_mean_logits: "Each chunk weighs its share of the document's tokens in the mean of logits.",
    max_logits: "The chunk with the highest logit for the label decides alone.",
    mean_probs: "The chunk's share of the summed probability for the label.",
  };
  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("form"), text: $("text"), stats: $("text-stats"), file: $("file"), aggregation: $("aggregation"),
    apiKey: $("api-key"), submit: $("submit"), cancel: $("cancel"), status: $("status"), error: $("error"),
    results: $("results"), label: $("label"), score: $("score"), meta: $("meta"), scores: $("scores"),
    top: $("top-chunks"), shadeLabel: $("shade-label"), swatches: $("swatches"), overview: $("overview"),
    doc: $("doc"), detailBody: $("detail-body"), prev: $("prev"), next: $("next"), modelLine: $("model-line"),
  };
  const view = { text: "", cpLength: 0, result: null, chunkScores: [], segs: [], chunkSegs: [], spans: [], selected: -1 };
  let controller = null;

  const pct = (x) => `${(100 * x).toFixed(1)}%`;
  const fixed = (x) => x.toFixed(3);
  const int = (n) => n.toLocaleString("en");
  const bin = (score) => Math.max(0, Math.min(BINS, Math.round(score * BINS)));

  function node(tag, attrs, ...children) {
    const n = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") n.className = value;
      else n.setAttribute(key, value);
    }
    for (const child of children) n.append(child);
    return n;
  }

  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = el.apiKey.value.trim();
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  // Chunk offsets are code points (Python string indices); JavaScript strings index UTF-16 units.
  function codePointIndex(text) {
    if (!/[\uD800-\uDFFF]/.test(text)) return { toUnit: (cp) => cp, length: text.length };
    const map = [];
    let unit = 0;
    for (const ch of text) {
      map.push(unit);
      unit += ch.length;
    }
    map.push(unit);
    return { toUnit: (cp) => map[Math.min(cp, map.length - 1)], length: map.length - 1 };
  }

  let statsTimer = 0;
  function updateStats() {
    clearTimeout(statsTimer);
    statsTimer = setTimeout(() => {
      const text = el.text.value;
      const words = text.trim() ? text.trim().split(/\s+/).length : 0;
      el.stats.textContent = text ? `${int(text.length)} characters, ${int(words)} words.` : "Empty.";
    }, 150);
  }

  async function loadInfo() {
    try {
      const response = await fetch("/info", { headers: headers() });
      if (!response.ok) return;
      const info = await response.json();
      el.modelLine.textContent =
        `Model ${info.model} · labels ${info.labels.join(", ")} · windows of ${info.max_length} tokens ` +
        `sharing ${info.stride} · default aggregation ${info.aggregation}`;
      el.aggregation.options[0].textContent = `Service default (${info.aggregation})`;
    } catch (_) {
      // The page still works without /info (e.g. when it needs a key not entered yet).
    }
  }

  function setBusy(busy, message) {
    el.submit.disabled = busy;
    el.cancel.hidden = !busy;
    el.form.setAttribute("aria-busy", String(busy));
    el.status.textContent = message;
  }

  async function errorMessage(response) {
    let message = `HTTP ${response.status}`;
    try {
      const body = await response.json();
      if (body && body.error) message = body.error.message || body.error;
    } catch (_) {
      // not JSON: keep the status line
    }
    if (response.status === 401) return "This service needs an API key: enter it above and classify again.";
    if (response.status === 429) {
      const after = response.headers.get("Retry-After");
      return `The service is busy${after ? `; try again in ${after} s` : ""}. (${message})`;
    }
    return message;
  }

  async function classify(event) {
    event.preventDefault();
    const text = el.text.value;
    el.error.textContent = "";
    if (!text.trim()) {
      el.error.textContent = "Paste a document or open a .txt file first.";
      el.text.focus();
      return;
    }
    const body = { text, return_chunks: true, top_k_chunks: 5 };
    if (el.aggregation.value) body.aggregation = el.aggregation.value;
    controller = new AbortController();
    const started = performance.now();
    const tick = setInterval(() => {
      setBusy(true, `Classifying ${int(text.length)} characters… ${((performance.now() - started) / 1000).toFixed(0)} s`);
    }, 1000);
    setBusy(true, `Classifying ${int(text.length)} characters…`);
    try {
      const response = await fetch("/classify", {
        method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
      });
      if (!response.ok) {
        el.error.textContent = await errorMessage(response);
        if (response.status === 401) el.apiKey.focus();
        setBusy(false, "");
        return;
      }
      const result = await response.json();
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      render(text, result);
      setBusy(false, `Classified in ${seconds} s.`);
    } catch (error) {
      setBusy(false, "");
      el.error.textContent = error.name === "AbortError" ? "Cancelled." : `Could not reach the service: ${error.message}`;
    } finally {
      clearInterval(tick);
      controller = null;
    }
  }

  function render(text, result) {
    const t0 = performance.now();
    view.text = text;
    view.result = result;
    view.chunkScores = result.chunks.map((chunk) => {
      const byLabel = {};
      for (const s of chunk.scores) byLabel[s.label] = s.score;
      return byLabel;
    });
    el.label.textContent = result.label;
    el.score.textContent = fixed(result.score);
    el.meta.textContent =
      `${int(result.num_chunks)} chunk${result.num_chunks === 1 ? "" : "s"}, ${int(result.num_tokens)} tokens, ` +
      `aggregation ${result.aggregation}, model ${result.model}` + (result.truncated ? " (truncated)" : "") +
      (result.labels ? `. Labels over the threshold: ${result.labels.join(", ") || "none"}` : "");
    el.scores.replaceChildren(...result.scores.map((s) => node("li", {},
      node("span", {}, s.label),
      node("span", { class: "bar", role: "img", "aria-label": `${s.label} ${pct(s.score)}` },
        barFill(s.score)),
      node("span", { class: "num" }, fixed(s.score)))));
    el.top.replaceChildren(...(result.top_chunks || []).map((c) => {
      const button = node("button", { type: "button" },
        node("strong", {}, `Chunk ${c.index + 1}`),
        ` · ${result.label} ${fixed(c.score)} · contribution ${pct(c.contribution)}`,
        node("span", { class: "excerpt" }, c.excerpt.replace(/\s+/g, " ")));
      button.addEventListener("click", () => select(c.index, true));
      return node("li", {}, button);
    }));
    el.shadeLabel.replaceChildren(...result.scores.map((s) => node("option", { value: s.label }, s.label)));
    el.shadeLabel.value = result.label;
    buildSegments();
    paint();
    view.selected = -1;
    el.results.hidden = false;
    const top = result.top_chunks && result.top_chunks.length ? result.top_chunks[0].index : 0;
    select(top, false);
    el.doc.scrollTop = 0;
    document.body.dataset.renderMs = String(Math.round(performance.now() - t0));
    el.results.dataset.state = "done";
    el.results.focus();
  }

  function barFill(score) {
    const fill = node("span");
    fill.style.width = pct(score);
    return fill;
  }

  // Cut the text at every chunk start and end; each piece records the chunks that cover it.
  function buildSegments() {
    const text = view.text;
    const chunks = view.result.chunks;
    const { toUnit, length } = codePointIndex(text);
    view.cpLength = length;
    const bounds = new Set([0]);
    for (const c of chunks) { bounds.add(c.start); bounds.add(c.end); }
    const sorted = [...bounds].sort((a, b) => a - b);
    const order = chunks.map((_, i) => i).sort((a, b) => chunks[a].start - chunks[b].start || a - b);
    const segs = [];
    const chunkSegs = chunks.map(() => [-1, -1]);
    let lo = 0;
    let hi = 0;
    const lastUnit = text.length;
    for (let k = 0; k < sorted.length; k++) {
      const a = sorted[k];
      const startUnit = toUnit(a);
      const endUnit = k + 1 < sorted.length ? toUnit(sorted[k + 1]) : lastUnit;
      if (endUnit <= startUnit) continue;
      while (lo < order.length && chunks[order[lo]].end <= a) lo++;
      while (hi < order.length && chunks[order[hi]].start <= a) hi++;
      const cover = [];
      for (let j = lo; j < hi; j++) if (chunks[order[j]].end > a) cover.push(order[j]);
      const index = segs.length;
      for (const c of cover) {
        if (chunkSegs[c][0] < 0) chunkSegs[c][0] = index;
        chunkSegs[c][1] = index;
      }
      segs.push({ startUnit, endUnit, cover });
    }
    view.segs = segs;
    view.chunkSegs = chunkSegs;
    const fragment = document.createDocumentFragment();
    view.spans = segs.map((seg, index) => {
      const span = document.createElement("span");
      span.textContent = text.slice(seg.startUnit, seg.endUnit);
      span.dataset.seg = String(index);
      fragment.append(span);
      return span;
    });
    el.doc.replaceChildren(fragment);
  }

  function chunkScore(chunk, label) {
    return view.chunkScores[chunk][label] ?? 0;
  }

  function paint() {
    const label = el.shadeLabel.value;
    view.segs.forEach((seg, index) => {
      const span = view.spans[index];
      if (!seg.cover.length) {
        span.className = "gap";
        return;
      }
      let sum = 0;
      for (const c of seg.cover) sum += chunkScore(c, label);
      span.className = `s${bin(sum / seg.cover.length)}${seg.cover.length > 1 ? " ov" : ""}`;
    });
    markSelected(view.selected, true);
    drawOverview();
  }

  function markSelected(chunk, on) {
    if (chunk < 0 || !view.chunkSegs[chunk]) return;
    const [first, last] = view.chunkSegs[chunk];
    for (let i = first; i <= last && i >= 0; i++) view.spans[i].classList.toggle("sel", on);
  }

  function select(chunk, scroll) {
    const chunks = view.result.chunks;
    if (!chunks.length) return;
    chunk = Math.max(0, Math.min(chunks.length - 1, chunk));
    markSelected(view.selected, false);
    view.selected = chunk;
    markSelected(chunk, true);
    showDetail(chunk);
    drawOverview();
    if (scroll) {
      // Scroll the document box only (not the page), putting the chunk's start a third of the way down.
      const first = view.spans[view.chunkSegs[chunk][0]];
      if (first) el.doc.scrollTop = Math.max(0, first.offsetTop - el.doc.clientHeight / 3);
    }
  }

  function showDetail(index) {
    const r = view.result;
    const c = r.chunks[index];
    const rows = [
      ["Characters", `${int(c.start)}–${int(c.end)}`],
      ["Tokens", int(c.num_tokens)],
      ["Its own label", `${c.label} (${fixed(c.score)})`],
      ["Contribution", `${pct(c.contribution)} of the decision for ${r.label}`],
    ];
    const dl = node("dl", {});
    for (const [term, value] of rows) dl.append(node("dt", {}, term), node("dd", {}, value));
    const list = node("ul", { class: "scores" }, ...c.scores.map((s) => node("li", {},
      node("span", {}, s.label),
      node("span", { class: "bar", role: "img", "aria-label": `${s.label} ${pct(s.score)}` }, barFill(s.score)),
      node("span", { class: "num" }, fixed(s.score)))));
    el.detailBody.replaceChildren(
      node("p", {}, node("strong", {}, `Chunk ${index + 1} of ${int(r.chunks.length)}`)),
      dl, list, node("p", { class: "muted" }, EXPLAIN[r.aggregation] || ""));
    el.prev.disabled = index === 0;
    el.next.disabled = index === r.chunks.length - 1;
  }

  function drawOverview() {
    const canvas = el.overview;
    const chunks = view.result ? view.result.chunks : [];
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.clearRect(0, 0, width, height);
    const total = Math.max(1, view.cpLength);
    const colors = [];
    const style = getComputedStyle(document.documentElement);
    for (let b = 0; b <= BINS; b++) colors.push(style.getPropertyValue(`--s${b}`).trim());
    const label = el.shadeLabel.value;
    const toX = (cp) => (cp / total) * width;
    chunks.forEach((c, i) => {
      ctx.fillStyle = colors[bin(chunkScore(i, label))];
      ctx.fillRect(toX(c.start), 0, Math.max(1, toX(c.end) - toX(c.start)), height);
    });
    if (view.selected >= 0 && chunks[view.selected]) {
      const c = chunks[view.selected];
      ctx.strokeStyle = "#1a1a1a";
      ctx.lineWidth = 2;
      ctx.strokeRect(toX(c.start) + 1, 1, Math.max(2, toX(c.end) - toX(c.start) - 2), height - 2);
    }
  }

  function chunkAt(segIndex) {
    const cover = view.segs[segIndex].cover;
    if (!cover.length) return -1;
    const at = cover.indexOf(view.selected);
    return at >= 0 ? cover[(at + 1) % cover.length] : cover[0];
  }

  function onKey(event) {
    if (!view.result) return;
    const keys = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 };
    if (event.key in keys) select(view.selected + keys[event.key], true);
    else if (event.key === "Home") select(0, true);
    else if (event.key === "End") select(view.result.chunks.length - 1, true);
    else return;
    event.preventDefault();
  }

  function readFile() {
    const file = el.file.files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => {
      el.text.value = String(reader.result);
      updateStats();
      el.status.textContent = `Loaded ${file.name} (${int(el.text.value.length)} characters).`;
    };
    reader.onerror = () => { el.error.textContent = `Could not read ${file.name}.`; };
    reader.readAsText(file);
  }

  function init() {
    for (let b = 0; b <= BINS; b++) el.swatches.append(node("span", { class: `swatch s${b}` }));
    el.form.addEventListener("submit", classify);
    el.cancel.addEventListener("click", () => controller && controller.abort());
    el.text.addEventListener("input", updateStats);
    el.file.addEventListener("change", readFile);
    el.shadeLabel.addEventListener("change", paint);
    el.doc.addEventListener("keydown", onKey);
    el.doc.addEventListener("click", (event) => {
      const span = event.target.closest("span[data-seg]");
      if (!span) return;
      const chunk = chunkAt(Number(span.dataset.seg));
      if (chunk >= 0) select(chunk, false);
    });
    el.overview.addEventListener("click", (event) => {
      if (!view.result) return;
      const rect = el.overview.getBoundingClientRect();
      const cp = ((event.clientX - rect.left) / rect.width) * view.cpLength;
      const index = view.result.chunks.findIndex((c) => c.end > cp);
      select(index < 0 ? view.result.chunks.length - 1 : index, true);
    });
    el.prev.addEventListener("click", () => view.result && select(view.selected - 1, true));
    el.next.addEventListener("click", () => view.result && select(view.selected + 1, true));
    window.addEventListener("resize", () => view.result && drawOverview());
    el.apiKey.addEventListener("change", loadInfo);
    updateStats();
    loadInfo();
  }

  init();
})();
