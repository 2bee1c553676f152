//! The control file (`control`): the state that processes sharing a queue keep in one small
//! shared mapping. Layout only; the engine maps it and reads and writes its words atomically.
//!
//! ```text
//! offset  size  field
//!      0     8  magic         "DSPOOLCT"
//!      8     4  version       CONTROL_VERSION
//!     12     4  reserved      zero
//!     16     8  build_id      non-zero; new each time the first opener rebuilds the file
//!     64     8  tail_gen      commits of the tail: slot `tail_gen % 2` holds the current one
//!     72     8  tail_dirty    non-zero while a writer changes the log past the committed tail
//!     80    24  slot 0        active_base, tail (bytes), next_seq: a committed tail
//!    104    24  slot 1        the same
//!    128     4  arrivals      bumped after each commit (a futex word)
//!    132     4  sleepers      processes waiting on `arrivals`
//!    136    16  reserved      zero (before version 4: the consumer's pid and epoch)
//!    152     4  tail_lock     0 free, else (owner ticket << 1) | waiters (a futex word)
//!    156     4  reserved
//!    160     8  published_gen commits of the published tail
//!    168    48  published     two slots as the tail slots: what readers read up to (under
//!                             `SyncPolicy::Always`, synced)
//!    216     4  sync_lock     0 free, else the ticket of the handle syncing for all
//!    220     4  poisoned      non-zero once a sync failed: every handle refuses changes
//!    224     4  repairs       bumped by each repair of the tail (writers drop their mappings)
//!    228     4  reserved      zero (before version 3: producers inside a push)
//!    232     8  prepared_base the segment `prepared_end` is about
//!    240     8  prepared_end  zeros were written ahead of the tail up to here (writers only)
//!    248     8  synced_next_seq  every record below it is synced (version 5): moved by
//!                             the sync leader under `Always` only, where `published` is also
//!                             moved by pushes under the other policies
//!    256    24  reserved      zero (before version 4: the consumer's words, now at 384)
//!    280    16  tail_pushed   two words, one per tail slot: frame bytes pushed in all, up to
//!                             that slot's tail (committed with it, under the tail lock)
//!    296    16  published_pushed  the same for the two published slots
//!    312    16  reserved      zero (before version 4: the consumed totals, now at 432)
//!    328     4  room          bumped when consumers gave room back (a futex word)
//!    332     4  room_sleepers pushes waiting on `room` (`Overflow::Block`)
//!    336    48  reserved      zero
//!             The words a consumer turn writes, on cache lines of their own (version 4): no
//!             push, which writes the lines above, makes a consumer's line move, nor the
//!             other way round.
//!    384     4  consumer_lock 0 free, else (owner ticket << 2) | parked << 1 | waiters (a
//!                             futex word): held for a consumer turn, parked by its owner
//!                             between turns (anyone may take a parked word)
//!    388     4  head_durable  the head slot the last consumer turn left durable, plus one
//!                             (0: not known, the next holder reads the files in full)
//!    392     8  consumer_epoch  moves when a consumer turn changed the head or the ack log;
//!                             odd when a turn could not leave them in order
//!    400     4  consumer_pid  the process that last took the consumer turn (advice)
//!    404     4  reserved      zero
//!    408     8  ack_log_id    the ack log file the last consumer turn left (0: none yet)
//!    416     8  ack_tail      where its entries end
//!    424     8  ack_prepared  the end of the zeros written ahead of them
//!    432     8  consumed_records  records consumed in all (under the consumer lock): with
//!                             `next_seq`, the bound's usage (`next_seq - consumed_records`)
//!    440     8  consumed_bytes    frame bytes consumed in all (`pushed - consumed_bytes`)
//!    448    64  reserved      zero
//!    512     8  sync_began    when the last sync under `Always` began (µs since the epoch)
//!    520     4  gather        (commits seen << 1) | a sync leader is gathering (a futex
//!                             word: committers wake the leader while the bit is set)
//!    524     4  reserved      zero
//!    528     8  dedup_gen     generation of the deduplication log: moves when a handle
//!                             rewrote it or settled it after a dead producer (0: not yet
//!                             settled since this file was built)
//!    536     8  dedup_tail    where its valid entries end (under the tail lock)
//!    544     4  solo          the ticket of the handle that has the queue to itself, 0 when
//!                             none (version 6): while it is set, the words above are as
//!                             that handle last left them, not current (a futex word)
//!    548     4  revoke        bumped by an opener that asks the solo handle to write its
//!                             state here and run as one of several (a futex word)
//!    552   472  reserved      zero
//!   1024  1024  slots         128 × (epoch u32, pid u32): slot k at 1024 + 8k
//!   2048  1024  commit_times  128 × u64: when the handle in slot k last committed a push
//!                             under `Always` (µs since the epoch; a group-commit hint)
//!   3072   512  inside        128 × u32: the producers of the handle in slot k between their
//!                             start and their commit under `Always` (a hint for the sync
//!                             leader, which waits a little for them; a gone handle's count
//!                             is cleared by the leader that finds it, or the next taker)
//!   3584   512  reserved      zero
//! ```
//!
//! A *ticket* names a handle: `(epoch << 8) | slot`, with the slot's epoch as the handle that
//! took it set it (never 0, at most 2^22 - 1). Each handle holds `procs/<slot>` locked for its
//! life; a ticket whose slot has another epoch, or whose slot file is not locked, belongs to a
//! handle that is gone.
//!
//! Native-endian atomics (the file never leaves the machine, and is rebuilt at every cold
//! start). Nothing in it is durable: it is never synced, and the first process to open the queue
//! when no other has it open rebuilds it from the durable files. See docs/ARCHITECTURE.md,
//! "Several processes".

/// The control file's first eight bytes.
pub const CONTROL_MAGIC: [u8; 8] = *b"DSPOOLCT";
/// The layout version this build reads and writes.
pub const CONTROL_VERSION: u32 = 6;
/// The control file's length: one page (a power of two: see `storage::process`).
pub const CONTROL_LEN: u64 = 4096;
const _: () = assert!(CONTROL_LEN.is_power_of_two());

/// Offset of the build id.
pub const BUILD_ID: usize = 16;
/// Offset of the tail's commit counter.
pub const TAIL_GEN: usize = 64;
/// Offset of the dirty marker: set before a writer touches the log past the committed tail.
pub const TAIL_DIRTY: usize = 72;
/// Offset of the two tail slots, each `TAIL_SLOT_LEN` bytes.
pub const TAIL_SLOTS: usize = 80;
/// Bytes of one tail slot: `active_base`, `tail`, `next_seq`, 8 bytes each.
pub const TAIL_SLOT_LEN: usize = 24;
/// Offset of the arrivals futex word.
pub const ARRIVALS: usize = 128;
/// Offset of the count of processes waiting on `arrivals`.
pub const SLEEPERS: usize = 132;
/// Offset of the process id of the handle that last took the consumer turn (advice).
pub const CONSUMER_PID: usize = 400;
/// Offset of the consumer epoch: it moves when a consumer turn changed the head index or the
/// ack log, so that the next turn's holder knows to read them again; odd when a turn could not
/// leave them in order (the next holder then reads them in full).
pub const CONSUMER_EPOCH: usize = 392;

/// Offset of the tail lock word.
pub const TAIL_LOCK: usize = 152;
/// Offset of the published tail's commit counter (readers read up to the published tail).
pub const PUBLISHED_GEN: usize = 160;
/// Offset of the two published tail slots, laid out as the tail slots.
pub const PUBLISHED_SLOTS: usize = 168;
/// Offset of the sync lock word: the ticket of the handle syncing for every producer.
pub const SYNC_LOCK: usize = 216;
/// Offset of the poisoned word: non-zero once a sync failed.
pub const POISONED: usize = 220;
/// Offset of the count of tail repairs: a writer that sees it move drops its writable
/// mapping of the active segment, which a repair may have cut short.
pub const REPAIRS: usize = 224;
/// Offset of the table of producers inside a push under `Always`, one u32 per slot (a
/// group-commit hint).
pub const INSIDE: usize = 3072;
/// Offset of the base of the segment whose prepared zeros `PREPARED_END` gives.
pub const PREPARED_BASE: usize = 232;
/// Offset of the end of the zeros written ahead of the committed tail, read and written under
/// the tail lock only: a writer that takes up another's tail does not write them again.
pub const PREPARED_END: usize = 240;
/// Offset of the consumer lock word, held for one consumer turn and parked by its owner between
/// turns: `(ticket << 2) | parked << 1 | waiters`.
pub const CONSUMER_LOCK: usize = 384;
/// Offset of the head slot the last consumer turn left durable, plus one (0: not known).
pub const HEAD_DURABLE: usize = 388;
/// Offset of the id of the ack log file the last consumer turn left (0: there is none).
pub const ACK_LOG_ID: usize = 408;
/// Offset of the end of that ack log's entries.
pub const ACK_TAIL: usize = 416;
/// Offset of the end of the zeros written ahead of them.
pub const ACK_PREPARED: usize = 424;
/// Offset of the frame bytes pushed in all, one word per tail slot (`TAIL_SLOTS`): slot `g % 2`
/// at `TAIL_PUSHED + 8 * (g % 2)`, written with that slot.
pub const TAIL_PUSHED: usize = 280;
/// Offset of the same words for the published slots (`PUBLISHED_SLOTS`).
pub const PUBLISHED_PUSHED: usize = 296;
/// Offset of the sequence number below which every record is synced: what a push under
/// `Always` waits for. Not the published tail, which a push of a handle under another policy
/// moves past records no sync covered.
pub const SYNCED_NEXT_SEQ: usize = 248;
/// Offset of the records consumed in all: a bounded queue's usage is the committed
/// `next_seq` minus this. Written under the consumer lock only.
pub const CONSUMED_RECORDS: usize = 432;
/// Offset of the frame bytes consumed in all: the usage in bytes is the committed pushed bytes
/// minus this. Written under the consumer lock only.
pub const CONSUMED_BYTES: usize = 440;
/// Offset of the room futex word: bumped when consumers gave room back.
pub const ROOM: usize = 328;
/// Offset of the count of pushes waiting on `ROOM`.
pub const ROOM_SLEEPERS: usize = 332;
/// Offset of when the last sync under `Always` began (µs since the Unix epoch).
pub const SYNC_BEGAN: usize = 512;
/// Offset of the gather word: `(commits << 1) | gathering`, a futex word the sync leader
/// sleeps on while it waits for producers.
pub const GATHER: usize = 520;
/// Offset of the deduplication log's generation (see the layout above).
pub const DEDUP_GEN: usize = 528;
/// Offset of where the deduplication log's valid entries end.
pub const DEDUP_TAIL: usize = 536;
/// Offset of the solo word: the ticket of the handle that has the queue to itself (0: none).
/// While it is set, no other handle is attached, and the tail, the published tail and the
/// consumer's words are as that handle last left them, not current.
pub const SOLO: usize = 544;
/// Offset of the revoke word, bumped by an opener that waits for the solo handle to write its
/// state into this file and clear `SOLO`.
pub const REVOKE: usize = 548;
/// Offset of the table of when each slot's handle last committed a push under `Always`.
pub const COMMIT_TIMES: usize = 2048;
/// Offset of the slot table.
pub const SLOTS: usize = 1024;
/// How many handles may have a queue open at once.
pub const SLOT_COUNT: u32 = 128;
/// The largest epoch a slot reaches before it starts again at 1.
pub const EPOCH_MAX: u32 = (1 << 22) - 1;

/// The ticket of the handle in `slot` at `epoch`.
pub fn ticket(slot: u32, epoch: u32) -> u32 {
    (epoch << 8) | slot
}

/// The slot and epoch a ticket names.
pub fn ticket_parts(ticket: u32) -> (u32, u32) {
    (ticket & 0xff, ticket >> 8)
}

/// The lease owner that ack log entries name for the handle of `ticket`:
/// `(slot + 1) | (epoch mod 2^16) << 8`, 24 bits, never 0 (0 names no owner).
pub fn lease_owner(ticket: u32) -> u32 {
    let (slot, epoch) = ticket_parts(ticket);
    (slot + 1) | ((epoch & 0xffff) << 8)
}

/// The slot and the low 16 bits of the epoch a lease owner names; `None` when it names no
/// slot of the table.
pub fn lease_owner_parts(owner: u32) -> Option<(u32, u32)> {
    let slot = (owner & 0xff).checked_sub(1)?;
    (slot < SLOT_COUNT).then_some((slot, (owner >> 8) & 0xffff))
}

/// Offset of the epoch of slot `slot`'s handle (see [`ticket`]), in the slot table.
pub fn slot_epoch_at(slot: u32) -> usize {
    SLOTS + slot as usize * 8
}

/// Offset of the process id of slot `slot`'s handle (advice: it stays after the handle closed
/// or died; whether it lives is for its slot file's lock to say).
pub fn slot_pid_at(slot: u32) -> usize {
    slot_epoch_at(slot) + 4
}

/// The header bytes `[0, 24)` of a control file built with `build_id`.
pub fn encode_header(build_id: u64) -> [u8; 24] {
    let mut header = [0u8; 24];
    header[..8].copy_from_slice(&CONTROL_MAGIC);
    header[8..12].copy_from_slice(&CONTROL_VERSION.to_ne_bytes());
    header[BUILD_ID..BUILD_ID + 8].copy_from_slice(&build_id.to_ne_bytes());
    header
}

/// The layout version of a control file built by another version of this crate: `Some` when
/// `bytes` start with the control magic and name a version other than [`CONTROL_VERSION`].
/// Processes of that version have the queue open (a first opener builds the file anew).
pub fn other_layout_version(bytes: &[u8]) -> Option<u32> {
    let version: [u8; 4] = bytes.get(8..12)?.try_into().ok()?;
    let version = u32::from_ne_bytes(version);
    (bytes.get(..8)? == CONTROL_MAGIC && version != CONTROL_VERSION).then_some(version)
}

/// Checks a control file's header; returns its build id, or what is wrong and at which offset.
pub fn check_header(bytes: &[u8]) -> Result<u64, (u64, String)> {
    if bytes.len() < CONTROL_LEN as usize {
        return Err((
            bytes.len() as u64,
            format!(
                "control file is {} bytes, expected {CONTROL_LEN}",
                bytes.len()
            ),
        ));
    }
    if bytes[..8] != CONTROL_MAGIC {
        return Err((0, "not a control file (bad magic)".into()));
    }
    let version = u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != CONTROL_VERSION {
        return Err((
            8,
            format!("control file version {version}, this build reads {CONTROL_VERSION}"),
        ));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[BUILD_ID..BUILD_ID + 8]);
    match u64::from_ne_bytes(id) {
        0 => Err((BUILD_ID as u64, "control file was never finished".into())),
        build_id => Ok(build_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(build_id: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; CONTROL_LEN as usize];
        bytes[..24].copy_from_slice(&encode_header(build_id));
        bytes
    }

    /// Every field of the layout: where it starts, how long it is, and whether a consumer turn
    /// writes it (else a producer, or nobody once built).
    fn fields() -> Vec<(&'static str, usize, usize, bool)> {
        let slots = SLOT_COUNT as usize;
        vec![
            ("header", 0, 24, false),
            ("tail_gen", TAIL_GEN, 8, false),
            ("tail_dirty", TAIL_DIRTY, 8, false),
            ("tail_slots", TAIL_SLOTS, 2 * TAIL_SLOT_LEN, false),
            ("arrivals", ARRIVALS, 4, false),
            ("sleepers", SLEEPERS, 4, false),
            ("tail_lock", TAIL_LOCK, 4, false),
            ("published_gen", PUBLISHED_GEN, 8, false),
            ("published_slots", PUBLISHED_SLOTS, 2 * TAIL_SLOT_LEN, false),
            ("sync_lock", SYNC_LOCK, 4, false),
            ("poisoned", POISONED, 4, false),
            ("repairs", REPAIRS, 4, false),
            ("prepared_base", PREPARED_BASE, 8, false),
            ("prepared_end", PREPARED_END, 8, false),
            ("tail_pushed", TAIL_PUSHED, 16, false),
            ("published_pushed", PUBLISHED_PUSHED, 16, false),
            ("synced_next_seq", SYNCED_NEXT_SEQ, 8, false),
            ("room", ROOM, 4, false),
            ("room_sleepers", ROOM_SLEEPERS, 4, false),
            ("consumer_lock", CONSUMER_LOCK, 4, true),
            ("head_durable", HEAD_DURABLE, 4, true),
            ("consumer_epoch", CONSUMER_EPOCH, 8, true),
            ("consumer_pid", CONSUMER_PID, 4, true),
            ("ack_log_id", ACK_LOG_ID, 8, true),
            ("ack_tail", ACK_TAIL, 8, true),
            ("ack_prepared", ACK_PREPARED, 8, true),
            ("consumed_records", CONSUMED_RECORDS, 8, true),
            ("consumed_bytes", CONSUMED_BYTES, 8, true),
            ("sync_began", SYNC_BEGAN, 8, false),
            ("gather", GATHER, 4, false),
            ("dedup_gen", DEDUP_GEN, 8, false),
            ("dedup_tail", DEDUP_TAIL, 8, false),
            ("slots", SLOTS, 8 * slots, false),
            ("commit_times", COMMIT_TIMES, 8 * slots, false),
            ("inside", INSIDE, 4 * slots, false),
        ]
    }

    #[test]
    fn fields_are_aligned_disjoint_and_inside_the_page() {
        let mut fields = fields();
        fields.sort_by_key(|field| field.1);
        for pair in fields.windows(2) {
            let ((a, a_at, a_len, _), (b, b_at, _, _)) = (pair[0], pair[1]);
            assert!(a_at + a_len <= b_at, "{a} overlaps {b}");
        }
        for (name, at, len, _) in fields {
            let word = if len % 8 == 0 { 8 } else { 4 };
            assert_eq!(at % word, 0, "{name} is not aligned");
            assert!(at + len <= CONTROL_LEN as usize, "{name} is past the page");
        }
    }

    /// The words a consumer turn writes share no 64-byte cache line with the words a push
    /// writes or reads: a producer and a consumer in two processes do not take each other's
    /// lines at every call.
    #[test]
    fn consumer_words_share_no_cache_line_with_the_others() {
        let lines = |at: usize, len: usize| (at / 64)..=((at + len - 1) / 64);
        let fields = fields();
        for &(consumer, at, len, _) in fields.iter().filter(|field| field.3) {
            for &(other, other_at, other_len, _) in fields.iter().filter(|field| !field.3) {
                let (mine, theirs) = (lines(at, len), lines(other_at, other_len));
                assert!(
                    mine.end() < theirs.start() || theirs.end() < mine.start(),
                    "{consumer} shares a cache line with {other}"
                );
            }
        }
    }

    #[test]
    fn a_built_header_checks_out() {
        assert_eq!(check_header(&built(7)), Ok(7));
    }

    #[test]
    fn damaged_headers_are_refused_with_their_offset() {
        let mut bad_magic = built(7);
        bad_magic[3] ^= 1;
        assert_eq!(check_header(&bad_magic).unwrap_err().0, 0);
        let mut bad_version = built(7);
        bad_version[8] = 9;
        assert_eq!(check_header(&bad_version).unwrap_err().0, 8);
        assert_eq!(check_header(&built(0)).unwrap_err().0, BUILD_ID as u64);
        assert_eq!(check_header(&built(7)[..100]).unwrap_err().0, 100);
    }

    #[test]
    fn lease_owners_name_a_slot_and_fit_an_ack_log_entry() {
        let owner = lease_owner(ticket(127, EPOCH_MAX));
        assert!(owner <= crate::format::acklog::LEASE_OWNER_MAX);
        assert_eq!(lease_owner_parts(owner), Some((127, EPOCH_MAX & 0xffff)));
        assert_ne!(lease_owner(ticket(0, 1)), 0, "0 names no owner");
        assert_eq!(lease_owner_parts(lease_owner(ticket(0, 1))), Some((0, 1)));
        assert_eq!(lease_owner_parts(0), None);
        assert_eq!(lease_owner_parts(200), None);
    }

    #[test]
    fn tickets_name_their_slot_and_epoch_and_leave_a_bit_free() {
        let ticket = ticket(127, EPOCH_MAX);
        assert_eq!(ticket_parts(ticket), (127, EPOCH_MAX));
        assert_eq!(
            ticket << 2 >> 2,
            ticket,
            "room for the parked and waiters bits"
        );
        assert_ne!(super::ticket(0, 1), 0);
    }
}
