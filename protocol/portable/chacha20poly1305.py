"""ChaCha20-Poly1305 AEAD (RFC 8439) in pure Python, for MicroPython only.

Theory of operation: ChaCha20 (§2.3-2.4) works on a 16-word state with 32-bit
masking after every add; Poly1305 (§2.5) accumulates 16-byte blocks modulo
2^130 - 5 with Python ints; the AEAD (§2.8) takes the Poly1305 key from block 0,
encrypts from block 1, and MACs aad | pad | ciphertext | pad | lengths.
"""

import hmac

MASK32 = 0xFFFFFFFF
P1305 = (1 << 130) - 5
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
# "expand 32-byte k" as four little-endian words.
SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)


def _add_xor_rotate(s: list[int], a: int, b: int, d: int, shift: int) -> None:
    # a += b; d ^= a; d <<<= shift
    s[a] = (s[a] + s[b]) & MASK32
    x = s[d] ^ s[a]
    s[d] = ((x << shift) | (x >> (32 - shift))) & MASK32


def _quarter_round(s: list[int], a: int, b: int, c: int, d: int) -> None:
    """RFC 8439 §2.1 on four words of the state."""
    _add_xor_rotate(s, a, b, d, 16)
    _add_xor_rotate(s, c, d, b, 12)
    _add_xor_rotate(s, a, b, d, 8)
    _add_xor_rotate(s, c, d, b, 7)


def _words(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data), 4)]


def chacha20_block(key: bytes, counter: int, nonce: bytes) -> bytes:
    """RFC 8439 §2.3: one 64-byte keystream block."""
    if len(key) != KEY_SIZE or len(nonce) != NONCE_SIZE:
        raise ValueError("ChaCha20 needs a 32-byte key and a 12-byte nonce")
    init = list(SIGMA) + _words(key) + [counter & MASK32] + _words(nonce)
    s = list(init)
    for _ in range(10):
        _quarter_round(s, 0, 4, 8, 12)
        _quarter_round(s, 1, 5, 9, 13)
        _quarter_round(s, 2, 6, 10, 14)
        _quarter_round(s, 3, 7, 11, 15)
        _quarter_round(s, 0, 5, 10, 15)
        _quarter_round(s, 1, 6, 11, 12)
        _quarter_round(s, 2, 7, 8, 13)
        _quarter_round(s, 3, 4, 9, 14)
    out = bytearray(64)
    for i in range(16):
        out[4 * i : 4 * i + 4] = ((s[i] + init[i]) & MASK32).to_bytes(4, "little")
    return bytes(out)


def chacha20_xor(key: bytes, counter: int, nonce: bytes, data: bytes) -> bytes:
    """RFC 8439 §2.4: data XOR the keystream that starts at block `counter`."""
    out = bytearray(data)
    for offset in range(0, len(data), 64):
        block = chacha20_block(key, counter + offset // 64, nonce)
        for i in range(min(64, len(data) - offset)):
            out[offset + i] ^= block[i]
    return bytes(out)


def poly1305(key: bytes, message: bytes) -> bytes:
    """RFC 8439 §2.5: the 16-byte one-time MAC of message under a 32-byte key."""
    if len(key) != KEY_SIZE:
        raise ValueError("Poly1305 needs a 32-byte key")
    r = int.from_bytes(key[:16], "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    s = int.from_bytes(key[16:], "little")
    acc = 0
    for i in range(0, len(message), 16):
        chunk = message[i : i + 16]
        n = int.from_bytes(chunk, "little") + (1 << (8 * len(chunk)))
        acc = (acc + n) * r % P1305
    return ((acc + s) & ((1 << 128) - 1)).to_bytes(16, "little")


def _pad16(n: int) -> bytes:
    return bytes((16 - n % 16) % 16)


def _tag(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    otk = chacha20_block(key, 0, nonce)[:32]
    mac_data = (
        aad
        + _pad16(len(aad))
        + ciphertext
        + _pad16(len(ciphertext))
        + len(aad).to_bytes(8, "little")
        + len(ciphertext).to_bytes(8, "little")
    )
    return poly1305(otk, mac_data)


def seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """RFC 8439 §2.8 encryption: ciphertext || 16-byte tag."""
    ciphertext = chacha20_xor(key, 1, nonce, plaintext)
    return ciphertext + _tag(key, nonce, ciphertext, aad)


def open(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    """RFC 8439 §2.8 decryption of ciphertext || tag; ValueError if the tag is wrong."""
    if len(data) < TAG_SIZE:
        raise ValueError("ChaCha20-Poly1305 data shorter than its tag")
    ciphertext = data[:-TAG_SIZE]
    # hmac.compare_digest: constant time (the stdlib stand-in's under MicroPython)
    if not hmac.compare_digest(_tag(key, nonce, ciphertext, aad), data[-TAG_SIZE:]):
        raise ValueError("ChaCha20-Poly1305 tag does not match")
    return chacha20_xor(key, 1, nonce, ciphertext)
