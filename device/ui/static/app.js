// Haven kiosk page: the check-in flow, languages, live status, idle reset.
// Patient data lives only in `flow` (memory) and the form fields; reset() wipes both.
// keyboard.js and staff.js are loaded first and share this page's globals.
"use strict";

const ICONS = {
  sick: '<circle cx="32" cy="32" r="22" fill="none" stroke="currentColor" stroke-width="5"/><path d="M22 26h6M36 26h6M22 44q10-8 20 0" stroke="currentColor" stroke-width="5" fill="none"/>',
  injury: '<rect x="8" y="22" width="48" height="20" rx="10" transform="rotate(-35 32 32)" fill="none" stroke="currentColor" stroke-width="5"/><path d="M28 28l8 8M36 28l-8 8" stroke="currentColor" stroke-width="4"/>',
  child: '<circle cx="32" cy="16" r="9" fill="currentColor"/><path d="M18 34h28M32 28v18M32 46l-9 12M32 46l9 12" stroke="currentColor" stroke-width="6" fill="none"/>',
  pregnancy: '<circle cx="30" cy="11" r="8" fill="currentColor"/><path d="M28 22v36M28 30q18 6 10 22" stroke="currentColor" stroke-width="6" fill="none"/>',
  medicine: '<rect x="6" y="22" width="52" height="20" rx="10" fill="none" stroke="currentColor" stroke-width="5"/><path d="M32 22v20" stroke="currentColor" stroke-width="5"/>',
  results: '<rect x="12" y="8" width="40" height="50" rx="4" fill="none" stroke="currentColor" stroke-width="5"/><path d="M20 24h24M20 34h24M20 44h14" stroke="currentColor" stroke-width="4"/>',
  other: '<circle cx="14" cy="32" r="6" fill="currentColor"/><circle cx="32" cy="32" r="6" fill="currentColor"/><circle cx="50" cy="32" r="6" fill="currentColor"/>',
};
const PASSPORT_RE = /^[A-Z0-9]{5,20}$/;
// A short patient code has its dash; without one, a value is a passport number (SPEC.md
// "Short patient codes", protocol/crdt/short_code.py is_code). The server checks it again.
const CODE_RE = /^[0-9A-Z]{4}-[0-9A-Z]{4}$/;

let I18N = null;
let config = { idle_seconds: 60, languages: ["en"], reasons: [] };
let lang = "en";
let flow = {};
let staffToken = null;
let lastActivity = Date.now();
let live = { state: "pending", sent_upto: 0 };
let busy = false;
let waitTimer = null;
let nameScript = null;  // "latin" when a patient switched the name keyboard to Latin letters

const $ = (id) => document.getElementById(id);
const t = (key, n) => {
  const table = (I18N && I18N[lang]) || {};
  const text = pluralForm(table[key] || (I18N && I18N.en[key]) || key, n);
  return n === undefined ? text : text.replace("{n}", String(n));
};

// A string with a count is an object keyed by CLDR plural category ("one", "few", ...);
// the browser's CLDR rules for the page's language pick the form.
const pluralRules = {};
function pluralForm(text, n) {
  if (typeof text === "string") return text;
  const code = document.documentElement.lang;
  pluralRules[code] = pluralRules[code] || new Intl.PluralRules(code);
  return text[n === undefined ? "other" : pluralRules[code].select(Number(n))] || text.other;
}

function show(id) {
  for (const s of document.querySelectorAll(".screen")) s.hidden = s.id !== id;
  flow.screen = id;
  renderSpeak();
  const input = $(id).querySelector("input");
  if (input) input.focus();
}

// Forward one step, remembering where from; Back returns there. The fields keep what was
// typed (only reset() empties them), so a step revisited shows its values again.
function go(id) {
  if (!flow.started) flow.started = Date.now();  // the check-in's time, for usage counts
  flow.trail = [...(flow.trail || []), flow.screen];
  show(id);
}

function back() {
  const trail = flow.trail || [];
  const prev = trail.pop() || "s-start";
  for (const m of document.querySelectorAll(".msg")) if (m.id !== "start-msg") say(m.id, null);
  show(prev);
}

function setLang(code) {
  lang = I18N[code] ? code : "en";
  const root = document.documentElement;
  root.lang = I18N._meta.html_lang[lang] || lang;
  root.dir = I18N._meta.rtl.includes(lang) ? "rtl" : "ltr";
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const b of $("langs").children) b.setAttribute("aria-pressed", String(b.dataset.lang === lang));
  nameScript = null;
  nameKeys();
  for (const m of document.querySelectorAll(".msg")) if (m.dataset.key) m.textContent = t(m.dataset.key, m.dataset.n);
  renderLive();
  renderSpeak();
  if (flow.screen === "s-staff") refreshStaff();  // its lists are drawn in the language
}

// Spoken prompts ---------------------------------------------------------------------------
// Each patient screen's prompt, read aloud from /audio/<lang>/<prompt> (device/ui/prompts.py).
// The speaker button shows only where the language has that prompt's file: no wrong voice.
const PROMPTS = { "s-start": "passport", "s-year": "year", "s-name": "name",
                  "s-consent": "consent", "s-reason": "reason", "s-ticket": "ticket" };

function promptHere() {
  const prompt = PROMPTS[flow.screen];
  const have = (config.prompts && config.prompts[lang]) || [];
  return have.includes(prompt) ? prompt : null;
}

function renderSpeak() {
  const voice = $("voice");
  voice.pause();  // a prompt never goes on over another screen or language
  const b = $("speak");
  b.hidden = !promptHere();
  b.setAttribute("aria-label", t("speak"));
}

function speak() {
  const prompt = promptHere();
  if (!prompt) return;
  const voice = $("voice");
  voice.src = `/audio/${lang}/${prompt}`;
  voice.play().catch(() => {});  // a missing or broken file leaves the screen as it is
}

function say(id, key, n) {
  const el = $(id);
  if (!key) { el.textContent = ""; delete el.dataset.key; delete el.dataset.n; return; }
  el.dataset.key = key;
  if (n !== undefined) el.dataset.n = n; else delete el.dataset.n;
  el.textContent = t(key, n);
}

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (staffToken) headers["X-Staff-Token"] = staffToken;
  const resp = await fetch(path, body === undefined ? { headers, cache: "no-store" }
    : { method: "POST", headers, body: JSON.stringify(body), cache: "no-store" });
  let data = {};
  try { data = await resp.json(); } catch (e) { data = {}; }
  return { ok: resp.ok, status: resp.status, data };
}

// What is wrong with a field (the server's `detail`, or the page's own check) has its own
// message; the field's code alone gets the field's general one.
const DETAILS = ["year-future", "year-old", "year-letters", "year-short",
                 "name-letters", "name-long", "name-chars", "code-check"];
const NAME_MAX = 60;  // characters after NFC, as device/ui/checkin.py counts them
const YEARS_BACK = 120;

function errorKey(code, detail) {
  if (DETAILS.includes(detail)) return "err_" + detail.replace("-", "_");
  // a code of the right shape whose characters are not a code's (code-char, code-range)
  if (code === "bad-code" && detail) return "err_code_check";
  const known = ["bad-passport", "bad-code", "bad-year", "bad-name", "bad-reason", "no-consent"];
  if (known.includes(code)) return "err_" + code.replace("-", "_");
  if (code === "store") return "err_store";
  if (code === "storage-full") return "err_storage_full";
  return "err_network";
}

function slowDown(msgId, seconds, button) {
  clearInterval(waitTimer);
  let left = seconds;
  const tick = () => {
    if (left <= 0) { clearInterval(waitTimer); button.disabled = false; say(msgId, null); return; }
    button.disabled = true;
    say(msgId, "err_slow_down", left);
    left -= 1;
  };
  tick();
  waitTimer = setInterval(tick, 1000);
}

// Steps ------------------------------------------------------------------------------------

function onPassport(ev) {
  ev.preventDefault();
  if (busy) return;
  const typed = $("passport").value.normalize("NFKC").replace(/\s/g, "").toUpperCase();
  // Nothing typed: nothing to judge (a double tap on the ticket's Done lands here, and its
  // error would greet the next patient)
  if (!typed) { say("start-msg", null); return; }
  if (CODE_RE.test(typed)) { onCode(typed); return; }
  const value = typed.replace(/[\-<]/g, "");
  if (!PASSPORT_RE.test(value)) { say("start-msg", "err_bad_passport"); return; }
  say("start-msg", null);
  flow = { passport: value, screen: flow.screen };
  go("s-year");
}

// A short patient code goes on like a passport (code, year, reason), once its check character
// holds: the server checks it and looks nothing up, so every code is answered alike.
async function onCode(code) {
  busy = true;
  try {
    const r = await api("/api/verify", { code });
    if (!r.ok) { say("start-msg", errorKey(r.data.error, r.data.detail)); return; }
    say("start-msg", null);
    flow = { code, screen: flow.screen };
    go("s-year");
  } catch (e) { say("start-msg", "err_network"); } finally { busy = false; }
}

async function onYear(ev) {
  ev.preventDefault();
  if (busy || $("year-next").disabled) return;
  const year = $("year").value.trim();
  const problem = yearProblem(year);
  if (problem) { say("year-msg", errorKey("bad-year", problem)); return; }  // the field keeps it
  say("year-msg", null);
  if (!flow.passport && !flow.code) { flow.year = year; go("s-consent"); return; }
  busy = true;
  try {
    // Every passport goes on to the reason alike: whether it is known, and whether the
    // year matches, is for staff at the desk, never for this screen.
    const r = await api("/api/verify", flow.code ? { code: flow.code, year }
      : { passport: flow.passport, year });
    if (!r.ok) { say("year-msg", errorKey(r.data.error, r.data.detail)); return; }
    flow.year = year;
    go("s-reason");
  } catch (e) { say("year-msg", "err_network"); } finally { busy = false; }
}

// The page's checks mirror clean_year and clean_name (device/ui/checkin.py), which the server
// applies again; digits other than 0-9 are left to the server.
function yearProblem(year) {
  if (/[^\p{Nd}]/u.test(year)) return "year-letters";
  if ([...year].length < 4) return "year-short";
  if (!/^[0-9]{4}$/.test(year)) return null;
  const now = new Date().getFullYear();
  if (Number(year) > now) return "year-future";
  if (Number(year) < now - YEARS_BACK) return "year-old";
  return null;
}

function nameProblem(raw) {
  if (/[\p{Cc}\u202a-\u202e\u2066-\u2069]/u.test(raw)) return "name-chars";
  const name = raw.normalize("NFC").trim().replace(/\s+/gu, " ");
  if (!/^[\p{L}\p{M} '\-.\u200c\u200d]*$/u.test(name)) return "name-chars";
  if ([...name].length > NAME_MAX) return "name-long";
  if (!/\p{L}/u.test(name)) return "name-letters";
  return null;
}

function onName(ev) {
  ev.preventDefault();
  const name = $("name").value.normalize("NFC").trim().replace(/\s+/gu, " ");
  const problem = nameProblem($("name").value);
  if (problem) { say("name-msg", errorKey("bad-name", problem)); return; }
  say("name-msg", null);
  flow.name = name;
  go(flow.passport ? "s-consent" : "s-year");
}

async function onReason(reason) {
  if (busy) return;
  busy = true;
  say("reason-msg", null);
  const body = { reason, year: flow.year, passport: flow.passport || null, code: flow.code || null,
                 name: flow.name === undefined ? null : flow.name, consent: flow.consent === true,
                 lang, took_ms: flow.started ? Date.now() - flow.started : null };
  try {
    const r = await api("/api/checkin", body);
    if (!r.ok) {
      say("reason-msg", r.status === 503 ? "err_store" : errorKey(r.data.error, r.data.detail));
      return;
    }
    flow = { ticket: r.data.ticket, screen: flow.screen };
    $("queue-number").textContent = r.data.queue_number;
    $("new-id").textContent = r.data.code || "";  // a new patient's short code, and its QR
    $("code-qr").innerHTML = r.data.code_qr || "";  // inline SVG the kiosk drew itself
    $("new-id-block").hidden = !r.data.code;
    // locked: a new patient's code is made at the unlock; staff give it at the desk
    $("ticket-code-later").hidden = !(r.data.locked && !body.passport && !body.code);
    // printed: absent without a printer; false when it failed, so the number is to remember
    if (r.data.printed === false) say("ticket-print", "ticket_not_printed");
    else if (r.data.printed === true) say("ticket-print", "ticket_printed");
    else say("ticket-print", null);
    $("ticket-print").dataset.printed = String(r.data.printed === true);
    show("s-ticket");
    renderLive();
  } catch (e) { say("reason-msg", "err_network"); } finally { busy = false; }
}

// Live status ------------------------------------------------------------------------------

function renderLive() {
  const sync = $("sync");
  sync.dataset.state = live.state;
  $("sync-text").textContent = t(live.locked ? "sync_locked" : "sync_" + live.state);
  $("contact").textContent = live.contact_min == null ? "" : t("last_contact", live.contact_min);
  $("locked").hidden = !live.locked;
  staffButton();
  const code = live.provision_code;  // a technician provisioning this kiosk compares it
  $("provision").hidden = !code;
  $("provision-code").textContent = code ? code.slice(0, 3) + " " + code.slice(3) : "";
  const st = $("ticket-status");
  if (flow.ticket) {
    const sent = live.sent_upto >= flow.ticket;
    st.dataset.state = sent ? "sent" : "saved";
    st.textContent = t(sent ? "status_sent" : "status_saved");
  } else { st.textContent = ""; st.dataset.state = "saved"; }
}

function listen() {
  const es = new EventSource("/api/events");
  es.onmessage = (m) => { try { live = JSON.parse(m.data); } catch (e) { return; } renderLive(); };
}

// Reset and idle ---------------------------------------------------------------------------

function reset() {
  if (staffToken) api("/api/staff/logout", { token: staffToken }).catch(() => {});
  staffToken = null;
  flow = {};
  clearInterval(waitTimer);
  for (const input of document.querySelectorAll("input")) input.value = "";
  for (const m of document.querySelectorAll(".msg")) say(m.id, null);
  for (const b of document.querySelectorAll("button")) b.disabled = false;
  $("queue-number").textContent = "";
  $("new-id").textContent = "";
  $("code-qr").replaceChildren();
  $("new-id-block").hidden = true;
  $("ticket-code-later").hidden = true;
  $("staff-queue").replaceChildren();
  $("staff-conflicts").replaceChildren();
  $("staff-identity").replaceChildren();
  $("staff-sync").textContent = "";
  try { localStorage.clear(); sessionStorage.clear(); } catch (e) { /* none used */ }
  setLang(config.languages[0] || "en");
  show("s-start");
  followStaffPin();
}

// A patient's flow given up (idle, or consent declined): the kiosk counts the screen and
// the language, nothing typed; staff screens are not counted.
const PATIENT_SCREENS = ["s-start", "s-year", "s-name", "s-consent", "s-reason"];
function abandon() {
  if (PATIENT_SCREENS.includes(flow.screen)) {
    api("/api/usage", { event: "abandon", screen: flow.screen, lang }).catch(() => {});
  }
  reset();
}

// A staff PIN set (or removed) while the page is up: the Staff button follows it, at each
// return to the start and every 15 s on an untouched start screen.
let staffPinAsked = Date.now();
let staffRefreshed = 0;  // when idleCheck last redrew the staff screen
function followStaffPin() {
  staffPinAsked = Date.now();
  fetch("/api/config", { cache: "no-store" }).then((r) => r.json()).then((c) => {
    config.staff = c.staff;
    staffButton();
  }).catch(() => {});
}

// The Staff button opens the PIN screen, or the passphrase while the store is locked.
function staffButton() { $("staff-open").hidden = !(config.staff || (config.unlock && live.locked)); }

function idleCheck() {
  const dirty = flow.screen !== "s-start" || $("passport").value !== "";
  if (dirty && Date.now() - lastActivity > config.idle_seconds * 1000) abandon();
  if (!dirty && Date.now() - staffPinAsked > 15000) followStaffPin();
  // every 5 s: the second the clock's seconds passed a multiple of 5 held four ticks
  if (flow.screen === "s-staff" && Date.now() - staffRefreshed >= 5000) {
    staffRefreshed = Date.now();
    refreshStaff();
  }
}

// Start ------------------------------------------------------------------------------------

function build() {
  for (const code of config.languages) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.lang = code;
    b.lang = I18N._meta.html_lang[code] || code;
    b.textContent = I18N[code].lang_name;
    b.onclick = () => setLang(code);
    $("langs").append(b);
  }
  for (const reason of config.reasons) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.reason = reason;
    b.innerHTML = `<svg viewBox="0 0 64 64" aria-hidden="true">${ICONS[reason] || ICONS.other}</svg>`;
    const label = document.createElement("span");
    label.dataset.i18n = "reason_" + reason;
    b.append(label);
    b.onclick = () => onReason(reason);
    $("reasons").append(b);
  }
  keyboard($("keypad"), LAYOUTS.digits);
  keyboard($("pin-keys"), LAYOUTS.digits);
  keyboard($("passport-keys"), LAYOUTS.passport);
  keyboard($("unlock-keys"), LAYOUTS.passphrase);
  for (const pad of document.querySelectorAll(".kbd")) {
    pad.onmousedown = (ev) => ev.preventDefault();  // the field keeps the focus
    pad.onclick = (ev) => { const b = ev.target.closest("button"); if (b) press(pad, b.dataset.key); };
  }
  $("s-start").addEventListener("submit", onPassport);
  $("s-year").addEventListener("submit", onYear);
  $("s-name").addEventListener("submit", onName);
  $("name").addEventListener("input", nameLook);  // typed on a keyboard or by a scanner
  $("s-staff-pin").addEventListener("submit", onStaffPin);
  $("no-docs").onclick = () => {
    say("start-msg", null);
    flow = { screen: flow.screen };
    go("s-name");
  };
  $("consent-yes").onclick = () => { flow.consent = true; go("s-reason"); };
  $("consent-no").onclick = abandon;
  $("ticket-done").onclick = reset;
  $("speak").onclick = speak;
  // A tap on a language or the speaker leaves the focus in the screen's field, where a
  // keyboard-wedge scanner types (keys and Tab still reach both buttons).
  for (const el of [$("langs"), $("speak")]) el.onmousedown = (ev) => ev.preventDefault();
  staffButton();  // no PIN set and not locked: no staff screen to open
  $("staff-open").onclick = () => {
    if (config.unlock && live.locked) { flow = {}; show("s-unlock"); }
    else if (config.staff) { flow = {}; show("s-staff-pin"); }
  };
  $("s-unlock").addEventListener("submit", onUnlock);
  $("unlock-back").onclick = reset;  // the passphrase typed is never kept
  $("staff-close").onclick = reset;
  for (const b of document.querySelectorAll(".back")) b.onclick = back;
  $("pin-back").onclick = reset;  // the PIN typed is never kept
  for (const ev of ["pointerdown", "keydown", "input", "touchstart"]) {
    document.addEventListener(ev, () => { lastActivity = Date.now(); }, { capture: true, passive: true });
  }
  setInterval(idleCheck, 250);
}

async function main() {
  const [cfg, strings] = await Promise.all([
    fetch("/api/config", { cache: "no-store" }).then((r) => r.json()),
    fetch("/static/i18n.json", { cache: "no-store" }).then((r) => r.json()),
  ]);
  config = cfg;
  I18N = strings;
  build();
  setLang(config.languages[0]);
  show("s-start");
  listen();
  document.body.dataset.ready = "1";
  performance.mark("haven-ready");  // ./tools/bench kiosk reads it: handlers are attached
}

main();
