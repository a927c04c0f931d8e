"""Regenerate the hand-made part of the seed corpora (deterministic).

    python tests/fuzz/make_seeds.py

Writes ``corpus/<target>/seed-*`` files; files found by fuzzing campaigns
(``corpus/<target>/<sha1>``, minimized with libFuzzer ``-merge=1``) are left alone.
"""
from __future__ import annotations

import os
import random
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # noqa
sys.path.insert(0, HERE)

from iotlb import wire  # noqa: E402


def rec(t, iova=0, size=0, uaddr=0, perm=3, asid=0, version=2):
    return struct.pack("<iIQQQBB38x", version, asid, iova, size, uaddr, perm, t)


def wire_seeds():
    U = wire.VHOST_IOTLB_UPDATE
    out = {
        "update-v2": b"\x00" + rec(U, 0x1000, 0x2000, 0x7F0000001000),
        "update-v2-asid": b"\x01" + rec(U, 0x1000, 0x2000, 0, asid=1),
        "update-v1": b"\x00" + rec(U, 0, 0x1000, 0, version=1),
        "invalidate-size0": b"\x00" + rec(wire.VHOST_IOTLB_INVALIDATE),
        "batch": b"\x10" + rec(wire.VHOST_IOTLB_BATCH_BEGIN) + rec(wire.VHOST_IOTLB_BATCH_END),
        "short-39": b"\x00" + rec(U, 0, 1)[:39],
        "short-7-acked": b"\x01" + rec(U, 0, 1)[:7],
        "bad-outer": b"\x00" + rec(U, 0, 1, version=3),
        "neg-outer": b"\x00" + rec(U, 0, 1, version=-1),
        "stream-trunc": b"\x30" + rec(U, 0, 4096) * 3 + b"\x02\x00",
        "stream-bad-2nd": b"\x50" + rec(U, 0, 4096) + rec(U),
        "iova-range": b"\x40" + struct.pack("<QQ", 0x1000, (1 << 64) - 1),
        "vring": b"\x40" + struct.pack("<II", 2, 1),
        "view-q": b"\x06" + rec(U, 8, 8),
        "view-strided": b"\x08" + rec(U, 8, 8),
        "ctor": b"\x80" + bytes(range(64)),
        "ctor-odd": b"\x81" + bytes([13, 5, 13, 6, 8, 9, 11, 12, 13, 7]) * 6,
    }
    return out


def write_seeds():
    U, I = wire.VHOST_IOTLB_UPDATE, wire.VHOST_IOTLB_INVALIDATE
    out = {}
    # byte0 backend, byte1 cfg (no extras), memlock idx, u16 features, then ops:
    # op byte < 0xE0 = write; record kind byte: k % 16 picks the type (0..5 UPDATE)
    for b in range(7):
        body = bytearray([b, 0x18, 0]) + b"\xff\xff"  # cfg: features & offered, MSG_V2
        for i in range(6):
            # write, kind=i (UPDATE), iova small page (addr kind 0), size pages, perm
            body += bytes([0x00, i, 0x00, i + 1, 0x00, 3, 0x00, 0x00])
        body += bytes([0x00, 0x06, 0x00, 2, 0x00, 3])      # INVALIDATE
        body += bytes([0xF0, 1])                           # ioctl: SET_STATUS(0)
        body += bytes([0xF0, 6, 1, 0xFF, 0xFF])            # release + reopen
        out[f"backend{b}-basic"] = bytes(body)
    rnd = random.Random(1)
    for b in range(7):
        out[f"backend{b}-random"] = bytes([b]) + bytes(rnd.randrange(256) for _ in range(300))
    out["layout-strict"] = bytes([2, 0x1E, 3, 4, 0, 1, 2, 0, 1, 2, 3, 4, 1, 0, 3, 1]) + \
        bytes(rnd.randrange(256) for _ in range(200))
    return out


def engine_seeds():
    rnd = random.Random(2)
    out = {}
    for i in range(12):
        out[f"random-{i}"] = bytes(rnd.randrange(256) for _ in range(rnd.randrange(64, 600)))
    # limit/retire configs with bulk loads (op 18) then mixed ops
    for cfg in (0x00, 0x83, 0x88, 0x89):
        body = bytearray([cfg, 18, 0x58, 0x02, 0, 1, 2, 3, 4, 0xFF])
        body += bytes(rnd.randrange(256) for _ in range(300))
        out[f"bulk-{cfg:02x}"] = bytes(body)
    return out


def main():
    for target, seeds in (("wire", wire_seeds()), ("write", write_seeds()),
                          ("engine", engine_seeds())):
        d = os.path.join(HERE, "corpus", target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, "seed-" + name), "wb") as fp:
                fp.write(data)
        print(f"{target}: {len(seeds)} seeds in {d}")


if __name__ == "__main__":
    main()
