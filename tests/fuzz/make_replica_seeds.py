#!/usr/bin/env python3
"""Writes the seed corpus of replica_frame_fuzz (tests/fuzz/corpus/replica_frame/).

Each seed is a byte stream as a replica peer sends it, preceded by one control byte (see
replica_frame_fuzz.cc): bits 0-5 = bytes per receive - 1, bit 6 = fix checksums (the seeds leave
the checksum fields zero and set this bit, so no XXH3 is needed here), bit 7 = receive large data
into a buffer. Frame format: docs/format/replica-protocol.md. Re-run after changing the seeds:
    tests/fuzz/make_replica_seeds.py
"""
import os
import struct

MAGIC = 0x50524853
(HELLO, AUTH, OPEN, READ, WRITE, WRITE_ZEROES, DISCARD, FLUSH, HASH_RANGES, GET_INFO,
 SET_GENERATION, SNAPSHOT, CREATE_REPLICA, DELETE_REPLICA, STAT_REPLICA, SNAPSHOT_DIGEST,
 DELETE_SNAPSHOT, TAKE_SNAPSHOT, LIST_SNAPSHOTS) = range(1, 20)
REPLY = 0x80
FUA, NO_UNMAP = 1, 2
OK, EIO, ENOSPC, STALE_EPOCH = 0, 1, 2, 3
FIX, DIRECT = 0x40, 0x80


def frame(typ, payload=b"", flags=0, status=0, rid=1, epoch=7, magic=MAGIC, version=1,
          length=None):
    n = len(payload) if length is None else length
    return struct.pack("<IBBHIIQQQ", magic, version, typ, flags, n, status, rid, epoch, 0) + payload


def hello(node="node-b"):
    return frame(HELLO, bytes(32) + struct.pack("<QIHH", 32 << 20, 256, len(node), 0) + node.encode(),
                 rid=0, epoch=0)


def auth(node="node-a"):
    return frame(AUTH, bytes(range(32)) + bytes(32) + struct.pack("<HHI", len(node), 0, 0) + node.encode(),
                 rid=0, epoch=0)


def open_req(vol="vol", size=1 << 30):
    return frame(OPEN, bytes(16) + struct.pack("<QHHI", size, len(vol), 0, 0) + vol.encode(), rid=2)


def create_replica(vol="vol", pool="", size=1 << 30, rid=3, source=""):
    return frame(CREATE_REPLICA, bytes(range(16))
                 + struct.pack("<QHHHH", size, len(vol), len(pool), len(source), 0)
                 + vol.encode() + pool.encode() + source.encode(), rid=rid)


def replica_ref(typ, vol="vol", rid=4):
    return frame(typ, bytes(range(16)) + struct.pack("<HHI", len(vol), 0, 0) + vol.encode(), rid=rid)


def snapshot_ref(typ, vol="vol", snap="s1", rid=7, labels=b""):
    return frame(typ, bytes(range(16)) + struct.pack("<HHI", len(vol), len(snap), len(labels))
                 + vol.encode() + snap.encode() + labels, rid=rid)


def snapshot_entry(name, created, size, digest=b"", labels=b""):
    return struct.pack("<QQHHI", created, size, len(name), len(digest), len(labels)) + name + digest + labels


def replica_stat(typ, created, rid):
    return frame(typ | REPLY, struct.pack("<QQQQII", 1 << 30, 65536, 7, 6, created, 0), rid=rid)


def io(offset, length):
    return struct.pack("<QII", offset, length, 0)


def zr(offset, length):
    return struct.pack("<QQ", offset, length)


def string(s):
    return struct.pack("<II", len(s), 0) + s.encode()


def requests(large=False):
    return b"".join([
        frame(READ, io(0, 4096), rid=10),
        frame(WRITE, io(4096, 4096) + bytes([0xAB]) * 4096, FUA, rid=11),
        frame(WRITE, io(1 << 20, 70000 if large else 700) + bytes([0xCD]) * (70000 if large else 700),
              rid=12),  # large: in place
        frame(WRITE_ZEROES, zr(0, 1 << 20), FUA | NO_UNMAP, rid=13),
        frame(DISCARD, zr(1 << 20, 65536), FUA, rid=14),
        frame(FLUSH, rid=15),
        frame(HASH_RANGES, struct.pack("<QQII", 0, 8 << 20, 1 << 20, 0), rid=16),
        frame(GET_INFO, zr(0, 1 << 30), rid=17),
        frame(SET_GENERATION, struct.pack("<Q", 6), rid=18),
        frame(SNAPSHOT, string("snap-1"), rid=19),
        frame(READ, io(100, 512), rid=20),              # unaligned
        frame(WRITE_ZEROES, zr((1 << 30) - 512, 1024), rid=21),  # past the end
    ])


def replies(large=False):
    extents = struct.pack("<QQ", 0, 4096) + struct.pack("<QQ", 65536, 8192)
    return b"".join([
        frame(READ | REPLY, bytes([0x11]) * 4096, rid=10),
        frame(READ | REPLY, bytes([0x22]) * (100000 if large else 1000), rid=11),  # large: in place
        frame(WRITE | REPLY, rid=12),
        frame(FLUSH | REPLY, rid=13),
        frame(HASH_RANGES | REPLY, struct.pack("<II", 2, 0) + bytes(range(32)), rid=14),
        frame(GET_INFO | REPLY, struct.pack("<QQQQQII", 1 << 20, 12288, 2, 7, 1 << 20, 2, 0)
              + extents, rid=15),
        frame(SET_GENERATION | REPLY, struct.pack("<QQ", 7, 6), rid=16),
        frame(OPEN | REPLY, struct.pack("<QQQQII", 1 << 30, 6, 7, 32 << 20, 256, 0), rid=17),
        frame(WRITE | REPLY, string("epoch 5 is older than the replica's 7"), status=STALE_EPOCH,
              rid=18),
        frame(READ | REPLY, string("device failed"), status=EIO, rid=19),
        frame(WRITE | REPLY, string(""), status=ENOSPC, rid=20),
    ])


SEEDS = {
    "handshake": bytes([FIX | 63]) + hello() + auth() + frame(AUTH | REPLY, bytes(32), rid=0)
    + open_req(),
    "auth_then_requests": bytes([FIX | 20]) + auth() + open_req() + requests(),
    "requests_direct": bytes([FIX | DIRECT | 63]) + requests(large=True),
    "requests_bytewise": bytes([FIX | 0]) + requests(),
    "replies_direct": bytes([FIX | DIRECT | 62]) + hello() + frame(AUTH | REPLY, bytes(32), rid=0)
    + replies(large=True),
    "replies_discard": bytes([FIX | 5]) + frame(READ | REPLY, bytes(70000), rid=3) + replies(),
    "auth_failed": bytes([FIX | 63]) + hello()
    + frame(AUTH | REPLY, string("authentication failed"), status=8, rid=0),
    "bad_checksum": bytes([63]) + frame(FLUSH, rid=1),  # checksum left zero, not fixed
    "bad_magic": bytes([FIX | 63]) + frame(FLUSH, magic=0x4E42444D),
    "bad_version": bytes([FIX | 63]) + frame(FLUSH, version=2),
    "oversized": bytes([FIX | 63]) + frame(WRITE, io(0, 4096), length=0xFFFFFFF0),
    "truncated": bytes([FIX | 63]) + frame(WRITE, io(0, 4096) + bytes(4096))[:3000],
    "garbage": bytes([FIX | 63]) + b"GET / HTTP/1.1\r\nHost: replica\r\n\r\n" + bytes(range(256)),
    "placement": bytes([FIX | 31]) + auth() + create_replica() + create_replica("vol", "fast", rid=5)
    + create_replica("clone", "", rid=8, source="vol@s1")
    + replica_ref(STAT_REPLICA) + replica_ref(DELETE_REPLICA, rid=6) + open_req(),
    "placement_replies": bytes([FIX | 63]) + hello() + frame(AUTH | REPLY, bytes(32), rid=0)
    + replica_stat(CREATE_REPLICA, 1, 3) + replica_stat(STAT_REPLICA, 0, 4)
    + frame(DELETE_REPLICA | REPLY, rid=5)
    + frame(CREATE_REPLICA | REPLY, string("volume 'vol' exists and is not a replica"), status=5,
            rid=6),
    "bad_placement": bytes([FIX | 63])
    + frame(CREATE_REPLICA, bytes(16) + struct.pack("<QHHI", 4096, 3, 200, 0) + b"volpool")
    + frame(CREATE_REPLICA, bytes(16) + struct.pack("<QHHI", 0, 3, 0, 0) + b"vol")
    + frame(STAT_REPLICA | REPLY, struct.pack("<QQQQII", 4096, 0, 3, 4, 2, 0)),
    "snapshots": bytes([FIX | 31]) + auth() + snapshot_ref(SNAPSHOT_DIGEST)
    + snapshot_ref(DELETE_SNAPSHOT, "vol", "nightly", rid=8)
    + snapshot_ref(TAKE_SNAPSHOT, "vol", "hourly", rid=10, labels=b"source=s3://b/p\nteam=nb\n")
    + open_req()
    + frame(SNAPSHOT, string("s2"), rid=9)
    # From a target without a replica: the copy's labels after the name (their length in the
    # WireString's second word).
    + frame(SNAPSHOT, struct.pack("<II", 2, 34) + b"s3" + b"shale.io/snapshot-replicas=node-a\n",
            rid=11),
    "snapshot_replies": bytes([FIX | 63]) + hello() + frame(AUTH | REPLY, bytes(32), rid=0)
    + frame(SNAPSHOT_DIGEST | REPLY, string("00112233445566778899aabbccddeeff"), rid=7)
    + frame(DELETE_SNAPSHOT | REPLY, rid=8)
    + frame(TAKE_SNAPSHOT | REPLY, string("volume 'vol' is not served here"), status=10, rid=10)
    + frame(SNAPSHOT_DIGEST | REPLY, string("x" * 65), rid=9),
    "bad_snapshot_ref": bytes([FIX | 63])
    + frame(SNAPSHOT_DIGEST, bytes(16) + struct.pack("<HHI", 3, 0, 0) + b"vol")
    + frame(DELETE_SNAPSHOT, bytes(16) + struct.pack("<HHI", 3, 9, 0) + b"vols1"),
    # LIST_SNAPSHOTS (what a target without a replica lists) and its replies: two entries (one
    # with a digest and labels), an empty list, a list whose count runs past its entries.
    "snapshot_lists": bytes([FIX | 31]) + auth() + replica_ref(LIST_SNAPSHOTS, rid=12) + open_req(),
    "snapshot_list_replies": bytes([FIX | 63]) + hello() + frame(AUTH | REPLY, bytes(32), rid=0)
    + frame(LIST_SNAPSHOTS | REPLY, struct.pack("<II", 2, 0)
            + snapshot_entry(b"s1", 7, 8192, b"00112233445566778899aabbccddeeff",
                             b"shale.io/snapshot-replicas=node-b,node-c\n")
            + snapshot_entry(b"s2", 9, 4096), rid=12)
    + frame(LIST_SNAPSHOTS | REPLY, struct.pack("<II", 0, 1), rid=13)
    + frame(LIST_SNAPSHOTS | REPLY, struct.pack("<II", 3, 0) + snapshot_entry(b"s1", 1, 1), rid=14),
    "bad_names": bytes([FIX | 63])
    + frame(OPEN, bytes(16) + struct.pack("<QHHI", 4096, 200, 0, 0) + b"vol")
    + frame(SNAPSHOT, struct.pack("<II", 0, 0)),
}


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "replica_frame")
    os.makedirs(out, exist_ok=True)
    for seed, data in SEEDS.items():
        with open(os.path.join(out, seed), "wb") as f:
            f.write(data)
    print(f"wrote {len(SEEDS)} seeds to {out}")


if __name__ == "__main__":
    main()
