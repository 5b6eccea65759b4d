"""protocol/vectors/noise.json: the cacophony vectors (NN, XX and IK over SHA-256 and
BLAKE2s), every handshake and transport message byte for byte, through
protocol.session.noise and so through protocol.crypto (the portable primitives
under MicroPython)."""

from check import done, equal, hexed, raises, true, vectors

from protocol.crypto import X25519PrivateKey
from protocol.session.noise import Handshake

V = vectors("noise")["vectors"]


def _public(key):
    return key.public_key().public_bytes_raw()


def check(v):
    name = v["protocol_name"]
    pattern, hash_name = name.split("_")[1], name.split("_")[4]

    def key(field):
        return X25519PrivateKey.from_private_bytes(hexed(v[field])) if field in v else None

    remote = hexed(v["init_remote_static"]) if "init_remote_static" in v else None
    init = Handshake(pattern, initiator=True, static_key=key("init_static"),
                     remote_static=remote, prologue=hexed(v["init_prologue"]),
                     ephemeral_key=key("init_ephemeral"), hash=hash_name)
    resp = Handshake(pattern, initiator=False, static_key=key("resp_static"),
                     prologue=hexed(v["resp_prologue"]), ephemeral_key=key("resp_ephemeral"),
                     hash=hash_name)
    equal(init.protocol_name, name, name)
    equal(resp.protocol_name, name, name)
    sides = (init, resp)
    transport = None
    for i, m in enumerate(v["messages"]):
        writer = sides[i % 2]
        payload, expected = hexed(m["payload"]), hexed(m["ciphertext"])
        what = f"{name} message {i}"
        if not writer.is_complete:
            wire = writer.write_message(payload)
            equal(wire, expected, what)
            equal(sides[1 - i % 2].read_message(wire), payload, what)
            continue
        if transport is None:
            equal(init.handshake_hash, hexed(v["handshake_hash"]), name + " handshake hash")
            equal(resp.handshake_hash, init.handshake_hash, name + " handshake hash")
            (send_i, recv_i), (send_r, recv_r) = init.split(), resp.split()
            transport = ((send_i, recv_r), (send_r, recv_i))
        sealer, opener = transport[i % 2]
        # Explicit nonces with an empty header reproduce Noise's in-order transport.
        nonce, wire = sealer.seal(b"", payload)
        equal(wire, expected, what)
        equal(opener.open(nonce, b"", wire), payload, what)
        raises("replay", opener.open, nonce, b"", wire)
    true(transport is not None, name + " reaches the transport phase")
    if "init_static" in v:
        equal(resp.remote_static, _public(key("init_static")), name + " initiator's key")
        equal(init.remote_static, _public(key("resp_static")), name + " responder's key")
    else:
        true(init.remote_static is None and resp.remote_static is None, name + " anonymous")


def tampered_first_message_fails(v):
    """One flipped bit in a vector's first message fails the responder's handshake
    (the ephemeral key or the tag, whichever it lands in, is mixed into the hash)."""
    name = v["protocol_name"]
    pattern, hash_name = name.split("_")[1], name.split("_")[4]
    resp_static = X25519PrivateKey.from_private_bytes(hexed(v["resp_static"]))
    resp = Handshake(pattern, initiator=False, static_key=resp_static,
                     prologue=hexed(v["resp_prologue"]), hash=hash_name)
    wire = bytearray(hexed(v["messages"][0]["ciphertext"]))
    wire[-1] ^= 1
    raises("handshake", resp.read_message, bytes(wire))


names = set()
for v in V:
    names.add(v["protocol_name"])
    check(v)
    if v["protocol_name"].startswith("Noise_IK_"):
        tampered_first_message_fails(v)
equal(sorted(names), sorted(f"Noise_{p}_25519_ChaChaPoly_{h}" for p in ("NN", "XX", "IK")
                            for h in ("SHA256", "BLAKE2s")), "every pattern and hash")
done()
