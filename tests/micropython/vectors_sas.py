"""protocol/vectors/sas.json: the commitment and the short code, as the code and as
SPEC.md words them; a nonce other than the one committed to is refused."""

import hashlib

from check import done, equal, hexed, raises, true, vectors

from protocol import sas

V = vectors("sas")


def framed(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(2, "big") + p for p in parts)


for case in V["cases"]:
    b, ni, nr = hexed(case["binding"]), hexed(case["nonce_i"]), hexed(case["nonce_r"])
    equal(sas.commit(b, ni).hex(), case["commit"], "commit")
    equal(sas.code(b, ni, nr), case["code"], "code")
    sas.check_commit(hexed(case["commit"]), b, ni)
    raises("bad-commit", sas.check_commit, hexed(case["commit"]), b, nr)
    # as SPEC.md words it, apart from the code
    label = hexed(V["commit_label"])
    equal(hashlib.sha256(label + framed(b, ni)).digest().hex(), case["commit"], "commit rule")
    digest = hashlib.sha256(hexed(V["code_label"]) + framed(b, ni, nr)).digest()
    equal("{:06d}".format(int.from_bytes(digest[:8], "big") % 10**6), case["code"], "code rule")
    true(sas.matches(case["code"], sas.display(case["code"])), "typed as displayed")

for bad in ("12345", "1234567", "12a456", "\u0661\u0662\u0663\u0664\u0665\u0666", ""):
    raises("bad-code", sas.normalise, bad)

done()
