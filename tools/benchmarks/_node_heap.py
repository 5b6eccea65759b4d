"""The fridge node's heap, under MicroPython: ``micropython _node_heap.py FOLDER [READINGS]``.

Run with MICROPYPATH at a board's ``lib`` (tools/build_node_mpy.py), so the
modules load as .mpy. Prints one JSON object: ``gc.mem_alloc()`` after a
collection at each step (bytes), and what the kiosk received.

1. ``start``: nothing of ours imported; ``imported``: the node's modules;
2. ``node``: a provisioned ``Node`` (its ring preallocated), no kiosk key yet;
3. ``readings``: READINGS readings taken, one a minute, none sent;
4. ``open``: the kiosk's key given, the Noise IK handshake done against a
   responder ``Session`` in this process, the welcome taken, and the first
   batches sent and not acknowledged (the node's window);
5. ``node_open``: the same with the responder and its bytes dropped: what the
   node holds with a session open and READINGS readings queued.

The GC scans the C stack conservatively, and a frame's stale temporaries can
keep an object alive: the responder lives in ``join``'s frame only, gone when
it returns, so the last figure holds the node's data and the module state its
first run created, and no more.
"""

import gc
import json
import sys


def used():
    gc.collect()
    return gc.mem_alloc()


def contents(root):
    """What ``root`` holds, walked through instances' attributes and containers:
    (bytes of byte and text strings, ints of 2**30 or more, objects seen). A
    32-bit board keeps the bytes as they are, boxes those ints (31-bit small
    ints) and halves the rest (pointer-sized words)."""
    seen = set()
    payload = big = 0
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (bytes, bytearray, str)):
            payload += len(obj)
        elif isinstance(obj, int) and not isinstance(obj, bool):
            big += not -(2**30) <= obj < 2**30
        elif isinstance(obj, (list, tuple)):
            todo.extend(obj)
        elif isinstance(obj, dict):
            todo.extend(obj.keys())
            todo.extend(obj.values())
        elif hasattr(obj, "__dict__") and not callable(obj) and type(obj) is not type:
            todo.extend(obj.__dict__.values())
    return payload, big, len(seen)


def join(node, now, readings, node_key, kiosk_seed, heap):
    """Open the node's session to a responder made here, welcome it and take its first
    batches; (connected, [[first, count, first value, last value], ...]). The responder
    lives in this frame only, so nothing of it outlives the call."""
    from device.fridge_node.link import WINDOW, session_config
    from protocol import sensor
    from protocol.crypto import X25519PrivateKey
    from protocol.session.core import Connected, MessageReceived, Session

    kiosk_key = X25519PrivateKey.from_private_bytes(kiosk_seed)
    node.settings.kiosk_public = kiosk_key.public_key().public_bytes_raw()
    node_public = X25519PrivateKey.from_private_bytes(node_key).public_key()
    node_public = node_public.public_bytes_raw()
    kiosk = Session(initiator=False, config=session_config(115200), static_key=kiosk_key,
                    accept_static=lambda key: key == node_public, now=now)
    received = []
    connected = False
    for _ in range(200):  # a handful of round trips; bounded
        kiosk.receive_data(node.output(now), now)
        while (event := kiosk.next_event()) is not None:
            if isinstance(event, Connected):
                connected = True
            elif isinstance(event, MessageReceived):
                msg = sensor.decode(event.data)
                if msg.spec is sensor.HELLO:
                    kiosk.send_message(sensor.ALARM_LANE, sensor.encode(
                        sensor.WELCOME, time=1_800_000_000, acked=0, alarms_acked=0))
                elif msg.spec is sensor.READINGS:
                    got = msg.get("readings")
                    received.append([msg.get("first"), len(got), got[0][1], got[-1][1]])
        node.receive(kiosk.data_to_send(now), now)
        if sum(r[1] for r in received) >= min(WINDOW, readings):
            break
        now += 0.05
    heap["open"] = used()
    return connected, received


def main():
    heap = {"start": used()}
    from device.fridge_node.link import WINDOW
    from device.fridge_node.node import Node
    from device.fridge_node.sensors import SimulatedSensor
    from protocol import sensor  # noqa: F401  (join's imports, loaded before the figure)
    from protocol.session import core  # noqa: F401

    heap["imported"] = used()
    folder = sys.argv[1]
    readings = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    node_key = bytes(range(1, 33))
    kiosk_seed = bytes(range(33, 65))
    with open(folder + "/node.key", "wb") as f:
        f.write(node_key)
    with open(folder + "/config.json", "w") as f:
        json.dump({"name": "fridge-1", "values": {}}, f)

    node = Node(folder, SimulatedSensor("steady:5.0"), 0.0)
    heap["node"] = used()
    now = 60.0 * (readings - 1)
    node.advance(now)
    heap["readings"] = used()
    connected, received = join(node, now, readings, node_key, kiosk_seed, heap)
    state = node.link.state
    heap["node_open"] = used()
    payload, big, objects = contents(node)
    print(json.dumps({
        "heap": heap, "loaded_from": sys.modules["device.fridge_node.node"].__file__,
        "connected": connected, "state": state, "received": received,
        "ring": node.ring.count, "capacity": node.ring.capacity, "window": WINDOW,
        "payload": payload, "big_ints": big, "objects": objects}))
    import micropython

    micropython.mem_info()


if __name__ == "__main__":
    main()
