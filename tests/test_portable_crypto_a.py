"""The portable X25519, ChaCha20-Poly1305, HMAC-SHA256 and HKDF held to their RFCs'
vectors and cross-checked against `cryptography` on random inputs."""

import random

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol.portable import chacha20poly1305, hmac_sha256, x25519
from tests.portable_cases import CASES

h = bytes.fromhex

# RFC 7748 §5.2: (scalar, u, output).
X25519_VECTORS = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]
X25519_AFTER_1 = "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
X25519_AFTER_1000 = "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"
# RFC 7748 §6.1.
ALICE_PRIVATE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
ALICE_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
BOB_PRIVATE = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
BOB_PUBLIC = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
SHARED_SECRET = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"

SUNSCREEN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
# RFC 8439 §2.4.2: key, nonce, initial counter, ciphertext of SUNSCREEN.
CHACHA20_KEY = bytes(range(32))
CHACHA20_NONCE = "000000000000004a00000000"
CHACHA20_CIPHERTEXT = (
    "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
    "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
    "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
    "5af90bbf74a35be6b40b8eedf2785e42874d"
)
# RFC 8439 §2.5.2.
POLY1305_KEY = "85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b"
POLY1305_MESSAGE = b"Cryptographic Forum Research Group"
POLY1305_TAG = "a8061dc1305136c6c22b8baf0c0127a9"

# RFC 8439 §2.8.2 and §A.5: (key, nonce, aad, plaintext, ciphertext || tag).
AEAD_VECTORS = [
    (
        "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
        "070000004041424344454647",
        "50515253c0c1c2c3c4c5c6c7",
        SUNSCREEN,
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
        "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
        "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
        "3ff4def08e4b7a9de576d26586cec64b6116"
        "1ae10b594f09e26a7e902ecbd0600691",
    ),
    (
        "1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0",
        "000000000102030405060708",
        "f33388860000000000004e91",
        (
            "Internet-Drafts are draft documents valid for a maximum of six months and may be "
            "updated, replaced, or obsoleted by other documents at any time. It is inappropriate "
            "to use Internet-Drafts as reference material or to cite them other than as "
            "/\u201cwork in progress./\u201d"
        ).encode(),
        "64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2"
        "4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf"
        "332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855"
        "9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4"
        "b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e"
        "af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a"
        "0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10"
        "49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29"
        "a6ad5cb4022b02709b"
        "eead9d67890cbb22392336fea1851f38",
    ),
]

# RFC 4231 test cases 1-4, 6 and 7: (key, data, HMAC-SHA256).
HMAC_VECTORS = [
    (
        b"\x0b" * 20,
        b"Hi There",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
    ),
    (
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
    (
        b"\xaa" * 20,
        b"\xdd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
    ),
    (
        bytes(range(1, 26)),
        b"\xcd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
    ),
    (
        b"\xaa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
    (
        b"\xaa" * 131,
        b"This is a test using a larger than block-size key and a larger than block-size "
        b"data. The key needs to be hashed before being used by the HMAC algorithm.",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ),
]

# RFC 5869 A.1-A.3: (ikm, salt, info, length, prk, okm).
HKDF_VECTORS = [
    (
        b"\x0b" * 22,
        bytes(range(0x0D)),
        bytes(range(0xF0, 0xFA)),
        42,
        "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        bytes(range(0x50)),
        bytes(range(0x60, 0xB0)),
        bytes(range(0xB0, 0x100)),
        82,
        "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    (
        b"\x0b" * 22,
        b"",
        b"",
        42,
        "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]


def _raw_public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.mark.parametrize(("scalar", "u", "output"), X25519_VECTORS)
def test_x25519_rfc7748_vectors(scalar: str, u: str, output: str) -> None:
    assert x25519.x25519(h(scalar), h(u)).hex() == output


def test_x25519_rfc7748_iterated() -> None:
    k = u = x25519.BASE_POINT
    for i in range(1000):
        k, u = x25519.x25519(k, u), k
        if i == 0:
            assert k.hex() == X25519_AFTER_1
    assert k.hex() == X25519_AFTER_1000


def test_x25519_rfc7748_diffie_hellman() -> None:
    assert x25519.public_key(h(ALICE_PRIVATE)).hex() == ALICE_PUBLIC
    assert x25519.public_key(h(BOB_PRIVATE)).hex() == BOB_PUBLIC
    assert x25519.x25519(h(ALICE_PRIVATE), h(BOB_PUBLIC)).hex() == SHARED_SECRET
    assert x25519.x25519(h(BOB_PRIVATE), h(ALICE_PUBLIC)).hex() == SHARED_SECRET


def test_x25519_refuses_wrong_lengths() -> None:
    with pytest.raises(ValueError):
        x25519.x25519(bytes(31), x25519.BASE_POINT)
    with pytest.raises(ValueError):
        x25519.x25519(bytes(32), bytes(33))


@pytest.mark.parametrize("cases", CASES)
def test_x25519_agrees_with_cryptography(cases: int) -> None:
    rng = random.Random(7748)
    for _ in range(cases):
        private = rng.randbytes(32)
        peer = rng.randbytes(32)
        theirs = X25519PrivateKey.from_private_bytes(private)
        assert x25519.public_key(private) == _raw_public(theirs)
        assert x25519.x25519(private, peer) == theirs.exchange(
            X25519PublicKey.from_public_bytes(peer)
        )


def test_x25519_edge_coordinates_agree_with_cryptography() -> None:
    # u >= p (not canonical: taken mod p), the top bit set (masked), small-order points
    # (cryptography refuses their all-zero result; the portable function returns it)
    p = 2**255 - 19
    edges = [0, 1, 2, p - 1, p, p + 1, 2**255 - 1, 2**256 - 1, 9 | 1 << 255]
    private = random.Random(25519).randbytes(32)
    theirs = X25519PrivateKey.from_private_bytes(private)
    for u in edges:
        peer = u.to_bytes(32, "little")
        ours = x25519.x25519(private, peer)
        try:
            expected = theirs.exchange(X25519PublicKey.from_public_bytes(peer))
        except ValueError:
            expected = bytes(32)
        assert ours == expected, hex(u)


def test_chacha20_rfc8439_encryption_vector() -> None:
    out = chacha20poly1305.chacha20_xor(CHACHA20_KEY, 1, h(CHACHA20_NONCE), SUNSCREEN)
    assert out.hex() == CHACHA20_CIPHERTEXT


def test_poly1305_rfc8439_vector() -> None:
    assert chacha20poly1305.poly1305(h(POLY1305_KEY), POLY1305_MESSAGE).hex() == POLY1305_TAG


@pytest.mark.parametrize(("key", "nonce", "aad", "plaintext", "sealed"), AEAD_VECTORS)
def test_aead_rfc8439_vectors(
    key: str, nonce: str, aad: str, plaintext: bytes, sealed: str
) -> None:
    assert chacha20poly1305.seal(h(key), h(nonce), plaintext, h(aad)).hex() == sealed
    assert chacha20poly1305.open(h(key), h(nonce), h(sealed), h(aad)) == plaintext


def test_aead_refuses_tampering() -> None:
    key, nonce, aad, plaintext, sealed_hex = AEAD_VECTORS[0]
    sealed = h(sealed_hex)
    for position in (0, len(sealed) - 17, len(sealed) - 16, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[position] ^= 0x01
        with pytest.raises(ValueError):
            chacha20poly1305.open(h(key), h(nonce), bytes(tampered), h(aad))
    with pytest.raises(ValueError):
        chacha20poly1305.open(h(key), h(nonce), sealed, h(aad) + b"\x00")
    with pytest.raises(ValueError):
        chacha20poly1305.open(h(key), h(nonce), sealed[:15], h(aad))
    with pytest.raises(ValueError):
        chacha20poly1305.seal(h(key)[:31], h(nonce), plaintext, h(aad))


@pytest.mark.parametrize("cases", CASES)
def test_chacha20_agrees_with_cryptography(cases: int) -> None:
    rng = random.Random(8439)
    for _ in range(cases):
        key, nonce = rng.randbytes(32), rng.randbytes(12)
        counter = rng.randrange(0, 2**32 - 8)
        data = rng.randbytes(rng.randrange(0, 300))
        full_nonce = counter.to_bytes(4, "little") + nonce
        theirs = Cipher(algorithms.ChaCha20(key, full_nonce), mode=None).encryptor()
        assert chacha20poly1305.chacha20_xor(key, counter, nonce, data) == theirs.update(data)


@pytest.mark.parametrize("cases", CASES)
def test_aead_agrees_with_cryptography(cases: int) -> None:
    rng = random.Random(8439)
    for _ in range(cases):
        key, nonce = rng.randbytes(32), rng.randbytes(12)
        plaintext = rng.randbytes(rng.randrange(0, 300))
        aad = rng.randbytes(rng.randrange(0, 40))
        sealed = chacha20poly1305.seal(key, nonce, plaintext, aad)
        assert sealed == ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)
        assert chacha20poly1305.open(key, nonce, sealed, aad) == plaintext


@pytest.mark.parametrize(("key", "data", "mac"), HMAC_VECTORS)
def test_hmac_sha256_rfc4231_vectors(key: bytes, data: bytes, mac: str) -> None:
    assert hmac_sha256.hmac_sha256(key, data).hex() == mac


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "prk", "okm"), HKDF_VECTORS)
def test_hkdf_rfc5869_vectors(
    ikm: bytes, salt: bytes, info: bytes, length: int, prk: str, okm: str
) -> None:
    assert hmac_sha256.hkdf_extract(salt, ikm).hex() == prk
    assert hmac_sha256.hkdf_expand(h(prk), info, length).hex() == okm
    assert hmac_sha256.hkdf(salt, ikm, info, length).hex() == okm


def test_hkdf_refuses_too_long_output() -> None:
    with pytest.raises(ValueError):
        hmac_sha256.hkdf_expand(bytes(32), b"", 255 * 32 + 1)


@pytest.mark.parametrize("cases", CASES)
def test_hmac_and_hkdf_agree_with_cryptography(cases: int) -> None:
    rng = random.Random(5869)
    for _ in range(cases):
        key = rng.randbytes(rng.randrange(0, 150))
        message = rng.randbytes(rng.randrange(0, 300))
        theirs = hmac.HMAC(key, hashes.SHA256())
        theirs.update(message)
        assert hmac_sha256.hmac_sha256(key, message) == theirs.finalize()

        salt = rng.randbytes(rng.randrange(0, 80))
        info = rng.randbytes(rng.randrange(0, 80))
        length = rng.randrange(1, 200)
        expected = HKDF(hashes.SHA256(), length, salt or None, info).derive(message)
        assert hmac_sha256.hkdf(salt, message, info, length) == expected
        prk = hmac_sha256.hkdf_extract(salt, message)
        assert hmac_sha256.hkdf_expand(prk, info, length) == HKDFExpand(
            hashes.SHA256(), length, info
        ).derive(prk)
