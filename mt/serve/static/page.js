"use strict";
// The page of `mt serve`: translate lines, then look inside one translation (its attention and its
// beam search). It talks only to this server's JSON API (/info, /translate). Every text of a user or a
// model enters the DOM as textContent (never as HTML); SVG is built with createElementNS.

const SVG_NS = "http://www.w3.org/2000/svg";
const byId = (id) => document.getElementById(id);

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  setAttrs(e, attrs);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  setAttrs(e, attrs);
  if (text !== undefined) e.textContent = text;
  return e;
}

function setAttrs(e, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") e.setAttribute("class", value);
    else e.setAttribute(key, String(value));
  }
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

function fmt(x, digits = 3) {
  if (x === null || x === undefined) return "";
  return (x < 0 ? "−" : "") + Math.abs(x).toFixed(digits);
}

function showError(id, message) {
  const box = byId(id);
  box.textContent = message || "";
  box.hidden = !message;
}

// -- the API -------------------------------------------------------------------------------------
async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new Error(`Could not reach the server (${e.message}). Is mt serve still running?`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null;
  }
  if (!response.ok) {
    const err = data && data.error ? data.error : { type: response.statusText, message: "" };
    throw new Error(`Error ${response.status} (${err.type}): ${err.message}`);
  }
  return data;
}

// -- options ---------------------------------------------------------------------------------------
function currentModel(page) {
  const name = byId("model").value || page.info.default_model;
  return page.info.models.find((m) => m.name === name) || page.info.models[0];
}

function hasAttention(model) {
  const arch = model.architecture || {};
  return arch.arch === "transformer" || (arch.attention !== undefined && arch.attention !== "none");
}

function numberOf(id, label, integer) {
  const raw = byId(id).value.trim();
  const value = Number(raw);
  if (raw === "" || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    throw new Error(`${label}: give ${integer ? "a whole number" : "a number"}, not "${raw}"`);
  }
  return value;
}

function searchOptions(page) {
  const options = {};
  if (page.info.models.length > 1) options.model = byId("model").value;
  const search = byId("search").value;
  if (search === "beam") options.beam = numberOf("beam", "k (beam size)", true);
  else if (search === "greedy") options.greedy = true;
  else {
    options.sample = true;
    options.temperature = numberOf("temperature", "temperature", false);
  }
  options.len_penalty = byId("len-penalty").value;
  options.alpha = numberOf("alpha", "α (length penalty)", false);
  options.n_best = numberOf("n-best", "n-best", true);
  return options;
}

function applyDefaults(page) {
  const model = currentModel(page);
  const d = model.decoding || {};
  byId("search").value = d.search === "sampling" ? "sample" : (d.search || "beam");
  byId("beam").value = d.beam || 5;
  byId("n-best").value = d.n_best || 1;
  byId("len-penalty").value = d.len_penalty || "gnmt";
  byId("alpha").value = d.alpha === undefined ? 0.6 : d.alpha;
  byId("temperature").value = d.temperature || 1;
  byId("model-info").textContent = `${model.name}: ${model.source_language || "?"} → ${model.target_language || "?"}, `
    + `${model.architecture.arch}, ${Number(model.parameters).toLocaleString("en")} parameters, ${model.device}, `
    + `${model.precision}`;
  showSearchFields();
}

function showSearchFields() {
  const search = byId("search").value;
  for (const e of document.querySelectorAll(".for-beam")) e.hidden = search !== "beam";
  for (const e of document.querySelectorAll(".for-sample")) e.hidden = search !== "sample";
}

// -- translating -----------------------------------------------------------------------------------
async function translate(page) {
  showError("error", "");
  const lines = byId("source").value.split(/\r\n|\n|\r/);
  while (lines.length && lines[lines.length - 1].trim() === "") lines.pop();
  if (!lines.length) {
    showError("error", "Type a sentence to translate first (one per line).");
    return;
  }
  let options;
  try {
    options = searchOptions(page);
  } catch (e) {
    showError("error", e.message);
    return;
  }
  const model = currentModel(page);
  const body = { texts: lines, alignments: hasAttention(model), ...options };
  byId("translate").disabled = true;
  byId("status").textContent = `Translating ${lines.length} line${lines.length > 1 ? "s" : ""}…`;
  try {
    const data = await api("/translate", body);
    Object.assign(page, { lines, options, model, results: data.translations, selected: -1 });
    renderOutput(page);
    byId("status").textContent = `${lines.length} line${lines.length > 1 ? "s" : ""} translated by ${data.model}.`;
    const first = lines.findIndex((line) => line.trim() !== "");
    if (first >= 0) await select(page, first);
  } catch (e) {
    showError("error", e.message);
    byId("status").textContent = "";
  } finally {
    byId("translate").disabled = false;
  }
}

function renderOutput(page) {
  const list = clear(byId("output"));
  page.results.forEach((t, i) => {
    const item = el("li", { "data-index": i, tabindex: 0 });
    item.appendChild(el("div", { class: "source" }, page.lines[i]));
    item.appendChild(translationText(t));
    item.appendChild(pieceRow(t));
    item.appendChild(el("div", { class: "score" }, `score ${fmt(t.score)} (log-probability after the length penalty)`));
    if (t.nbest) item.appendChild(nbestList(t.nbest));
    item.addEventListener("click", () => select(page, i));
    item.addEventListener("keydown", (ev) => { if (ev.key === "Enter") select(page, i); });
    list.appendChild(item);
  });
  byId("output-panel").hidden = false;
}

function translationText(t) {
  // the text exactly as the API gives it; copied words (by whitespace-separated index) marked
  const line = el("div", { class: "translation" });
  const copies = new Set(t.copies || []);
  let word = 0;
  for (const part of t.translation.split(/(\s+)/)) {
    if (part === "") continue;
    if (/^\s+$/.test(part)) {
      line.appendChild(document.createTextNode(part));
      continue;
    }
    if (copies.has(word)) line.appendChild(el("mark", { class: "copy", title: "copied from the source" }, part));
    else line.appendChild(document.createTextNode(part));
    word += 1;
  }
  return line;
}

function pieceRow(t) {
  const row = el("div", { class: "pieces", "aria-label": "target pieces shaded by probability" });
  t.tokens.forEach((piece, k) => {
    const logProb = t.token_scores[k];
    const p = Math.exp(logProb);
    const span = el("span", { class: "piece", "data-prob": p.toFixed(4),
      title: `${piece}   p = ${p.toFixed(3)}   (log-probability ${fmt(logProb)})` }, piece);
    span.style.backgroundColor = `rgba(43, 87, 151, ${(0.08 + 0.82 * p).toFixed(3)})`;
    span.style.color = p > 0.55 ? "#fff" : "#1d2330";
    row.appendChild(span);
  });
  return row;
}

function nbestList(nbest) {
  const list = el("ol", { class: "nbest", "aria-label": "n-best list" });
  for (const h of nbest) {
    const item = el("li");
    item.appendChild(el("span", {}, h.translation));
    item.appendChild(el("span", { class: "score" }, fmt(h.score)));
    list.appendChild(item);
  }
  return list;
}

// -- looking inside one sentence -------------------------------------------------------------------
async function select(page, index) {
  page.selected = index;
  for (const item of byId("output").children) {
    item.classList.toggle("selected", Number(item.getAttribute("data-index")) === index);
  }
  byId("inside-number").textContent = String(index + 1);
  byId("inside-panel").hidden = false;
  showError("inside-error", "");
  if (page.lines[index].trim() === "") {
    showError("inside-error", "This line is empty: there is nothing to look inside.");
    return;
  }
  const attention = hasAttention(page.model);
  const body = { ...page.options, text: page.lines[index], attention, alignments: attention, trace: true };
  let traceNote = "";
  const note = byId("attention-note");
  note.hidden = !body.sample;
  note.textContent = body.sample ? "Sampling: this is the attention of a new sample of this line alone "
    + "(with the same seed), which may differ from the one above when several lines were sampled together." : "";
  if (body.sample) {
    body.trace = false;
    traceNote = "Sampling draws one token per step: there is no beam to draw. Choose beam (or greedy) search.";
  } else if (body.greedy) {
    delete body.greedy;
    body.beam = 1;  // greedy search is beam search with k = 1
  }
  byId("status").textContent = "Looking inside…";
  const inside = await insideOf(body, (message) => { traceNote = message; });
  byId("status").textContent = "";
  if (page.selected !== index || !inside) return;
  page.inside = inside;
  renderAttention(page);
  renderLinks(page);
  renderTree(page, inside.trace, traceNote);
}

async function insideOf(body, noteTrace) {
  // the trace may be refused (a text too long to trace): then the attention alone
  try {
    return (await api("/translate", body)).translations[0];
  } catch (e) {
    if (!body.trace) {
      showError("inside-error", e.message);
      return null;
    }
    noteTrace(e.message);
    try {
      return (await api("/translate", { ...body, trace: false })).translations[0];
    } catch (e2) {
      showError("inside-error", e2.message);
      return null;
    }
  }
}

// -- attention heatmap -----------------------------------------------------------------------------
function fillLayerHeadPickers(att) {
  const layer = clear(byId("layer"));
  const head = clear(byId("head"));
  if (att.layers === 1 && att.heads === 1) {
    layer.appendChild(el("option", { value: "0" }, "the attention"));
    head.appendChild(el("option", { value: "0" }, "—"));
    head.disabled = true;
    return;
  }
  head.disabled = false;
  for (let l = 0; l < att.layers; l++) layer.appendChild(el("option", { value: String(l) }, `layer ${l + 1}`));
  layer.appendChild(el("option", { value: "mean" }, "mean of layers"));
  layer.value = String(att.layers - 1);
  head.appendChild(el("option", { value: "mean" }, "mean of heads"));
  for (let h = 0; h < att.heads; h++) head.appendChild(el("option", { value: String(h) }, `head ${h + 1}`));
  head.value = "mean";
}

function attentionMatrix(att, layerChoice, headChoice) {
  // [target][source]: one layer/head or their mean
  const layers = layerChoice === "mean" ? [...Array(att.layers).keys()] : [Number(layerChoice)];
  const heads = headChoice === "mean" ? [...Array(att.heads).keys()] : [Number(headChoice)];
  const rows = att.target.length;
  const cols = att.source.length;
  const m = Array.from({ length: rows }, () => new Array(cols).fill(0));
  for (const l of layers) {
    for (const h of heads) {
      const w = att.weights[l][h];
      for (let t = 0; t < rows; t++) for (let s = 0; s < cols; s++) m[t][s] += w[t][s];
    }
  }
  const n = layers.length * heads.length;
  return m.map((row) => row.map((x) => x / n));
}

function renderAttention(page) {
  const att = page.inside.attention;
  const box = clear(byId("heatmap"));
  if (!att) {
    box.appendChild(el("p", { class: "muted" }, "This model has no attention (an RNN without attention)."));
    return;
  }
  fillLayerHeadPickers(att);
  drawHeatmap(att);
}

function textWidth(text) {
  return 7.3 * Array.from(text).length;
}

function drawHeatmap(att) {
  const box = clear(byId("heatmap"));
  const m = attentionMatrix(att, byId("layer").value, byId("head").value);
  const cell = 26;
  const left = 14 + Math.max(...att.target.map(textWidth));
  const top = 14 + 0.8 * Math.max(...att.source.map(textWidth));
  const width = left + att.source.length * cell + 12;
  const height = top + att.target.length * cell + 12;
  const root = svgEl("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "cross-attention heatmap: target pieces (rows) by source pieces (columns)" });
  const srcLabels = att.source.map((piece, s) => {
    const x = left + s * cell + cell / 2;
    const bg = svgEl("rect", { class: "src-bg", x: x - cell / 2 + 1, y: 2, width: cell - 2, height: top - 4,
      fill: "#d9480f", "fill-opacity": 0 });
    const label = svgEl("text", { class: "label src-label", x, y: top - 6, "text-anchor": "start",
      transform: `rotate(-55 ${x} ${top - 6})` }, piece);
    root.appendChild(bg);
    root.appendChild(label);
    return { bg, label };
  });
  att.target.forEach((piece, t) => root.appendChild(heatmapRow(m, t, piece, { left, top, cell, srcLabels, att })));
  box.appendChild(root);
}

function heatmapRow(m, t, piece, g) {
  const row = svgEl("g", { class: "row", "data-row": t });
  const label = svgEl("text", { class: "label tgt-label", x: g.left - 6, y: g.top + t * g.cell + g.cell / 2 + 4,
    "text-anchor": "end" }, piece);
  row.appendChild(label);
  m[t].forEach((w, s) => {
    const rect = svgEl("rect", { class: "cell", x: g.left + s * g.cell, y: g.top + t * g.cell, width: g.cell,
      height: g.cell, fill: "#2b5797", "fill-opacity": Math.max(0.02, w).toFixed(3), "data-weight": w.toFixed(4) });
    rect.appendChild(svgEl("title", {}, `${piece} → ${g.att.source[s]}: ${w.toFixed(3)}`));
    row.appendChild(rect);
  });
  const strongest = Math.max(...m[t]);
  row.addEventListener("mouseenter", () => {
    row.classList.add("row-active");
    label.classList.add("active");
    g.srcLabels.forEach(({ bg, label: src }, s) => {
      bg.setAttribute("fill-opacity", (0.75 * m[t][s]).toFixed(3));
      src.classList.toggle("active", m[t][s] >= 0.5 * strongest);
    });
  });
  row.addEventListener("mouseleave", () => {
    row.classList.remove("row-active");
    label.classList.remove("active");
    g.srcLabels.forEach(({ bg, label: src }) => {
      bg.setAttribute("fill-opacity", "0");
      src.classList.remove("active");
    });
  });
  return row;
}

// -- word alignment as links -----------------------------------------------------------------------
function wordBoxes(words, y) {
  let x = 6;
  return words.map((word) => {
    const w = textWidth(word) + 12;
    const box = { word, x, y, w, cx: x + w / 2 };
    x += w + 8;
    return box;
  });
}

function renderLinks(page) {
  const box = clear(byId("links"));
  const result = page.inside;
  const links = result.alignment || [];
  byId("pharaoh").textContent = links.map(([s, t]) => `${s}-${t}`).join(" ");
  const src = wordBoxes(page.lines[page.selected].split(/\s+/).filter(Boolean), 8);
  const tgt = wordBoxes(result.translation.split(/\s+/).filter(Boolean), 110);
  const width = Math.max(...[...src, ...tgt].map((b) => b.x + b.w), 100) + 8;
  const root = svgEl("svg", { width, height: 142, viewBox: `0 0 ${width} 142`, role: "img",
    "aria-label": "word alignment: source words (top) linked to target words (bottom)" });
  const lines = links.filter(([s, t]) => src[s] && tgt[t]).map(([s, t]) => {
    const line = svgEl("line", { class: "link", x1: src[s].cx, y1: 32, x2: tgt[t].cx, y2: 110, "data-link": `${s}-${t}` });
    root.appendChild(line);
    return { s, t, line };
  });
  const draw = (b, side, index) => {
    const rect = svgEl("rect", { class: "word-box", x: b.x, y: b.y, width: b.w, height: 24, rx: 4 });
    const group = svgEl("g", { class: `word ${side}` });
    group.appendChild(rect);
    group.appendChild(svgEl("text", { x: b.cx, y: b.y + 16, "text-anchor": "middle" }, b.word));
    const mine = lines.filter((l) => (side === "src" ? l.s : l.t) === index);
    group.addEventListener("mouseenter", () => { rect.classList.add("active"); mine.forEach((l) => l.line.classList.add("active")); });
    group.addEventListener("mouseleave", () => { rect.classList.remove("active"); mine.forEach((l) => l.line.classList.remove("active")); });
    root.appendChild(group);
  };
  src.forEach((b, i) => draw(b, "src", i));
  tgt.forEach((b, i) => draw(b, "tgt", i));
  box.appendChild(root);
}

// -- the beam search tree --------------------------------------------------------------------------
const TREE = { colW: 150, rowH: 36, nodeW: 136, nodeH: 28, left: 12, top: 26 };

function keptIndex(steps) {
  // per step: kept row -> candidate index
  return steps.map((cands) => {
    const rows = {};
    cands.forEach((c, i) => { if (c.kept !== null && c.kept !== undefined) rows[c.kept] = i; });
    return rows;
  });
}

function pathTo(trace, kept, step, index) {
  const path = [index];
  let parent = trace.steps[step][index].parent;
  for (let s = step - 1; s >= 0; s--) {
    const i = kept[s][parent];
    path.unshift(i);
    parent = trace.steps[s][i].parent;
  }
  return path;
}

function lengthPenalty(trace, length) {
  const { kind, alpha } = trace.length_penalty;
  if (kind === "none" || alpha === 0) return 1;
  return Math.pow(kind === "gnmt" ? (5 + length) / 6 : length, alpha);
}

function renderTree(page, trace, note) {
  const box = clear(byId("tree"));
  clear(byId("finished"));
  byId("tree-summary").textContent = note || "";
  if (!trace) {
    if (!note) byId("tree-summary").textContent = "No search tree for this line.";
    return;
  }
  page.tree = { trace, kept: keptIndex(trace.steps) };
  const svg = drawTree(page.tree);
  box.appendChild(svg);
  page.zoom = 1;
  applyZoom(page);
  byId("tree-summary").textContent = treeSummary(page.tree) + (note ? ` ${note}` : "");
  finishedTable(page.tree);
}

function nodePosition(s, i) {
  return { x: TREE.left + (s + 1) * TREE.colW, y: TREE.top + i * TREE.rowH };
}

function drawTree(tree) {
  const { trace, kept } = tree;
  const rows = Math.max(1, ...trace.steps.map((c) => c.length));
  const width = TREE.left + (trace.steps.length + 1) * TREE.colW + 10;
  const height = TREE.top + rows * TREE.rowH + 10;
  const root = svgEl("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "data-width": width, "data-height": height, "aria-label": "beam search tree" });
  const best = new Set(trace.best.map((i, s) => `${s}:${i}`));
  const edges = svgEl("g", { class: "edges" });
  const nodes = svgEl("g", { class: "nodes" });
  root.appendChild(edges);
  root.appendChild(nodes);
  root.appendChild(svgEl("text", { class: "step-label", x: TREE.left, y: 14 }, "start"));
  nodes.appendChild(treeNode({ x: TREE.left, y: TREE.top }, "<s>", "", "node root best", "the start (bos)"));
  trace.steps.forEach((cands, s) => {
    root.appendChild(svgEl("text", { class: "step-label", x: nodePosition(s, 0).x, y: 14 }, `step ${s + 1}`));
    cands.forEach((c, i) => {
      const onBest = best.has(`${s}:${i}`);
      const from = s === 0 ? { x: TREE.left, y: TREE.top } : nodePosition(s - 1, kept[s - 1][c.parent]);
      const to = nodePosition(s, i);
      edges.appendChild(treeEdge(from, to, c, onBest));
      const kind = c.finished ? "finished" : (c.kept !== null ? "kept" : "dropped");
      const label = c.finished ? `= ${fmt(c.final_score, 2)}` : fmt(c.score, 2);
      nodes.appendChild(treeNode(to, c.piece, label, `node ${kind}${onBest ? " best" : ""}`, nodeTitle(c, s),
        { "data-step": s, "data-index": i }));
    });
  });
  return root;
}

function treeEdge(from, to, c, onBest) {
  const x1 = from.x + TREE.nodeW;
  const y1 = from.y + TREE.nodeH / 2;
  const y2 = to.y + TREE.nodeH / 2;
  const mid = (x1 + to.x) / 2;
  const kind = onBest ? "edge best" : (c.kept !== null || c.finished ? "edge kept" : "edge");
  return svgEl("path", { class: kind, d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${to.x},${y2}` });
}

function treeNode(pos, piece, label, kind, title, data) {
  const g = svgEl("g", { class: kind, transform: `translate(${pos.x},${pos.y})`, ...(data || {}) });
  g.appendChild(svgEl("rect", { width: TREE.nodeW, height: TREE.nodeH, rx: 5 }));
  const shown = Array.from(piece).length > 11 ? Array.from(piece).slice(0, 10).join("") + "…" : piece;
  g.appendChild(svgEl("text", { class: "piece-text", x: 6, y: 18 }, shown));
  g.appendChild(svgEl("text", { class: "score-text", x: TREE.nodeW - 6, y: 18, "text-anchor": "end" }, label));
  g.appendChild(svgEl("title", {}, title));
  return g;
}

function nodeTitle(c, s) {
  const lines = [`${c.piece}  (step ${s + 1}, from hypothesis ${c.parent + 1} of step ${s})`,
    `token log-probability ${fmt(c.log_prob)}, hypothesis log-probability ${fmt(c.score)}`];
  if (c.finished) lines.push(`finished: score after the length penalty ${fmt(c.final_score)}`);
  else if (c.kept !== null) lines.push(`kept as open hypothesis ${c.kept + 1}`);
  else lines.push(c.piece === "</s>" ? "an end outside the beam's best k: dropped" : "dropped: not among the best k");
  return lines.join("\n");
}

function finishedList(tree) {
  const { trace, kept } = tree;
  const out = [];
  trace.steps.forEach((cands, s) => cands.forEach((c, i) => {
    if (!c.finished) return;
    const path = pathTo(trace, kept, s, i);
    const pieces = path.slice(0, -1).map((j, k) => trace.steps[k][j].piece);
    out.push({ step: s, index: i, pieces, length: s + 1, logProb: c.score, score: c.final_score });
  }));
  return out.sort((a, b) => b.score - a.score);  // stable: ties in the order the search found them
}

function treeSummary(tree) {
  const { trace } = tree;
  const all = trace.steps.reduce((n, c) => n + c.length, 0);
  const finished = finishedList(tree);
  const lp = trace.length_penalty;
  let text = `Beam k = ${trace.beam}, length penalty ${lp.kind} (α = ${lp.alpha}). ${trace.steps.length} steps, `
    + `${all} candidates, ${finished.length} finished hypotheses. Returned: score ${fmt(trace.score)}.`;
  if (finished.length > 1) {
    const top = finished[0];
    const likeliest = finished.reduce((a, b) => (b.logProb > a.logProb ? b : a));
    if (likeliest !== top) {
      text += ` The returned hypothesis (${top.length} pieces with </s>, log-probability ${fmt(top.logProb)}) `
        + `is less likely than one of ${likeliest.length} pieces (${fmt(likeliest.logProb)}), but the length `
        + `penalty divides by ${lengthPenalty(trace, top.length).toFixed(3)} against `
        + `${lengthPenalty(trace, likeliest.length).toFixed(3)}: ${fmt(top.score)} beats ${fmt(likeliest.score)}.`;
    }
  }
  return text;
}

function finishedTable(tree) {
  const table = clear(byId("finished"));
  const head = el("tr");
  for (const h of ["#", "hypothesis", "length (with </s>)", "log-probability", "length penalty", "score"]) {
    head.appendChild(el("th", {}, h));
  }
  table.appendChild(head);
  finishedList(tree).forEach((f, rank) => {
    const row = el("tr", { class: rank === 0 ? "best" : "" });
    const penalty = lengthPenalty(tree.trace, f.length);
    const cells = [String(rank + 1), f.pieces.join(" ") || "(empty)", String(f.length), fmt(f.logProb),
      penalty.toFixed(3), fmt(f.score)];
    cells.forEach((text, k) => row.appendChild(el("td", { class: k >= 2 ? "num" : "" }, text)));
    table.appendChild(row);
  });
}

function applyZoom(page) {
  const svg = byId("tree").querySelector("svg");
  if (!svg) return;
  svg.setAttribute("width", String(Number(svg.getAttribute("data-width")) * page.zoom));
  svg.setAttribute("height", String(Number(svg.getAttribute("data-height")) * page.zoom));
}

function fitZoom(page) {
  const svg = byId("tree").querySelector("svg");
  if (!svg) return;
  const available = byId("tree").clientWidth - 4;
  page.zoom = Math.min(1, Math.max(0.2, available / Number(svg.getAttribute("data-width"))));
  applyZoom(page);
}

// -- tabs and start --------------------------------------------------------------------------------
function showTab(name) {
  const attention = name === "attention";
  byId("tab-attention").setAttribute("aria-selected", String(attention));
  byId("tab-tree").setAttribute("aria-selected", String(!attention));
  byId("attention-view").hidden = !attention;
  byId("tree-view").hidden = attention;
}

function wire(page) {
  byId("form").addEventListener("submit", (ev) => { ev.preventDefault(); translate(page); });
  byId("source").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      translate(page);
    }
  });
  byId("search").addEventListener("change", showSearchFields);
  byId("model").addEventListener("change", () => applyDefaults(page));
  const redraw = () => { if (page.inside && page.inside.attention) drawHeatmap(page.inside.attention); };
  byId("layer").addEventListener("change", redraw);
  byId("head").addEventListener("change", redraw);
  byId("tab-attention").addEventListener("click", () => showTab("attention"));
  byId("tab-tree").addEventListener("click", () => showTab("tree"));
  byId("zoom-in").addEventListener("click", () => { page.zoom = Math.min(4, page.zoom * 1.25); applyZoom(page); });
  byId("zoom-out").addEventListener("click", () => { page.zoom = Math.max(0.2, page.zoom / 1.25); applyZoom(page); });
  byId("zoom-fit").addEventListener("click", () => fitZoom(page));
}

async function start() {
  const page = { info: null, zoom: 1 };
  wire(page);
  try {
    page.info = await api("/info");
  } catch (e) {
    showError("error", e.message);
    return;
  }
  const picker = byId("model");
  for (const m of page.info.models) picker.appendChild(el("option", { value: m.name }, m.name));
  picker.value = page.info.default_model;
  byId("model-label").hidden = page.info.models.length < 2;
  applyDefaults(page);
  document.body.setAttribute("data-ready", "true");
}

document.addEventListener("DOMContentLoaded", start);
