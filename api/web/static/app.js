// The chat page. Asks POST /v1/answer (one JSON answer with its citations, support and label) and shows
// each answer with its sources' provenance. Text from the service or the documents is only ever set with
// textContent or as an attribute value, never parsed as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "rag.apiToken";
  const MODE_KEY = "rag.answerMode";
  const READY_POLL_MS = 2000;

  // Why the service abstained, in plain words (the codes are README "Answering").
  const REASONS = {
    no_relevant_passage: "No signed source is close enough to this question, so nothing was generated.",
    does_not_answer: "Sources on the topic were found, but no passage in them answers this question.",
    unsupported_answer: "A draft answer was written, but no sentence of it is supported by the sources, so none was released.",
    degenerate_answer: "The model's draft repeated itself, so it was not released.",
    grounding_check_failed: "The check that compares answers with their sources could not run, so the answer was withheld.",
    empty_knowledge_base: "The knowledge base holds no documents yet: a curator has to ingest some first.",
    instruction: "The only answer found was an instruction written inside a source, so it was not released.",
    prompt_text: "The draft repeated the service's own prompt, so it was not released.",
    unlisted_url: "The draft named a web address that no source holds, so it was not released.",
    forged_citation: "The draft cited a source number that does not exist, so it was not released.",
    markup: "The only answer found held an image, a link or HTML that a chat app would display, so it was not released.",
  };
  // Why a checked sentence was not released (only counts and codes ever leave the service).
  const REJECTIONS = {
    missing_terms: "words not in the source",
    low_score: "too little support",
    negation: "a negation the source does not make",
    order: "words in another order than the source's",
    restates_question: "restated the question",
    degenerate_answer: "repetition",
    withheld: "withheld with the rest",
    unsupported: "unsupported",
    instruction: "an instruction from a source",
    prompt_text: "the service's own prompt",
    unlisted_url: "a web address no source holds",
    forged_citation: "a citation that does not exist",
    markup: "an image, a link or HTML",
  };
  const ORIGINS = {
    human: "Signed as written by people.",
    "human-edited-ai": "Signed as machine-written text edited by people.",
  };

  let turns = 0;
  let busy = false;

  // ---- small DOM helpers (text only) ----

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
    }
    return node;
  }

  function $(id) {
    return document.getElementById(id);
  }

  function facts(rows) {
    const list = el("dl", { class: "facts" });
    for (const [term, value] of rows) {
      if (value === null || value === undefined || value === "") continue;
      list.append(el("div", { class: "fact" }, el("dt", {}, term), el("dd", {}, value)));
    }
    return list;
  }

  // A hash shown short; the whole value on hover, on keyboard focus, and to screen readers.
  function hash(value, label, length) {
    if (!value) return null;
    const short = value.slice(0, length || 12) + "…";
    return el(
      "code",
      { class: "hash", tabindex: "0", title: value, "data-full": value, "aria-label": `${label} ${value}` },
      el("span", { "aria-hidden": "true" }, short),
    );
  }

  function seconds(ms) {
    return typeof ms === "number" ? `${(ms / 1000).toFixed(1)} s` : null;
  }

  // ---- the API ----

  class ApiError extends Error {
    constructor(status, code, message, retryAfter) {
      super(message || `HTTP ${status}`);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (_) {
      return "";
    }
  }

  async function api(path, options) {
    const headers = { Accept: "application/json" };
    if (options && options.body) headers["Content-Type"] = "application/json";
    const bearer = token();
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    let response;
    try {
      response = await fetch(path, { cache: "no-store", credentials: "same-origin", ...options, headers });
    } catch (_) {
      throw new ApiError(0, "unreachable", "");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const error = (body && body.error) || {};
      throw new ApiError(response.status, error.code, error.message, response.headers.get("Retry-After"));
    }
    return body;
  }

  // What a person should read for a failed request; the server's own sentence is shown beside it.
  function explain(error) {
    const wait = error.retryAfter ? ` Try again in ${error.retryAfter} s.` : " Try again shortly.";
    switch (error.status) {
      case 0:
        return "The service could not be reached. Is the server still running?";
      case 401:
        return token()
          ? "The server did not accept this tab's API token (unknown or revoked). Enter another under “API token” at the top of the page."
          : "The server asks for an API token. Enter one under “API token” at the top of the page.";
      case 403:
        return "Your API token is valid, but its role is not allowed to do this. Ask the operator for a token with the right role.";
      case 429:
        return "Too many requests with this token." + wait;
      case 503:
        return error.code === "busy" ? "The service is busy answering other questions." + wait : "The service cannot answer right now." + wait;
      case 504:
        return "The answer was not ready in time; nothing unchecked was shown.";
      default:
        return error.status >= 500 ? "The service failed on this request." : "The service refused this request.";
    }
  }

  function problem(error) {
    const parts = [el("p", {}, explain(error))];
    if (error.status) {
      const said = error.message && error.message !== `HTTP ${error.status}` ? `The server said: ${error.message} ` : "";
      parts.push(el("p", { class: "muted" }, `${said}(HTTP ${error.status}${error.code ? `, ${error.code}` : ""})`));
    }
    return el("div", { class: "problem", role: "alert" }, parts);
  }

  // ---- status and token ----

  async function checkStatus() {
    const status = $("status");
    let ready;
    try {
      ready = await api("/readyz");
    } catch (error) {
      if (error.status === 503 && error.code === undefined) {
        status.textContent = "Loading the models… Questions asked now wait until they are loaded.";
        setTimeout(checkStatus, READY_POLL_MS);
      } else {
        status.textContent = error.status === 503 ? "The models could not be loaded: the operator has to look at the server log." : explain(error);
      }
      return;
    }
    status.textContent = `Ready. Reader: ${ready.generator || "unknown"}.`;
    try {
      const listed = await api("/v1/documents");
      status.textContent += ` ${listed.count} signed document${listed.count === 1 ? "" : "s"} in the knowledge base.`;
    } catch (error) {
      if (error.status === 401 || error.status === 403) status.textContent += " " + explain(error);
    }
  }

  function showTokenState() {
    $("token-state").textContent = token() ? "(set for this tab)" : "(none)";
  }

  function setToken(value) {
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      // storage disabled: the token cannot be kept
    }
    $("token").value = "";
    showTokenState();
    checkStatus();
  }

  // ---- rendering one answer ----

  // The answer text with each [n] turned into a link to its citation card.
  function answerText(text, turn, cited) {
    const paragraph = el("p", { class: "answer-text" });
    let last = 0;
    for (const match of text.matchAll(/\[(\d+)\]/g)) {
      paragraph.append(text.slice(last, match.index));
      const n = match[1];
      paragraph.append(
        cited.has(n)
          ? el("a", { class: "marker", href: `#t${turn}-c${n}`, "aria-label": `source ${n}` }, `[${n}]`)
          : `[${n}]`,
      );
      last = match.index + match[0].length;
    }
    paragraph.append(text.slice(last));
    return paragraph;
  }

  // The excerpt, with the quoted words marked when the answer quotes this passage.
  function excerpt(text, quoted) {
    const block = el("blockquote", { class: "excerpt" });
    const at = quoted ? text.indexOf(quoted) : -1;
    if (at < 0) {
      block.append(text);
    } else {
      block.append(text.slice(0, at), el("mark", {}, quoted), text.slice(at + quoted.length));
    }
    return block;
  }

  function documentPath(docId) {
    return "/v1/documents/" + docId.split("/").map(encodeURIComponent).join("/");
  }

  async function showProvenance(button, panel, docId) {
    const open = button.getAttribute("aria-expanded") === "true";
    button.setAttribute("aria-expanded", String(!open));
    button.textContent = open ? "Show the provenance record" : "Hide the provenance record";
    panel.hidden = open;
    if (open || panel.dataset.loaded) return;
    panel.textContent = "Loading the provenance record…";
    try {
      const doc = await api(documentPath(docId));
      panel.dataset.loaded = "1";
      panel.replaceChildren(
        facts([
          ["Document sha256", hash(doc.sha256, "document sha256", 16)],
          ["Authors", (doc.authors || []).join(", ")],
          ["Created", doc.created],
          ["Source", doc.source_uri],
          ["Curator", doc.curator],
          ["Reviewed", doc.reviewed_at],
          ["Signing key", hash(doc.signer_keyid, "signing key id", 16)],
          ["Manifest sha256", hash(doc.manifest_sha256, "manifest sha256", 16)],
          ["Ledger entry", doc.ledger_index !== undefined ? `#${doc.ledger_index}, ${doc.ingested_at || ""}` : null],
          ["Chunks", doc.chunks],
          ["Status", doc.status],
        ]),
      );
    } catch (error) {
      panel.replaceChildren(problem(error));
    }
  }

  function citationCard(citation, turn, quotation) {
    const origin = citation.origin || "unknown";
    const quoted = quotation && quotation.passage === citation.n ? quotation.text : null;
    const panelId = `t${turn}-p${citation.n}`;
    const panel = el("div", { class: "provenance", id: panelId, hidden: true });
    const toggle = el("button", { type: "button", class: "link-button", "aria-expanded": "false", "aria-controls": panelId }, "Show the provenance record");
    toggle.addEventListener("click", () => showProvenance(toggle, panel, citation.doc_id));
    return el(
      "li",
      { class: "card", id: `t${turn}-c${citation.n}` },
      el(
        "div",
        { class: "card-head" },
        el("span", { class: "num" }, `[${citation.n}]`),
        el("h4", { class: "title" }, citation.title || citation.doc_id),
        el("span", { class: `badge origin-${origin.replace(/[^a-z-]/g, "")}`, title: ORIGINS[origin] || "" }, origin),
      ),
      facts([
        ["Signed by", el("span", {}, el("span", { class: "signer" }, citation.signer_name || "unknown"), " ", hash(citation.signer_keyid, "key id", 8))],
        ["Licence", citation.license],
        ["Document", citation.doc_id],
        ["Chunk sha256", hash(citation.chunk_sha256, "chunk sha256", 12)],
        ["Retrieval score", typeof citation.score === "number" ? citation.score.toFixed(2) : null],
      ]),
      excerpt(citation.excerpt || "", quoted),
      el(
        "p",
        { class: "card-links" },
        el("a", { href: documentPath(citation.doc_id), class: "provenance-link" }, "Provenance record (JSON)"),
        " ",
        toggle,
      ),
      panel,
    );
  }

  function rejectedWords(rejected) {
    if (!rejected || !rejected.count) return null;
    const reasons = Object.entries(rejected.reasons || {})
      .map(([code, count]) => `${REJECTIONS[code] || code}${count > 1 ? ` ×${count}` : ""}`)
      .join(", ");
    const noun = rejected.count === 1 ? "sentence was" : "sentences were";
    return `${rejected.count} checked ${noun} not released (${reasons}).`;
  }

  function whatItIs(answer) {
    const label = answer.label || {};
    if (answer.abstained) return "No answer was released.";
    if (label.extractive) {
      const by = label.selected_by ? `, chosen by ${label.selected_by}` : "";
      return label.ai_generated
        ? `A quotation of a source signed as ${label.source_origin || "not human"}${by}: not purely human text.`
        : `A quotation: the words are the signed source's${by}. Nothing was generated.`;
    }
    if (label.ai_generated) return `Machine-generated by ${label.generator || "an unnamed model"}, then checked sentence by sentence against the sources.`;
    return null;
  }

  function support(answer) {
    if (answer.abstained || !(answer.support || []).length) return null;
    if ((answer.label || {}).extractive) return "verbatim in the cited source";
    return answer.support.map((s) => `[${s.passage}] ${Number(s.score).toFixed(2)}`).join(", ");
  }

  function aiLabel(answer) {
    const label = answer.label || {};
    const watermark = label.watermark
      ? `${label.watermark.scheme}, key ${label.watermark.key_id}`
      : label.extractive
        ? "none: nothing was generated"
        : "none";
    const rows = [
      ["What this is", whatItIs(answer)],
      ["AI-generated", answer.abstained ? null : label.ai_generated ? "yes" : "no"],
      ["Generator", label.generator],
      ["Watermark", answer.abstained ? null : watermark],
      ["Corpus version (ledger head)", hash(label.corpus_ledger_head, "ledger head", 16)],
      ["Answer mode", answer.answer_mode],
      ["Support", support(answer)],
      ["Checked, not released", rejectedWords(answer.rejected)],
      ["Time", seconds((answer.timings || {}).total_ms)],
    ];
    const box = el("section", { class: "label", "aria-label": "About this answer" }, el("h4", {}, "About this answer"), facts(rows));
    if (label.notice && !answer.abstained) box.append(el("p", { class: "notice" }, label.notice));
    return box;
  }

  function renderAnswer(slot, answer, turn) {
    const citations = answer.citations || [];
    const parts = [];
    if (answer.abstained) {
      const why = REASONS[answer.reason] || `The service gave no answer (${answer.reason || "no reason given"}).`;
      parts.push(
        el(
          "div",
          { class: "abstention" },
          el("h3", {}, "No answer from the verified sources"),
          el("p", { class: "why" }, why),
          el("p", { class: "muted" }, answer.answer),
        ),
      );
    } else {
      parts.push(el("h3", { class: "visually-hidden" }, "Answer"));
      parts.push(answerText(answer.answer, turn, new Set(citations.map((c) => String(c.n)))));
      if (citations.length) {
        const quotation = (answer.label || {}).quotation;
        parts.push(
          el("h4", { class: "sources-head" }, citations.length === 1 ? "Source" : "Sources"),
          el("ol", { class: "cards" }, citations.map((c) => citationCard(c, turn, quotation))),
        );
      }
    }
    parts.push(aiLabel(answer));
    slot.removeAttribute("aria-busy");
    slot.className = answer.abstained ? "answer abstained" : "answer";
    slot.replaceChildren(...parts);
    const said = answer.abstained ? `No answer. ${REASONS[answer.reason] || ""}` : `Answer: ${answer.answer}`;
    $("announce").textContent = said;
  }

  // ---- asking ----

  function currentMode() {
    const chosen = document.querySelector('input[name="mode"]:checked');
    return chosen ? chosen.value : "extract";
  }

  async function ask(question) {
    turns += 1;
    const turn = turns;
    const slot = el("article", { class: "answer pending", "aria-busy": "true" }, el("p", { class: "waiting" }, "Looking for signed sources and checking the answer…"));
    const item = el(
      "li",
      { class: "turn", id: `t${turn}` },
      el("div", { class: "asked" }, el("span", { class: "who" }, "You asked"), el("p", { class: "question" }, question)),
      slot,
    );
    $("conversation").append(item);
    $("empty").hidden = true;
    item.scrollIntoView({ block: "start" });
    try {
      const answer = await api("/v1/answer", { method: "POST", body: JSON.stringify({ question, answer_mode: currentMode() }) });
      renderAnswer(slot, answer, turn);
    } catch (error) {
      slot.removeAttribute("aria-busy");
      slot.className = "answer failed";
      slot.replaceChildren(problem(error));
      $("announce").textContent = explain(error);
    }
  }

  async function submit(event) {
    event.preventDefault();
    const box = $("question");
    const question = box.value.trim();
    if (!question || busy) {
      box.focus();
      return;
    }
    busy = true;
    $("ask-button").disabled = true;
    box.value = "";
    try {
      await ask(question);
    } finally {
      busy = false;
      $("ask-button").disabled = false;
      box.focus();
    }
  }

  function start() {
    $("ask").addEventListener("submit", submit);
    $("question").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("ask").requestSubmit();
      }
    });
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      setToken($("token").value.trim());
    });
    $("forget-token").addEventListener("click", () => setToken(""));
    $("clear").addEventListener("click", () => {
      $("conversation").replaceChildren();
      $("empty").hidden = false;
      $("question").focus();
    });
    let saved = null;
    try {
      saved = sessionStorage.getItem(MODE_KEY);
    } catch (_) {
      saved = null;
    }
    for (const radio of document.querySelectorAll('input[name="mode"]')) {
      if (radio.value === saved) radio.checked = true;
      radio.addEventListener("change", () => {
        try {
          sessionStorage.setItem(MODE_KEY, radio.value);
        } catch (_) {
          // storage disabled: the choice lasts until the page is reloaded
        }
      });
    }
    showTokenState();
    checkStatus();
  }

  start();
})();
