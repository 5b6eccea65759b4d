// Haven kiosk page: the check-in flow, languages, live status, idle reset, staff screen.
// Patient data lives only in `flow` (memory) and the form fields; reset() wipes both.
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
// On-screen keyboards: rows of keys parted by spaces. A character types itself; "del" (⌫),
// "clear", "space" (it takes the row's free columns) and "script" (Latin letters, and back)
// are special keys. Letters are in alphabetical order, which the patients learnt at school.
const LAYOUTS = {
  digits: { spans: {}, rows: ["1 2 3", "4 5 6", "7 8 9", "clear 0 del"] },
  passport: { rows: ["1 2 3 4 5 6 7 8 9 0 del clear", "A B C D E F G H I J K L M",
                     "N O P Q R S T U V W X Y Z"] },
  latin: { label: "ABC", rows: ["A B C D E F G H I J K L", "M N O P Q R S T U V W X",
                                "Y Z ' - script space del clear"] },
  arabic: { label: "أ ب ت", rtl: true, rows: ["ا ب ت ث ج ح خ د ذ ر ز", "س ش ص ض ط ظ ع غ ف ق ك",
                                              "ل م ن ه و ي ة ى ء أ إ", "آ ؤ ئ script space del clear"] },
  // Dari's alphabet with Pashto's letters beside their kin (Pashto's order). Pashto's yeh with
  // tail (U+06CD) is left out: the page's fonts have no glyph for it.
  persian: { label: "ا ب پ", rtl: true, rows: ["ا آ ب پ ت ټ ث ج چ ح خ څ ځ د",
                                               "ډ ذ ر ړ ز ژ ږ س ش ښ ص ض ط ظ",
                                               "ع غ ف ق ک گ ګ ل م ن ڼ و ه ی",
                                               "ې ي ئ ء script space del clear"] },
};
const SPANS = { clear: 2, script: 2 };  // columns a key takes, unless its layout says
const WORDS = { clear: "clear", space: "key_space" };  // keys labelled in the page's language
const NAME_LAYOUT = { ar: "arabic", prs: "persian" };  // the others write Latin letters

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
  const text = table[key] || (I18N && I18N.en[key]) || key;
  return n === undefined ? text : text.replace("{n}", String(n));
};

function show(id) {
  for (const s of document.querySelectorAll(".screen")) s.hidden = s.id !== id;
  flow.screen = id;
  const input = $(id).querySelector("input");
  if (input) input.focus();
}

// Forward one step, remembering where from; Back returns there. The fields keep what was
// typed (only reset() empties them), so a step revisited shows its values again.
function go(id) {
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
  if (flow.nameTitle) $("name-title").textContent = t(flow.nameTitle);
  nameScript = null;
  nameKeys();
  for (const m of document.querySelectorAll(".msg")) if (m.dataset.key) m.textContent = t(m.dataset.key, m.dataset.n);
  renderLive();
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
                 "name-letters", "name-long", "name-chars"];
const NAME_MAX = 60;  // characters after NFC, as device/ui/checkin.py counts them
const YEARS_BACK = 120;

function errorKey(code, detail) {
  if (DETAILS.includes(detail)) return "err_" + detail.replace("-", "_");
  const known = ["bad-passport", "bad-year", "bad-name", "bad-reason", "no-consent"];
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
  const value = $("passport").value.normalize("NFKC").replace(/[\s\-<]/g, "").toUpperCase();
  if (!PASSPORT_RE.test(value)) { say("start-msg", "err_bad_passport"); return; }
  say("start-msg", null);
  flow = { passport: value, screen: flow.screen };
  go("s-year");
}

async function onYear(ev) {
  ev.preventDefault();
  if (busy || $("year-next").disabled) return;
  const year = $("year").value.trim();
  const problem = yearProblem(year);
  if (problem) { say("year-msg", errorKey("bad-year", problem)); return; }  // the field keeps it
  say("year-msg", null);
  if (!flow.passport) { flow.year = year; go("s-consent"); return; }
  busy = true;
  try {
    // Every passport goes on to the reason alike: whether it is known, and whether the
    // year matches, is for staff at the desk, never for this screen.
    const r = await api("/api/verify", { passport: flow.passport, year });
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
  const body = { reason, year: flow.year, passport: flow.passport || null,
                 name: flow.name === undefined ? null : flow.name, consent: flow.consent === true };
  try {
    const r = await api("/api/checkin", body);
    if (!r.ok) {
      say("reason-msg", r.status === 503 ? "err_store" : errorKey(r.data.error, r.data.detail));
      return;
    }
    flow = { ticket: r.data.ticket, screen: flow.screen };
    $("queue-number").textContent = r.data.queue_number;
    $("new-id").textContent = r.data.new_id || "";
    $("new-id-block").hidden = !r.data.new_id;
    show("s-ticket");
    renderLive();
  } catch (e) { say("reason-msg", "err_network"); } finally { busy = false; }
}

// On-screen keyboards ---------------------------------------------------------------------

function keyboard(pad, layout, rows = layout.rows, scriptLabel = "") {
  const spans = layout.spans || SPANS;
  pad.replaceChildren();
  const cols = rows[0].split(" ").reduce((n, k) => n + (spans[k] || 1), 0);
  pad.style.setProperty("--cols", cols);
  for (const row of rows) {
    const keys = row.split(" ");
    const taken = keys.reduce((n, k) => n + (k === "space" ? 0 : spans[k] || 1), 0);
    for (const k of keys) {
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.key = k;
      if (WORDS[k]) { b.dataset.i18n = WORDS[k]; b.textContent = t(WORDS[k]); }
      else if (k === "del") b.textContent = pad.dir === "rtl" ? "⌦" : "⌫";  // the way it erases
      else b.textContent = k === "script" ? scriptLabel : k;
      if (WORDS[k] || k === "script") b.className = "word";
      const span = k === "space" ? cols - taken : spans[k] || 1;
      if (span > 1) b.style.gridColumn = `span ${span}`;
      pad.append(b);
    }
  }
}

// A key types into its pad's field at the caret; the field keeps the focus, so a scanner's
// typing still lands there.
function press(pad, k) {
  const input = $(pad.dataset.for);
  const s = input.selectionStart, e = input.selectionEnd;
  if (k === "script") { nameScript = nameScript ? null : "latin"; nameKeys(); }
  else if (k === "clear") input.value = "";
  else if (k === "del") input.setRangeText("", s === e ? Math.max(0, s - 1) : s, e, "end");
  else if (input.value.length - (e - s) < input.maxLength) {
    const ch = k === "space" ? " " : k;
    input.setRangeText(pad.classList.contains("lower") ? ch.toLowerCase() : ch, s, e, "end");
  }
  input.focus();
  if (pad.id === "name-keys") nameLook();
}

// The name's keyboard follows the page's language, or Latin letters on request.
function nameKeys() {
  const own = NAME_LAYOUT[lang] || "latin";
  const layout = LAYOUTS[nameScript || own];
  const rows = own === "latin" ? layout.rows.map((r) => r.replace(" script", "")) : layout.rows;
  const pad = $("name-keys");
  pad.dir = layout.rtl ? "rtl" : "ltr";
  keyboard(pad, layout, rows, LAYOUTS[nameScript ? own : "latin"].label);
  nameLook();
}

// The name field reads in its text's direction (the keyboard's while empty), and the letter
// keys show what they type: a capital at the start of each word, small letters after it.
function nameLook() {
  const input = $("name"), pad = $("name-keys");
  input.dir = input.value.trim() ? "auto" : pad.dir;
  pad.classList.toggle("lower", !/(^|[\s-])$/.test(input.value.slice(0, input.selectionStart)));
}

// Live status ------------------------------------------------------------------------------

function renderLive() {
  const sync = $("sync");
  sync.dataset.state = live.state;
  $("sync-text").textContent = t("sync_" + live.state);
  $("contact").textContent = live.contact_min == null ? "" : t("last_contact", live.contact_min);
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

// Staff ------------------------------------------------------------------------------------

async function onStaffPin(ev) {
  ev.preventDefault();
  const r = await api("/api/staff/login", { pin: $("staff-pin").value });
  $("staff-pin").value = "";
  if (r.status === 429) { say("pin-msg", "err_slow_down", r.data.wait || 1); return; }
  if (!r.ok) { say("pin-msg", "staff_bad_pin"); return; }
  staffToken = r.data.token;
  say("pin-msg", null);
  show("s-staff");
  refreshStaff();
}

function li(text) { const el = document.createElement("li"); el.textContent = text; return el; }

async function refreshStaff() {
  if (!staffToken || flow.screen !== "s-staff") return;
  const r = await api("/api/staff/overview");
  if (!r.ok) { reset(); return; }
  const q = $("staff-queue");
  q.replaceChildren(...(r.data.queue.length ? r.data.queue.map(
    (c) => li(`${c.number}  ${c.time}  ${t("reason_" + c.reason)}`)) : [li(t("staff_none"))]));
  $("staff-sync").textContent = `${t("sync_" + r.data.sync.state)} · ${t("staff_outbox")}: ${r.data.outbox}`;
  const health = r.data.health || {};
  const warnings = [];
  if (r.data.technician) warnings.push(t("sync_" + r.data.technician));
  if (r.data.sync.contact_min != null) warnings.push(t("last_contact", r.data.sync.contact_min));
  if (health.storage && health.storage.level !== "ok") {
    warnings.push(t("staff_storage_" + health.storage.level, health.storage.free_mib));
  }
  if (health.memory && health.memory.level === "hard") warnings.push(t("staff_memory_hard"));
  if (r.data.pin_alert) warnings.push(t("staff_pin_alert", r.data.pin_alert.misses));
  $("staff-health").textContent = warnings.join(" ");
  const box = $("staff-conflicts");
  box.replaceChildren();
  if (!r.data.conflicts.length) box.append(li(t("staff_none")));
  for (const c of r.data.conflicts) {
    const div = document.createElement("div");
    div.className = "conflict";
    div.append(li(`${c.type} ${c.id}`));
    for (const v of c.versions) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = `${t("staff_keep")}: ${Object.values(v.fields).join(", ")}`;
      b.onclick = async () => {
        await api("/api/staff/resolve", { token: staffToken, conflict: c.id, keep: v.id });
        refreshStaff();
      };
      div.append(b);
    }
    box.append(div);
  }
  renderIdentity(r.data.identity || []);
}

// Check-ins whose identity is to be confirmed at the desk: the claim beside the record this
// kiosk holds; confirm it, take the typed values as right, or attach it to another passport.
function renderIdentity(rows) {
  const box = $("staff-identity");
  // The screen refreshes every few seconds: a passport being typed survives it.
  const typed = {};
  let focused = null;
  for (const input of box.querySelectorAll("input")) {
    const id = input.closest(".identity").dataset.checkin;
    typed[id] = input.value;
    if (document.activeElement === input) focused = id;
  }
  box.replaceChildren();
  if (!rows.length) { box.append(li(t("staff_none"))); return; }
  const act = async (c, body) => {
    await api("/api/staff/identity", { token: staffToken, checkin: c.id, ...body });
    refreshStaff();
  };
  for (const c of rows) {
    const div = document.createElement("div");
    div.className = "conflict identity";
    div.dataset.checkin = c.id;
    const claim = [c.claim.name, c.claim.birthDate].filter(Boolean).join(", ");
    const rec = c.record ? [c.record.name, c.record.birthDate].filter(Boolean).join(", ")
      : t("staff_no_record");
    div.append(li(`${c.number}  ${t("staff_typed")}: ${claim}`), li(`${t("staff_on_record")}: ${rec}`));
    const button = (key, onclick) => {
      const b = document.createElement("button");
      b.type = "button"; b.dataset.action = key; b.textContent = t(key); b.onclick = onclick;
      div.append(b);
    };
    button("staff_confirm", () => act(c, { action: "confirm" }));
    if (c.record) {
      button("staff_use_typed", () => act(c, { action: "correct", name: c.claim.name || null,
        year: c.claim.birthDate ? c.claim.birthDate.slice(0, 4) : null }));
    }
    const pass = document.createElement("input");
    pass.type = "text"; pass.autocomplete = "off"; pass.className = "attach-passport";
    pass.value = typed[c.id] || "";
    div.append(pass);
    if (focused === c.id) pass.focus();
    button("staff_attach", () => { if (pass.value.trim()) act(c, { action: "attach", passport: pass.value }); });
    box.append(div);
  }
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
  $("new-id-block").hidden = true;
  $("staff-queue").replaceChildren();
  $("staff-conflicts").replaceChildren();
  $("staff-identity").replaceChildren();
  $("staff-sync").textContent = "";
  try { localStorage.clear(); sessionStorage.clear(); } catch (e) { /* none used */ }
  setLang(config.languages[0] || "en");
  show("s-start");
}

function idleCheck() {
  const dirty = flow.screen !== "s-start" || $("passport").value !== "";
  if (dirty && Date.now() - lastActivity > config.idle_seconds * 1000) reset();
  if (flow.screen === "s-staff" && (Date.now() / 1000 | 0) % 5 === 0) refreshStaff();
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
    flow = { nameTitle: "name_prompt", screen: flow.screen };
    $("name-title").textContent = t("name_prompt");
    go("s-name");
  };
  $("consent-yes").onclick = () => { flow.consent = true; go("s-reason"); };
  $("consent-no").onclick = reset;
  $("ticket-done").onclick = reset;
  $("staff-open").hidden = !config.staff;  // no PIN set: no staff screen to open
  $("staff-open").onclick = () => { if (config.staff) { flow = {}; show("s-staff-pin"); } };
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
