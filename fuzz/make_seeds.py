#!/usr/bin/env python3
"""Writes the small seed corpus in fuzz/seeds/ (run from the fuzz/ directory).

The bytes follow docs/FORMAT.md; the seeds are starting points for the fuzzer and are replayed
by `cargo test` (tests/fuzz_seeds.rs)."""
import os
import struct
import zlib


def segment_header(base, version=2):
    head = b"DSPOOLSG" + struct.pack("<HHIQI", version, 32, 0, base, 0)
    return head + struct.pack("<I", zlib.crc32(head))


def frame(seq, payload, continues=False, enqueued=1_700_000_000_000_000, not_before=0, ttl=0):
    """A frame; with `not_before` (DELAYED, bit 30) or `ttl` (TTL, bit 29, version 3 only) their
    8-byte prefixes come first in the body."""
    prefix = b""
    flags = 1 << 31 if continues else 0
    if not_before:
        prefix += struct.pack("<Q", not_before)
        flags |= 1 << 30
    if ttl:
        prefix += struct.pack("<Q", ttl)
        flags |= 1 << 29
    len_flags = (len(prefix) + len(payload)) | flags
    body = struct.pack("<IQQ", len_flags, seq, enqueued) + prefix + payload
    out = struct.pack("<I", zlib.crc32(body)) + body
    return out + b"\0" * (-len(out) % 8)


def segment(base, payloads):
    out = segment_header(base)
    for i, p in enumerate(payloads):
        out += frame(base + i, p)
    return out


def head_slot(generation, head_seq, hint_base, hint_offset):
    slot = b"DSPOOLHD" + struct.pack("<HHIQQQQ", 2, 64, 0, generation, head_seq, hint_base, hint_offset)
    slot += b"\0" * 12
    return slot + struct.pack("<I", zlib.crc32(slot))


def head_file(slot0, slot1=None):
    out = bytearray(4096 + 64)
    out[0:64] = slot0
    if slot1:
        out[4096:4160] = slot1
    return bytes(out)


def acklog_header(log_id, version=2):
    head = b"DSPOOLAK" + struct.pack("<HHHHQI", version, 32, 24, 0, log_id, 0)
    return head + struct.pack("<I", zlib.crc32(head))


def ack_entry(log_id, kind, seq, value, synced_before=False):
    # Version 4: bit 7 of the kind byte is the SYNCED_BEFORE mark (FORMAT.md, "Ack log").
    body = struct.pack("<B3xQQ", kind | (0x80 if synced_before else 0), seq, value)
    return struct.pack("<I", zlib.crc32(struct.pack("<Q", log_id) + body)) + body


def torn(entry):
    return entry[:12] + bytes([entry[12] ^ 1]) + entry[13:]


def dir_blob(seed, files):
    """The open_dir input: 8 seed bytes, then (selector, u16 length, bytes) per file."""
    out = struct.pack("<Q", seed)
    for selector, content in files:
        out += bytes([selector]) + struct.pack("<H", len(content)) + content
    return out


def write(target, name, data):
    os.makedirs(f"seeds/{target}", exist_ok=True)
    with open(f"seeds/{target}/{name}", "wb") as f:
        f.write(data)


records = [b"alpha", b"", b"x" * 100, b"batch-1", b"batch-2"]
seg = segment(0, records)
write("segment_decode", "three_records", seg)
write("segment_decode", "torn_tail", seg[:-5])
damaged = bytearray(seg)
damaged[40] ^= 1
write("segment_decode", "damage_then_valid", bytes(damaged))
batch = segment_header(7) + frame(7, b"a", True) + frame(8, b"b", True) + frame(9, b"c")
write("segment_decode", "batch", batch)
write("segment_decode", "zero_tail", seg + b"\0" * 64)
# Format version 3: records with a TTL, one delayed too, one in a batch.
v3 = (segment_header(3, version=3) + frame(3, b"plain") + frame(4, b"ttl", ttl=60_000_000)
      + frame(5, b"both", not_before=1_700_000_000_500_000, ttl=5)
      + frame(6, b"b1", True, ttl=7) + frame(7, b"b2", ttl=7))
write("segment_decode", "v3_ttl_records", v3)
write("segment_decode", "v3_ttl_torn", v3[:-9])

write("head_decode", "slot0", head_file(head_slot(1, 0, 0, 32)))
write("head_decode", "both_slots", head_file(head_slot(4, 10, 0, 200), head_slot(5, 11, 0, 232)))
write("head_decode", "torn_slot1", head_file(head_slot(4, 10, 0, 200), head_slot(5, 11, 0, 232)[:40]))

acks = acklog_header(7) + ack_entry(7, 1, 2, 4) + ack_entry(7, 2, 1, 3) + ack_entry(7, 3, 5, 99)
write("acklog_decode", "three_kinds", acks)
write("acklog_decode", "torn_entry", acks[:-7])
write("acklog_decode", "overlapping", acklog_header(1) + ack_entry(1, 1, 2, 6) + ack_entry(1, 1, 4, 9) + ack_entry(1, 1, 9, 12))
# Version 4: a torn entry before a marked one (damage), and one after the last mark (skippable).
v4 = acklog_header(3, 4) + ack_entry(3, 1, 2, 4, True) + torn(ack_entry(3, 2, 1, 3))
write("acklog_decode", "v4_torn_before_a_mark", v4 + ack_entry(3, 3, 5, 99, True))
write("acklog_decode", "v4_torn_after_the_last_mark", v4 + ack_entry(3, 3, 5, 99))

# open_dir selectors: 0 head, 1 head.tmp, 2 acks, 3 stray, 8*k+4.. segment with base k.
head = head_file(head_slot(3, 1, 0, 32 + len(frame(0, records[0]))))
write("open_dir", "one_segment", dir_blob(1, [(0, head), (4, seg)]))
seg5 = segment(5, [b"five", b"six"])
write("open_dir", "two_segments", dir_blob(2, [(0, head), (4, seg), (44, seg5)]))
write("open_dir", "torn_active", dir_blob(3, [(0, head), (4, seg[:-3]), (1, b"garbage")]))
write("open_dir", "missing_head", dir_blob(4, [(4, seg)]))
write("open_dir", "empty", dir_blob(5, []))
write("open_dir", "with_acks", dir_blob(6, [(0, head), (4, seg), (2, acklog_header(1) + ack_entry(1, 1, 2, 4) + ack_entry(1, 2, 1, 3))]))

# ops_model: opcode byte (mod 16) and arguments; see diskspool::fuzzing::ops_from_bytes.
push = lambda n: bytes([0, n & 0xFF, n >> 8])
pop = lambda m: bytes([5, m])
write("ops_model", "push_pop", push(10) + push(300) + pop(1) + pop(3))
write("ops_model", "power_loss_never",
      bytes([11, 2]) + push(500) * 8 + pop(2) + bytes([13, 0x20, 7]) + pop(8))
write("ops_model", "fault_then_crash",
      push(100) + bytes([14, 1, 0, 0]) + push(200) + bytes([12, 0]) + pop(4))
write("ops_model", "batches_compact",
      bytes([4, 5, 100]) * 6 + pop(8) * 3 + bytes([9, 0]) + bytes([13, 0x12, 3]) + pop(8))
# PushTtl (opcode 15, a % 16 == 2): batches with a TTL through a power loss and a reopen.
push_ttl = lambda count, n: bytes([15, 2 | ((count - 1) << 4), n])
write("ops_model", "ttl_through_crashes",
      bytes([11, 0]) + push(10) + push_ttl(3, 50) + bytes([13, 0x20, 7]) + pop(8)
      + push_ttl(1, 9) + push(40) + bytes([11, 1]) + pop(8))
