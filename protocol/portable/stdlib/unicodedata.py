"""unicodedata.normalize for MicroPython, which has no Unicode tables: ASCII text is
already in every normal form and is returned as it is; other text raises ValueError
(a node's inputs, passport numbers and codes, are ASCII)."""


def normalize(form, text):
    if form not in ("NFC", "NFD", "NFKC", "NFKD"):
        raise ValueError("invalid normalization form")
    for ch in text:
        if ord(ch) > 127:
            raise ValueError("only ASCII text can be normalised under MicroPython")
    return text
