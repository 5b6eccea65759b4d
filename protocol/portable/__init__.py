"""Portable-Python cryptographic primitives, for MicroPython only.

The one exception to "never home-made primitives": MicroPython lacks X25519,
ChaCha20-Poly1305, HMAC/HKDF, SHA-512 and Ed25519, so they are written here in
plain Python ints and bytes. Nothing on a CPython path imports this package;
CPython uses `cryptography`. Each primitive is held to its RFC's test vectors
and cross-checked against `cryptography` on random inputs.
"""
