// Haven kiosk page: the on-screen keyboards (digits, passport letters, names in each script).
// Loaded before app.js, which builds them and owns the page's state (nameScript among it).
"use strict";

// On-screen keyboards: rows of keys parted by spaces. A character types itself; "del" (⌫),
// "clear", "space" (it takes the row's free columns) and "script" (Latin letters, and back)
// are special keys. Letters are in alphabetical order, which the patients learnt at school.
const LAYOUTS = {
  digits: { spans: {}, rows: ["1 2 3", "4 5 6", "7 8 9", "clear 0 del"] },
  // The dash is for a short patient code (XXXX-XXXX): a passport number never needs one.
  passport: { spans: { del: 2, clear: 2, "-": 2 },
              rows: ["1 2 3 4 5 6 7 8 9 0 del clear", "A B C D E F G H I J K L M N",
                     "O P Q R S T U V W X Y Z -"] },
  // The staff's passphrase: small letters, digits and a few marks (device/store/unlock.py).
  passphrase: { spans: { clear: 2 }, rows: ["1 2 3 4 5 6 7 8 9 0 del", "q w e r t y u i o p -",
                                            "a s d f g h j k l clear", "z x c v b n m . space"] },
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
