#!/usr/bin/env python3
"""Writes the seed corpus of nbd_protocol_fuzz (tests/fuzz/corpus/nbd_protocol/).

Each seed is what a client sends on a fresh connection, preceded by one byte that the fuzz
target uses to choose how many bytes arrive per read (byte % 64 + 1) and, with its top bit,
whether the server requires TLS (FORCEDTLS). The fake server knows the
exports "vol" (read-write, 1 MiB) and "ro" (read-only). Re-run after changing the seeds:
    tests/fuzz/make_nbd_seeds.py
"""
import os
import struct

OPT_MAGIC = 0x49484156454F5054
REQ_MAGIC = 0x25609513
(EXPORT_NAME, ABORT, LIST, PEEK, STARTTLS, INFO, GO, STRUCTURED, LIST_META, SET_META) = range(1, 11)
READ, WRITE, DISC, FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS = range(8)
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO = 1, 2, 4, 8, 16
INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 1, 2, 3
TLS = 0x80  # first byte: the server requires TLS (FORCEDTLS)


def client_flags(flags=3):
    return struct.pack(">I", flags)


def opt(option, data=b""):
    return struct.pack(">QII", OPT_MAGIC, option, len(data)) + data


def go(name, infos=(), option=GO):
    n = name.encode()
    body = struct.pack(">I", len(n)) + n + struct.pack(">H", len(infos))
    return opt(option, body + b"".join(struct.pack(">H", i) for i in infos))


def meta(option, name, queries):
    n = name.encode()
    body = struct.pack(">I", len(n)) + n + struct.pack(">I", len(queries))
    for q in queries:
        body += struct.pack(">I", len(q)) + q.encode()
    return opt(option, body)


def req(typ, offset=0, length=0, flags=0, handle=1, payload=None):
    out = struct.pack(">IHHQQI", REQ_MAGIC, flags, typ, handle, offset, length)
    if typ == WRITE and payload is None:
        payload = bytes([0xAB]) * length
    return out + (payload or b"")


def transmission_mix():
    return b"".join([
        req(WRITE, 0, 4096, handle=1),
        req(WRITE, 8192, 512, FUA, handle=2),
        req(READ, 0, 4096, handle=3),
        req(READ, 0, 4096, DF, handle=4),
        req(FLUSH, handle=5),
        req(TRIM, 4096, 4096, handle=6),
        req(WRITE_ZEROES, 0, 65536, NO_HOLE, handle=7),
        req(WRITE_ZEROES, 0, 65536, FAST_ZERO, handle=8),
        req(WRITE_ZEROES, 0, 65536, FAST_ZERO | NO_HOLE, handle=9),
        req(BLOCK_STATUS, 0, 1 << 20, handle=10),
        req(BLOCK_STATUS, 0, 1 << 20, REQ_ONE, handle=11),
        req(CACHE, 0, 4096, handle=12),
        req(READ, 100, 4096, handle=13),              # unaligned
        req(WRITE, (1 << 20) - 512, 1024, handle=14),  # beyond the end
        req(READ, 0, 64 << 20, handle=15),            # over the maximum
        req(READ, 0, 0, handle=16),                   # zero length
        req(FLUSH, 1, 0, handle=17),                  # flush with an offset
        req(99, 0, 0, handle=18),                     # unknown command
        req(READ, 0, 4096, 0x80, handle=19),          # unknown flag
        req(DISC),
    ])


SEEDS = {
    "go_structured_meta": bytes([63]) + client_flags() + opt(STRUCTURED)
    + meta(SET_META, "vol", ["base:allocation"])
    + go("vol", [INFO_BLOCK_SIZE, INFO_NAME, INFO_DESCRIPTION]) + transmission_mix(),
    "go_simple": bytes([7]) + client_flags(1) + go("vol") + transmission_mix(),
    "export_name_zeroes": bytes([0]) + client_flags(1) + opt(EXPORT_NAME, b"vol")
    + transmission_mix(),
    "export_name_no_zeroes": bytes([31]) + client_flags(3) + opt(STRUCTURED)
    + opt(EXPORT_NAME, b"vol") + transmission_mix(),
    "read_only": bytes([63]) + client_flags() + opt(STRUCTURED) + go("ro", [INFO_BLOCK_SIZE])
    + req(WRITE, 0, 4096) + req(TRIM, 0, 4096) + req(WRITE_ZEROES, 0, 4096)
    + req(READ, 0, 4096) + req(DISC),
    "info_list_meta": bytes([5]) + client_flags() + go("vol", [INFO_BLOCK_SIZE], INFO)
    + opt(LIST) + opt(LIST, b"x") + meta(LIST_META, "vol", [])
    + meta(LIST_META, "vol", ["base:", "qemu:dirty-bitmap:x", "nocolon"])
    + meta(SET_META, "vol", ["base:allocation"]) + opt(STARTTLS) + opt(42, b"data")
    + opt(PEEK) + opt(ABORT),
    "unknown_then_go": bytes([63]) + client_flags() + go("nope") + go("") + go("vol@snap")
    + opt(STRUCTURED, b"junk") + go("vol") + req(READ, 0, 512) + req(DISC),
    "too_long_option": bytes([40]) + client_flags() + opt(INFO, bytes(5000)) + opt(77, bytes(9000))
    + go("vol") + req(READ, 0, 512),
    "malformed_go": bytes([63]) + client_flags() + opt(GO, struct.pack(">I", 100) + b"vol")
    + opt(GO, struct.pack(">I", 3) + b"vol" + struct.pack(">H", 5) + b"\x00\x03")
    + opt(SET_META, struct.pack(">I", 3) + b"vol") + go("vol"),
    "bad_option_magic": bytes([63]) + client_flags() + b"NOTMAGIC" + struct.pack(">II", 7, 0),
    "unknown_client_flags": bytes([63]) + client_flags(0x80000003),
    "bad_request_magic": bytes([63]) + client_flags() + go("vol")
    + struct.pack(">IHHQQI", 0x12345678, 0, READ, 1, 0, 512),
    "write_payload_skip": bytes([63]) + client_flags() + opt(STRUCTURED) + go("vol")
    + req(WRITE, 1 << 20, 4096) + req(WRITE, 3, 4096) + req(READ, 0, 512) + req(DISC),
    # FORCEDTLS (first byte's top bit): options before STARTTLS get NBD_REP_ERR_TLS_REQD, then
    # STARTTLS, then negotiation "inside TLS".
    "tls_starttls_then_go": bytes([TLS | 63]) + client_flags() + opt(STARTTLS) + opt(STRUCTURED)
    + go("vol", (INFO_BLOCK_SIZE,)) + req(READ, 0, 4096) + req(DISC),
    "tls_options_before_starttls": bytes([TLS | 7]) + client_flags() + opt(LIST) + go("vol")
    + go("vol", option=INFO) + opt(STRUCTURED) + meta(LIST_META, "vol", []) + opt(42, b"x")
    + opt(INFO, b"a" * 5000) + opt(STARTTLS) + opt(LIST) + go("ro"),
    "tls_export_name_before_starttls": bytes([TLS | 63]) + client_flags() + opt(EXPORT_NAME, b"vol"),
    "tls_starttls_twice": bytes([TLS | 3]) + client_flags() + opt(STARTTLS, b"x") + opt(STARTTLS)
    + opt(STARTTLS) + opt(EXPORT_NAME, b"vol") + req(WRITE, 0, 512) + b"\0" * 512,
    "tls_abort_before_starttls": bytes([TLS | 63]) + client_flags() + opt(ABORT),
    "tls_without_fixed_newstyle": bytes([TLS | 63]) + client_flags(2) + opt(STARTTLS),
}


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "nbd_protocol")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(SEEDS)} seeds to {out}")


if __name__ == "__main__":
    main()
