"""The portable HPKE and AES-GCM (protocol.portable), under MicroPython only: RFC 9180
A.1's base-mode vector, the GCM specification's test cases, and what CPython's
`cryptography` sealed (argv[1], a JSON file) opened here; prints this side's seals of the
same cases, with their ephemeral keys, for CPython to open."""

import json
import sys

from check import done, equal, hexed, true

from protocol.crypto import InvalidTag, X25519PrivateKey, hpke
from protocol.portable import aes_gcm

h = hexed
# The GCM specification (McGrew and Viega), test cases 1, 4, 14 and 16.
P = h("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449"
      "a6b525b16aedf5aa0de657ba637b39")
A, IV = h("feedfacedeadbeeffeedfacedeadbeefabaddad2"), h("cafebabefacedbaddecaf888")
K = h("feffe9928665731c6d6a8f9467308308")
GCM = [
    (bytes(16), bytes(12), b"", b"", "58e2fccefa7e3061367f1d57a4e7455a"),
    (K, IV, P, A, "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c"
                  "7d8f6a5aac84aa051ba30b396a0aac973d58e0915bc94fbc3221a5db94fae95ae7121a47"),
    (bytes(32), bytes(12), bytes(16), b"",
     "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"),
    (K + K, IV, P, A, "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e4859"
                      "0dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f66276fc6ece0f4e1768cddf8853bb2d5"
                      "51b"),
]
for key, nonce, plain, aad, want in GCM:
    equal(aes_gcm.seal(key, nonce, plain, aad).hex(), want, "GCM seal")
    equal(aes_gcm.open(key, nonce, h(want), aad), plain, "GCM open")
    bad = bytearray(h(want))
    bad[-1] ^= 1
    try:
        aes_gcm.open(key, nonce, bytes(bad), aad)
        true(False, "GCM tag")
    except ValueError:
        true(True)

# RFC 9180 A.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, base mode.
suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
sk_e = h("52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736")
sk_r = h("4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8")
pk_r = h("3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d")
info = h("4f6465206f6e2061204772656369616e2055726e")
enc = "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431"
plain = b"Beauty is truth, truth beauty"
ct0 = "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a"
equal(X25519PrivateKey.from_private_bytes(sk_r).public_key().public_bytes_raw(), pk_r, "pkRm")
equal(suite.key_schedule(h("fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc"),
                         info),
      (h("4531685d41d65f03dc48f6b8302c05b0"), h("56d890e5accaaf011cff4b7d")), "key schedule")
equal(suite.seal(plain, pk_r, info, b"Count-0", sk_e).hex(), enc + ct0, "A.1 seal")
equal(suite.open(h(enc + ct0), sk_r, info, b"Count-0"), plain, "A.1 open")
try:
    suite.open(h(enc + ct0), sk_r, info, b"Count-1")
    true(False, "A.1 with another aad")
except InvalidTag:
    true(True)

# What cryptography sealed (AES-256-GCM, the suite of protocol.sync.certificate).
ours = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
with open(sys.argv[1]) as f:
    cases = json.load(f)
sealed_here = []
for case in cases:
    key = X25519PrivateKey.from_private_bytes(h(case["private"]))
    equal(ours.decrypt(h(case["sealed"]), key, h(case["info"])), h(case["plain"]), "open")
    sealed_here.append(ours.seal(h(case["plain"]), key.public_key().public_bytes_raw(),
                                 h(case["info"]), b"", h(case["ephemeral"])).hex())
print(json.dumps(sealed_here))
done()
