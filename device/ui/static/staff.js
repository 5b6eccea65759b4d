// Haven kiosk page: the staff screen (PIN, queue, sync and health, conflicts, identity) and
// the passphrase that unlocks a store booted locked.
// Loaded before app.js, which opens it from the Staff button and wipes it in reset().
"use strict";

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

// A store booted locked: the passphrase opens it (device/ui/unlock.py). A wrong one says so,
// and from the third miss the next try waits a few seconds; check-ins go on meanwhile.
async function onUnlock(ev) {
  ev.preventDefault();
  if (busy || $("unlock-next").disabled) return;
  busy = true;
  try {
    const r = await api("/api/unlock", { passphrase: $("unlock-pass").value });
    $("unlock-pass").value = "";
    if (r.ok) { live.locked = false; reset(); return; }
    if (r.status === 429) { slowDown("unlock-msg", r.data.wait || 1, $("unlock-next")); return; }
    if (r.status === 403) { say("unlock-msg", "err_wrong_passphrase"); return; }
    say("unlock-msg", r.status === 400 ? "err_bad_passphrase"
      : r.data.error === "bad-key-file" ? "err_key_file" : "err_store");
  } catch (e) { say("unlock-msg", "err_network"); } finally { busy = false; }
}

// A redraw moves rows (one done with goes last, a settled identity goes) and changes their
// buttons: a row that took another's place, or changed its status, takes no tap for a
// moment, so a double tap's second tap, or a tap as the lists refresh, never lands on a
// patient or an action it was not meant for.
let deskSettleMs = 700;
const rowKey = (el) => `${el.dataset.checkin || el.dataset.conflict} ${el.dataset.status || ""}`;
// Until when each row (by key and place) takes no tap: kept across redraws, since another
// redraw (the screen's own refresh) can come within the moment and must not free it early.
const settling = new Map();
function settleMoved(rows, before) {
  const now = Date.now();
  for (const [k, until] of settling) if (until <= now) settling.delete(k);
  rows.forEach((row, i) => {
    const place = `${rowKey(row)} @${i}`;
    if (before[i] !== undefined && before[i] !== rowKey(row) && !settling.has(place)) {
      settling.set(place, now + deskSettleMs);
    }
    const until = settling.get(place);
    if (until === undefined) return;
    const buttons = row.querySelectorAll("button");
    for (const b of buttons) b.disabled = true;
    setTimeout(() => { for (const b of buttons) b.disabled = false; }, until - now);
  });
}

function li(text) { const el = document.createElement("li"); el.textContent = text; return el; }

async function refreshStaff() {
  if (!staffToken || flow.screen !== "s-staff") return;
  const r = await api("/api/staff/overview");
  if (!r.ok) { reset(); return; }
  renderQueue(r.data.queue);
  $("staff-sync").textContent = `${t("sync_" + r.data.sync.state)} · ${t("staff_outbox")}: ${r.data.outbox}`;
  if (r.data.printer) $("staff-sync").textContent += ` · ${t("staff_printer")}: ${t("printer_" + r.data.printer.state)}`;
  const health = r.data.health || {};
  const warnings = [];
  if (r.data.technician) warnings.push(t("sync_" + r.data.technician));
  if (r.data.sync.contact_min != null) warnings.push(t("last_contact", r.data.sync.contact_min));
  if (health.storage && health.storage.level !== "ok") {
    warnings.push(t("staff_storage_" + health.storage.level, health.storage.free_mib));
  }
  if (health.memory && health.memory.level === "hard") warnings.push(t("staff_memory_hard"));
  if (r.data.pin_alert) warnings.push(t("staff_pin_alert", r.data.pin_alert.misses));
  const fridge = { high: t("staff_fridge_high"), low: t("staff_fridge_low"),
                   sensor: t("staff_fridge_sensor") };
  for (const a of r.data.fridges || []) {  // alarms raised and not cleared, first of all
    const extreme = a.extreme == null ? "" : ` ${(a.extreme / 100).toFixed(1)} °C`;
    const since = new Date(a.since * 1000).toTimeString().slice(0, 5);
    warnings.unshift(`${fridge[a.kind] || a.kind}: ${a.fridge}${extreme} (${since})`);
  }
  $("staff-health").textContent = warnings.join(" ");
  const box = $("staff-conflicts");
  const before = [...box.children].map(rowKey);
  box.replaceChildren();
  if (!r.data.conflicts.length) box.append(li(t("staff_none")));
  for (const c of r.data.conflicts) {
    const div = document.createElement("div");
    div.className = "conflict";
    div.dataset.conflict = c.id;
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
  settleMoved([...box.children], before);
  renderIdentity(r.data.identity || []);
}

// Today's queue, those waiting first: call one (again too), mark it seen or a no-show; one
// done with can be undone, back to waiting. Each button is one replicated write.
function renderQueue(rows) {
  const q = $("staff-queue");
  const before = [...q.children].map(rowKey);
  if (!rows.length) { q.replaceChildren(li(t("staff_none"))); return; }
  const words = { "arrived": t("staff_waiting"), "in-progress": t("staff_called"),
    "finished": t("staff_seen"), "cancelled": t("staff_no_show") };
  q.replaceChildren(...rows.map((c) => {
    const row = li("");
    row.className = "queue-row";
    row.dataset.checkin = c.id;
    row.dataset.status = c.status || "";
    const line = document.createElement("span");
    line.className = "queue-line";
    const what = document.createElement("span");
    what.textContent = `${c.number}  ${c.time}`;
    const state = document.createElement("b");
    state.className = "queue-status";
    state.textContent = words[c.status] || "";
    const more = document.createElement("span");
    more.append(state, c.reason ? ` · ${t("reason_" + c.reason)}` : "");
    line.append(what, more);
    const buttons = document.createElement("span");
    buttons.className = "queue-actions";
    const done = c.status === "finished" || c.status === "cancelled";
    for (const [action, label] of done ? [["undo", t("staff_undo")]]
      : [["call", t("staff_call")], ["seen", t("staff_seen")], ["no-show", t("staff_no_show")]]) {
      const b = document.createElement("button");
      b.type = "button"; b.dataset.action = action; b.textContent = label;
      b.onclick = async () => {
        b.disabled = true;
        await api("/api/staff/queue", { token: staffToken, checkin: c.id, action });
        refreshStaff();
      };
      buttons.append(b);
    }
    row.append(line, buttons);
    return row;
  }));
  settleMoved([...q.children], before);
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
  const before = [...box.children].map(rowKey);
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
  settleMoved([...box.children], before);
}
