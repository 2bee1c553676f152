//! The deterministic simulation of a queue shared by several processes: two or three handles
//! opened with `Options::exclusive(false)` on one [`SimStorage`], each acting as a simulated
//! process of its own ([`SimStorage::process`]). One seed draws the setup and the workload:
//! pushes, batches, pops, receives acknowledged or released, compactions and syncs from random
//! handles (and in wide runs peeks, leases held across operations, pushes with ids, bounds under
//! each overflow rule, fanouts of a shared spool; see docs/TESTING.md), clean reopens, kills of
//! one process between two operations ([`SimStorage::kill_process`]) or in the middle of one,
//! at its `n`-th storage call
//! ([`SimStorage::kill_at`]: the thread stops right there, nothing of the operation after it
//! runs), and power losses that kill every process. A killed process opens the queue again at
//! once, as a restarted one would. In a third of the runs each handle has a sync policy of its
//! own ([`ProcessesConfig::mixed`]): what returned under `Always` must survive a power loss
//! whatever the others did, and the rest may be undone as under `Never`.
//!
//! The model checks the contract across processes (docs/DURABILITY.md, sentences 25 to 27):
//! every returned push has one sequence number of its own and is delivered, unless a power loss
//! took it where the policy allows (pushed after the last sync under `Never` or `Interval`);
//! no record comes back once a pop or an acknowledgement of it returned (by any handle), except
//! after a power loss that the policy allows to undo it; nothing is delivered that was never
//! pushed, or with other bytes; records delivered for the first time come in sequence order. An
//! operation cut by a kill may have done any part of its work: the records it pushed may be
//! there or not, the records at the front it may have consumed (or leased for the hour the
//! leases last) may come back once or never.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::Policy;
use crate::storage::sim::{SimRng, SimStorage};
use crate::{Delivery, Error, Options, Overflow, Queue, Spool};

/// The segment size of these runs: small, so that rolls and compactions are frequent.
const SEGMENT_SIZE: u64 = 4096;
/// The longest payload (the first 8 bytes are the record's id).
const PAYLOAD_MAX: u16 = 400;
/// Leases outlast every run: a lease a killed process left never runs out during it.
const LEASE: Duration = Duration::from_secs(3600);
/// Where the queue lives on the simulated filesystem.
const DIR: &str = "/shared-queue";
/// Where the spool of the runs with fanout lives, and the queues a fanout writes to.
const SPOOL_DIR: &str = "/shared-spool";
const TARGETS: [&str; 2] = ["a", "b"];

/// How a run is set up; drawn from the seed ([`processes_config_from_seed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessesConfig {
    /// Handles (simulated processes) on the queue: 2 or 3.
    pub handles: u8,
    /// The sync policy of every handle (of the first, in a run that mixes policies).
    pub policy: Policy,
    /// In a run that mixes policies, the sync policy of the handle in each slot (a process
    /// started again in a slot opens with that slot's policy): handles of one queue may differ.
    pub mixed: Option<[Policy; 3]>,
    /// Whether the simulated filesystem offers writable mappings (the real filesystem's write
    /// path: frames and head slots stored through mappings under `Never` and `Interval`).
    pub writable_mappings: bool,
    /// Whether the workload also draws the operations added after the first version (peeks,
    /// ...); off, a seed draws the workload it always drew (the fixed seeds replay it).
    pub wide: bool,
    /// `Options::max_deliveries` of every handle (wide runs only): a record released that
    /// many times moves to the dead-letter queue.
    pub max_deliveries: Option<u32>,
    /// Whether pushes with deduplication ids are drawn (wide runs only; window: an hour).
    pub dedup: bool,
    /// `Options::max_records` (wide runs only).
    pub max_records: Option<u64>,
    /// `Options::max_bytes` (wide runs only), in bytes of frames (a record of `n` bytes takes
    /// `n` + 24 rounded up to a multiple of 8).
    pub max_bytes: Option<u64>,
    /// `Options::overflow` of a bounded run. Under `Block` a push never waits (the simulation
    /// is one thread): `push` runs as `push_timeout` with no time to wait, and a batch or a
    /// push with an id runs only when the usage every push checks leaves room for it (else it
    /// is skipped and writes nothing).
    pub overflow: Overflow,
    /// Under `Overflow::DropOldest`, whether the records dropped go to the dead-letter queue
    /// (`Options::dead_letter_dir` set: a drop receives them and moves them there).
    pub drops_to_dead_letters: bool,
    /// Whether every process also opens a spool of shared queues, fans records out to two of
    /// its queues and pops them (wide runs only).
    pub spool: bool,
    /// Whether handles may be solo (`SimStorage::allow_solo`): the first opener has the
    /// queue to itself until the next opens (which runs its answer), and a handle left alone by
    /// a close or a kill becomes solo again at once, as its solo thread would make it. In
    /// unbounded runs the next process of a closed or killed slot then starts half of the time
    /// only at the slot's next operation, and the workload holds `ProcessOp::KillAnswer`s.
    pub solo: bool,
}

impl ProcessesConfig {
    /// Whether the queue is bounded (`max_records` or `max_bytes`).
    pub fn bounded(&self) -> bool {
        self.max_records.is_some() || self.max_bytes.is_some()
    }

    /// The sync policy of the handle in slot `index`.
    pub fn policy_of(&self, index: usize) -> Policy {
        match self.mixed {
            Some(policies) => policies[index % policies.len()],
            None => self.policy,
        }
    }

    /// The sync policies of the handles, one per slot in use.
    fn policies(&self) -> impl Iterator<Item = Policy> + '_ {
        (0..usize::from(self.handles)).map(|index| self.policy_of(index))
    }

    /// Whether every handle syncs each operation (`Always`): then readers read only what a
    /// sync covered, and a power loss undoes nothing that returned.
    pub fn all_always(&self) -> bool {
        self.policies().all(|policy| policy == Policy::Always)
    }

    /// Whether the handles' sync policies differ.
    pub fn mixes_policies(&self) -> bool {
        self.policies().any(|policy| policy != self.policy_of(0))
    }
}

impl ProcessesConfig {
    /// This setup with the workload of the first version only (see [`wide`](Self::wide)).
    pub fn narrow(self) -> Self {
        ProcessesConfig {
            wide: false,
            max_deliveries: None,
            dedup: false,
            max_records: None,
            max_bytes: None,
            overflow: Overflow::Reject,
            drops_to_dead_letters: false,
            spool: false,
            mixed: None,
            solo: false,
            ..self
        }
    }
}

/// One step of the workload. `handle` is taken modulo the number of handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessOp {
    /// Push one record of `len` bytes.
    Push {
        /// The pushing handle.
        handle: u8,
        /// Payload length.
        len: u16,
    },
    /// Push `count` records of `len` bytes in one batch.
    PushBatch {
        /// The pushing handle.
        handle: u8,
        /// Records in the batch.
        count: u8,
        /// Payload length of each.
        len: u16,
    },
    /// Pop up to `max` records (`max` 1 uses `pop`, more `pop_batch`).
    Pop {
        /// The popping handle.
        handle: u8,
        /// Most records to pop.
        max: u8,
    },
    /// Receive up to `count` records and acknowledge them (newest first when `reverse`).
    RecvAck {
        /// The receiving handle.
        handle: u8,
        /// Most records to receive.
        count: u8,
        /// Acknowledge the newest first.
        reverse: bool,
    },
    /// Receive up to `count` records and release them (`nack`): available again at once.
    RecvNack {
        /// The receiving handle.
        handle: u8,
        /// Most records to receive.
        count: u8,
    },
    /// Receive up to `count` records and keep them (the handle holds their leases until a
    /// `Settle`, its death or its close).
    RecvHold {
        /// The receiving handle.
        handle: u8,
        /// Most records to receive.
        count: u8,
    },
    /// Settle every record the handle holds, as `how` says.
    Settle {
        /// The holding handle.
        handle: u8,
        /// Acknowledge, release, release for later, or extend.
        how: Settle,
    },
    /// Push one record with deduplication id `key` (`Push::dedup_id`).
    PushDedup {
        /// The pushing handle.
        handle: u8,
        /// The id (few: pushes of one id from several processes meet).
        key: u8,
        /// Payload length.
        len: u16,
    },
    /// Peek, and (`then_pop`) pop right after from the same handle: the pop must return
    /// what the peek showed, when no lease may end in between.
    Peek {
        /// The peeking handle.
        handle: u8,
        /// Pop right after.
        then_pop: bool,
    },
    /// Fan one record of `len` bytes out to the spool's two queues (`Spool::fanout`).
    Fanout {
        /// The handle whose process's spool fans out.
        handle: u8,
        /// Payload length.
        len: u16,
    },
    /// Pop one record from the spool's queue `target` (0 or 1).
    PopCopy {
        /// The popping handle (its process's spool).
        handle: u8,
        /// Which queue.
        target: u8,
    },
    /// Run the compactor.
    Compact {
        /// The compacting handle.
        handle: u8,
    },
    /// Make everything durable (`Queue::sync`).
    Sync {
        /// The syncing handle.
        handle: u8,
    },
    /// Close the handle cleanly and open it again.
    Reopen {
        /// The handle.
        handle: u8,
    },
    /// Kill the handle's process between two operations, and open the queue again in a new
    /// process.
    Kill {
        /// The handle.
        handle: u8,
    },
    /// Kill the handle's process at its `calls + 1`-th call during `op` (an operation of
    /// that handle; a kill point it does not reach kills nothing), then open again.
    KillDuring {
        /// How many of its calls the process makes first.
        calls: u16,
        /// The operation cut.
        op: Box<ProcessOp>,
    },
    /// Kill the handle's process when `op` (an operation of that handle) first reaches the
    /// engine's crash point `point` (between two stores into memory, where no storage call
    /// is), then open again; a crash point it does not reach kills nothing.
    KillAtPoint {
        /// Where the process dies.
        point: CrashPoint,
        /// The operation cut.
        op: Box<ProcessOp>,
    },
    /// Kill the handle's process between two operations, and kill the new process at its
    /// `calls + 1`-th storage call of `Queue::open` (a kill point it does not reach kills
    /// nothing), then open again; with `racing_push`, the next handle pushes one record while
    /// the cut open runs (or stands, dead, where it stopped).
    KillOpen {
        /// The handle.
        handle: u8,
        /// How many of its calls the opening process makes first.
        calls: u16,
        /// Whether another handle pushes meanwhile.
        racing_push: bool,
    },
    /// In a run with solo, while a handle is solo (every other slot's process closed or
    /// died, and has not started again): start the process of the first empty slot, whose
    /// open asks the solo handle to leave solo, and kill the solo handle's process at one of
    /// the crash points of its answer (`SOLO_ANSWER_POINTS[point % 4]`). Nothing when no
    /// handle is solo.
    KillAnswer {
        /// Which crash point of the answer.
        point: u8,
    },
    /// Cut the power (the crash's choices drawn from `seed`): every process dies; all open
    /// again.
    PowerLoss {
        /// Seed of the crash's choices.
        seed: u64,
    },
}

/// How `ProcessOp::Settle` settles the records a handle holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// `Delivery::ack`.
    Ack,
    /// `Delivery::nack`: available again at once.
    Nack,
    /// `Delivery::retry_after` an hour: not delivered again during the run.
    RetryLater,
    /// `Delivery::extend` by two hours: still held, by this handle only.
    Extend,
}

/// The engine's crash points in shared queues (`engine::failpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// A roll created the next segment (before the commit names it).
    RollCreated,
    /// A producer set the dirty mark, before it wrote anything.
    SharedDirty,
    /// A producer wrote its frames, before it committed them.
    SharedWritten,
    /// A producer leads a sync under `Always`, before it syncs.
    SharedSync,
    /// A consumer turn began (the files caught up with).
    ConsumerBegun,
    /// A consumer turn ends, before it records where it left the files.
    ConsumerEnding,
}

impl CrashPoint {
    const ALL: [CrashPoint; 6] = [
        CrashPoint::RollCreated,
        CrashPoint::SharedDirty,
        CrashPoint::SharedWritten,
        CrashPoint::SharedSync,
        CrashPoint::ConsumerBegun,
        CrashPoint::ConsumerEnding,
    ];

    fn name(self) -> &'static str {
        match self {
            CrashPoint::RollCreated => "roll.created",
            CrashPoint::SharedDirty => "shared.dirty",
            CrashPoint::SharedWritten => "shared.written",
            CrashPoint::SharedSync => "shared.sync",
            CrashPoint::ConsumerBegun => "consumer.begun",
            CrashPoint::ConsumerEnding => "consumer.ending",
        }
    }
}

impl ProcessOp {
    fn handle(&self) -> Option<u8> {
        match self {
            ProcessOp::Push { handle, .. }
            | ProcessOp::PushBatch { handle, .. }
            | ProcessOp::Pop { handle, .. }
            | ProcessOp::RecvAck { handle, .. }
            | ProcessOp::RecvNack { handle, .. }
            | ProcessOp::Peek { handle, .. }
            | ProcessOp::PushDedup { handle, .. }
            | ProcessOp::RecvHold { handle, .. }
            | ProcessOp::Settle { handle, .. }
            | ProcessOp::Fanout { handle, .. }
            | ProcessOp::PopCopy { handle, .. }
            | ProcessOp::Compact { handle }
            | ProcessOp::Sync { handle }
            | ProcessOp::Reopen { handle }
            | ProcessOp::Kill { handle }
            | ProcessOp::KillOpen { handle, .. } => Some(*handle),
            ProcessOp::KillDuring { op, .. } | ProcessOp::KillAtPoint { op, .. } => op.handle(),
            ProcessOp::PowerLoss { .. } | ProcessOp::KillAnswer { .. } => None,
        }
    }
}

/// The crash points of a solo handle's answer to an opener (`Shared::leave_solo`), in order:
/// after its tail was committed, after its consumer calls stopped running the solo way, after
/// its consumer's state was recorded, after the solo word was cleared.
const SOLO_ANSWER_POINTS: [&str; 4] = [
    "solo.committed",
    "solo.stopped",
    "solo.consumer",
    "solo.ended",
];

/// The setup of seed `seed`'s run.
pub fn processes_config_from_seed(seed: u64) -> ProcessesConfig {
    let mut rng = SimRng::new(seed ^ 0x5EED_0F5A_A2ED);
    let handles = 2 + rng.below(2) as u8;
    let policy = Policy::from_byte(rng.below(3) as u8);
    let writable_mappings = rng.chance(3, 4);
    let max_deliveries = rng.chance(1, 3).then(|| 1 + rng.below(2) as u32);
    let dedup = rng.chance(1, 3);
    let max_records = rng.chance(1, 4).then(|| 4 + rng.below(9));
    // The byte bound and the overflow rule come from a stream of their own, so that the draws
    // above stay what they were.
    let mut bound = SimRng::new(seed ^ 0xB0DE_D0F1_0B00);
    let byte_bound = if max_records.is_some() {
        bound.chance(1, 3)
    } else {
        bound.chance(1, 8)
    };
    let max_bytes = byte_bound.then(|| 600 + bound.below(3000));
    let overflow = match bound.below(3) {
        0 => Overflow::Reject,
        1 => Overflow::DropOldest,
        _ => Overflow::Block,
    };
    let drops_to_dead_letters = overflow == Overflow::DropOldest && bound.chance(1, 2);
    let spool = SimRng::new(seed ^ 0x5B00_1FA7_0E11).chance(1, 4);
    // A stream of its own too.
    let solo = SimRng::new(seed ^ 0x5010_A15E_5EED).chance(1, 2);
    // Mixed policies too: a stream of their own, so that the draws above stay what they were.
    let mut mixing = SimRng::new(seed ^ 0x0B1E_D5EE_D000);
    let mixed = mixing.chance(1, 3).then(|| {
        let mut policies = [policy; 3];
        for other in &mut policies[1..] {
            *other = Policy::from_byte(mixing.below(3) as u8);
        }
        policies
    });
    ProcessesConfig {
        handles,
        policy,
        mixed,
        writable_mappings,
        wide: true,
        max_deliveries,
        dedup,
        max_records,
        max_bytes,
        overflow,
        drops_to_dead_letters,
        spool,
        solo,
    }
}

/// `count` operations drawn from `seed` for `config`.
pub fn processes_ops_from_seed(
    seed: u64,
    count: usize,
    config: &ProcessesConfig,
) -> Vec<ProcessOp> {
    let mut rng = SimRng::new(seed);
    // The operations added later come from a stream of their own, drawn only in wide runs, so
    // that a narrow run draws what the first version drew.
    let mut extra = config.wide.then(|| SimRng::new(seed ^ 0xE57A_0F5E_ED00));
    // And the spool's, drawn only in runs with a spool.
    let mut spooling = config.spool.then(|| SimRng::new(seed ^ 0x5B00_1FA7_0D05));
    // And the kills of solo handles in their answers, drawn only in runs with solo.
    let mut answering = config.solo.then(|| SimRng::new(seed ^ 0x5010_A125_E4ED));
    let handles = u64::from(config.handles);
    let drawn: Vec<ProcessOp> = (0..count)
        .map(|_| {
            let handle = rng.below(handles) as u8;
            let mut draw_work = |rng: &mut SimRng, extra: &mut Option<SimRng>, handle| {
                if let Some(spooling) = spooling.as_mut() {
                    if spooling.chance(1, 5) {
                        return if spooling.chance(1, 2) {
                            ProcessOp::Fanout {
                                handle,
                                len: 8 + spooling.below(200) as u16,
                            }
                        } else {
                            ProcessOp::PopCopy {
                                handle,
                                target: spooling.below(2) as u8,
                            }
                        };
                    }
                }
                match extra.as_mut() {
                    Some(extra) => {
                        if extra.chance(1, 3) {
                            wide_op(extra, handle, config)
                        } else {
                            work_op(rng, handle)
                        }
                    }
                    None => work_op(rng, handle),
                }
            };
            match rng.below(100) {
                0..=2 => ProcessOp::PowerLoss {
                    seed: rng.next_u64(),
                },
                3..=7 => ProcessOp::Kill { handle },
                // Cut opens take a quarter of the wide runs' reopens.
                8..=10 => match extra
                    .as_mut()
                    .map(|extra| (extra.below(4), extra.below(24), extra.chance(1, 2)))
                {
                    Some((0, calls, racing_push)) => ProcessOp::KillOpen {
                        handle,
                        calls: calls as u16,
                        racing_push,
                    },
                    _ => ProcessOp::Reopen { handle },
                },
                27..=33 => ProcessOp::KillAtPoint {
                    point: CrashPoint::ALL[rng.below(CrashPoint::ALL.len() as u64) as usize],
                    op: Box::new(draw_work(&mut rng, &mut extra, handle)),
                },
                11..=26 => ProcessOp::KillDuring {
                    // Most operations make a few calls: most kill points are early.
                    calls: match rng.below(10) {
                        0..=4 => rng.below(4),
                        5..=7 => rng.below(12),
                        _ => rng.below(40),
                    } as u16,
                    op: Box::new(draw_work(&mut rng, &mut extra, handle)),
                },
                _ => draw_work(&mut rng, &mut extra, handle),
            }
        })
        .collect();
    let mut ops = Vec::with_capacity(drawn.len());
    for op in drawn {
        ops.push(op);
        if let Some(answering) = answering.as_mut() {
            if answering.chance(1, 10) {
                ops.push(ProcessOp::KillAnswer {
                    point: answering.below(SOLO_ANSWER_POINTS.len() as u64) as u8,
                });
            }
        }
    }
    ops
}

/// Simpler forms of `op`, for shrinking a failing run after operations were removed: the
/// operation without its kill, kills earlier in it, fewer and shorter records, a cut open
/// without a racing push.
pub fn simpler_ops(op: &ProcessOp) -> Vec<ProcessOp> {
    let mut simpler = Vec::new();
    match op {
        ProcessOp::KillDuring { calls, op } => {
            simpler.push((**op).clone());
            if *calls > 0 {
                simpler.push(ProcessOp::KillDuring {
                    calls: calls / 2,
                    op: op.clone(),
                });
            }
            simpler.extend(simpler_ops(op).into_iter().map(|op| ProcessOp::KillDuring {
                calls: *calls,
                op: Box::new(op),
            }));
        }
        ProcessOp::KillAtPoint { point, op } => {
            simpler.push((**op).clone());
            simpler.extend(
                simpler_ops(op)
                    .into_iter()
                    .map(|op| ProcessOp::KillAtPoint {
                        point: *point,
                        op: Box::new(op),
                    }),
            );
        }
        ProcessOp::KillOpen {
            handle,
            calls,
            racing_push,
        } => {
            simpler.push(ProcessOp::Kill { handle: *handle });
            if *racing_push {
                simpler.push(ProcessOp::KillOpen {
                    handle: *handle,
                    calls: *calls,
                    racing_push: false,
                });
            }
        }
        ProcessOp::PushBatch { handle, count, len } => {
            if *count > 2 {
                simpler.push(ProcessOp::PushBatch {
                    handle: *handle,
                    count: count - 1,
                    len: *len,
                });
            }
            if *len > 8 {
                simpler.push(ProcessOp::PushBatch {
                    handle: *handle,
                    count: *count,
                    len: 8,
                });
            }
        }
        ProcessOp::Fanout { handle, len } if *len > 8 => {
            simpler.push(ProcessOp::Fanout {
                handle: *handle,
                len: 8,
            });
        }
        ProcessOp::Push { handle, len } if *len > 8 => {
            simpler.push(ProcessOp::Push {
                handle: *handle,
                len: 8,
            });
        }
        ProcessOp::Pop { handle, max } if *max > 1 => {
            simpler.push(ProcessOp::Pop {
                handle: *handle,
                max: 1,
            });
        }
        ProcessOp::RecvAck {
            handle,
            count,
            reverse,
        } if *count > 1 || *reverse => {
            simpler.push(ProcessOp::RecvAck {
                handle: *handle,
                count: 1,
                reverse: false,
            });
        }
        ProcessOp::RecvNack { handle, count } if *count > 1 => {
            simpler.push(ProcessOp::RecvNack {
                handle: *handle,
                count: 1,
            });
        }
        ProcessOp::RecvHold { handle, count } if *count > 1 => {
            simpler.push(ProcessOp::RecvHold {
                handle: *handle,
                count: 1,
            });
        }
        ProcessOp::Peek {
            handle,
            then_pop: true,
        } => {
            simpler.push(ProcessOp::Peek {
                handle: *handle,
                then_pop: false,
            });
        }
        _ => {}
    }
    simpler
}

/// An operation that does work on the queue (what a kill may cut).
fn work_op(rng: &mut SimRng, handle: u8) -> ProcessOp {
    let len = 8 + rng.below(u64::from(PAYLOAD_MAX) - 7) as u16;
    match rng.below(100) {
        0..=34 => ProcessOp::Push { handle, len },
        35..=47 => ProcessOp::PushBatch {
            handle,
            count: 2 + rng.below(5) as u8,
            len: len.min(200),
        },
        48..=67 => ProcessOp::Pop {
            handle,
            max: 1 + rng.below(4) as u8,
        },
        68..=81 => ProcessOp::RecvAck {
            handle,
            count: 1 + rng.below(3) as u8,
            reverse: rng.chance(1, 2),
        },
        82..=89 => ProcessOp::RecvNack {
            handle,
            count: 1 + rng.below(3) as u8,
        },
        90..=94 => ProcessOp::Compact { handle },
        _ => ProcessOp::Sync { handle },
    }
}

/// An operation added after the first version (drawn from its own stream).
fn wide_op(rng: &mut SimRng, handle: u8, config: &ProcessesConfig) -> ProcessOp {
    if config.dedup && rng.chance(1, 3) {
        return ProcessOp::PushDedup {
            handle,
            key: rng.below(6) as u8,
            len: 8 + rng.below(u64::from(PAYLOAD_MAX) - 7) as u16,
        };
    }
    match rng.below(100) {
        0..=29 => ProcessOp::Peek {
            handle,
            then_pop: rng.chance(1, 2),
        },
        30..=49 => ProcessOp::RecvHold {
            handle,
            count: 1 + rng.below(3) as u8,
        },
        _ => ProcessOp::Settle {
            handle,
            how: match rng.below(4) {
                0 => Settle::Ack,
                1 => Settle::Nack,
                2 => Settle::RetryLater,
                _ => Settle::Extend,
            },
        },
    }
}

/// What a run exercised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessesSummary {
    /// Records whose push returned.
    pub pushed: u64,
    /// Records delivered (popped, received and acknowledged, or dropped to make room).
    pub consumed: u64,
    /// Processes killed between two operations.
    pub kills: u64,
    /// Processes killed in the middle of an operation (the kill point was reached).
    pub kills_during: u64,
    /// Power losses.
    pub power_losses: u64,
    /// Records moved to the dead-letter queue by a release that returned.
    pub dead_lettered: u64,
    /// Pushes refused by a full bounded queue.
    pub refused: u64,
    /// Records a push discarded to make room (`Overflow::DropOldest`; counted in `consumed`
    /// too).
    pub dropped: u64,
    /// Batches and pushes with an id skipped under `Overflow::Block` (no room to push them
    /// without waiting).
    pub skipped: u64,
    /// Batches cut by a kill or a power loss that were found in the queue, so that every
    /// record of theirs is owed from then on.
    pub cut_batches_found: u64,
    /// Fanouts that returned (runs with a spool).
    pub fanouts: u64,
    /// Fanouts cut by a kill whose copy showed in one queue, so that the other's is owed
    /// (rolled forward by the next fanout or open).
    pub cut_fanouts_found: u64,
    /// Copies popped from the spool's queues.
    pub copies_popped: u64,
    /// Runs whose handles had different sync policies.
    pub mixed_runs: u64,
    /// Power losses in those runs.
    pub mixed_power_losses: u64,
    /// Handles that became solo again after a close or a kill left them alone.
    pub solo_entries: u64,
    /// Openers that asked a solo handle to leave solo, and it did (its answer ran).
    pub solo_answers: u64,
    /// Solo handles' processes killed in the middle of their answer (`KillAnswer`).
    pub kills_in_answers: u64,
}

/// The sum of the runs' summaries (beside the struct, so that a new field is added here too).
impl std::ops::AddAssign for ProcessesSummary {
    fn add_assign(&mut self, run: ProcessesSummary) {
        self.pushed += run.pushed;
        self.consumed += run.consumed;
        self.kills += run.kills;
        self.kills_during += run.kills_during;
        self.power_losses += run.power_losses;
        self.dead_lettered += run.dead_lettered;
        self.refused += run.refused;
        self.dropped += run.dropped;
        self.skipped += run.skipped;
        self.cut_batches_found += run.cut_batches_found;
        self.fanouts += run.fanouts;
        self.cut_fanouts_found += run.cut_fanouts_found;
        self.copies_popped += run.copies_popped;
        self.mixed_runs += run.mixed_runs;
        self.mixed_power_losses += run.mixed_power_losses;
        self.solo_entries += run.solo_entries;
        self.solo_answers += run.solo_answers;
        self.kills_in_answers += run.kills_in_answers;
    }
}

/// Where the model stands on one record (by the id in its first 8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Its push returned: it must be delivered (or be lost only as a power loss allows).
    Owed,
    /// It may be in the queue or not (a push cut by a kill or taken by a power loss; a
    /// consumption cut by a kill or undone by a power loss): it may come at most once more.
    Maybe,
    /// Consumed (a pop or an acknowledgement returned): it must never come again.
    Consumed,
    /// Released for an hour (`retry_after` returned): it must not come again during the run
    /// (but after a power loss the policy allows to undo the release).
    Parked,
    /// Moved to the dead-letter queue (a release that used up `max_deliveries` returned): it
    /// must never come again here, and be in the dead-letter queue once.
    Dead,
    /// Its push returned without writing it (deduplicated): it must never come.
    Never,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    fate: Fate,
    /// Its sequence number, once known.
    seq: Option<u64>,
    /// Pushed since the last sync that covered it: a power loss may take it, and its sequence
    /// number may then go to another record.
    push_unsynced: bool,
    /// Consumed, or received and released, since the last sync that covered it: a power loss
    /// may undo the consumption, or keep the lease the receive wrote (until its end, an hour
    /// on) and lose the release.
    consume_unsynced: bool,
    /// Delivered before (or possibly, by an operation a kill cut): exempt from the order of
    /// first deliveries.
    delivered: bool,
    /// Handed out or consumed before (or possibly, by an operation a kill cut, or by a
    /// consumption a power loss undid); unlike `delivered`, not set by a power loss that may
    /// have taken its push: a batch none of whose records was ever handed out is all there or
    /// not at all.
    handed: bool,
    /// The live process that holds its lease (received by `RecvHold`, not settled): no other
    /// receive, pop or peek may hand it out.
    holder: Option<u32>,
    /// The highest delivery count a receive returned for it (counts only grow).
    deliveries: u32,
    /// A dead process held its lease: it is available again once a consumer finds it dead.
    lease_may_end: bool,
    /// It may have moved to the dead-letter queue (or once more) where the model cannot tell:
    /// a move cut by a kill, or a record with its deliveries used up whose lease ended (the
    /// next consumer to reach it moves it).
    dead_loose: bool,
    /// The bytes of its frame (for `max_bytes`).
    frame: u64,
    /// The batch it was pushed in, as `(first id, records)` (the ids of a batch follow each
    /// other): all of it is in the queue, at numbers that follow each other, or none of it.
    batch: Option<(u64, u64)>,
}

/// What the model knows of one deduplication id.
#[derive(Debug, Default)]
struct DedupKey {
    /// The push with the id that returned: `(record id, seq, unsynced)`. Every later push with
    /// the id returns that seq and writes nothing.
    returned: Option<(u64, u64, bool)>,
    /// Records of pushes with the id that did not return (cut by a kill, or forgotten by a
    /// power loss): each may be in the queue with its id remembered, or not at all.
    candidates: Vec<u64>,
    /// A power loss under `Never` or `Interval` may have kept a record and lost its id's
    /// entry: a later push may then write the record again.
    loose: bool,
}

/// The model of the contract across processes.
#[derive(Debug, Default)]
struct Model {
    records: BTreeMap<u64, Record>,
    /// Which record each known sequence number belongs to.
    ids_by_seq: BTreeMap<u64, u64>,
    next_id: u64,
    /// The sequence number of the last record delivered for the first time.
    last_first: Option<u64>,
    /// A lease of a dead process may end at any moment (a consumer looks whether its holder
    /// lives at most every 10 ms): a pop right after a peek may then take that record.
    leases_may_end: bool,
    /// `Options::max_deliveries`.
    max_deliveries: Option<u32>,
    /// What the model knows of each deduplication id.
    dedup: BTreeMap<u8, DedupKey>,
    /// Sequence numbers a push with an id returned whose record is one of several the model
    /// cannot tell apart: each must be delivered (`true`: unsynced, a power loss may take it).
    owed_seqs: BTreeMap<u64, bool>,
    /// Every handle's policy is `Always` (see [`ProcessesConfig::all_always`]).
    all_always: bool,
    /// The fanouts of a run with a spool.
    spool: SpoolModel,
    summary: ProcessesSummary,
}

/// What the model knows of a bounded queue's usage: the records and bytes it holds for sure,
/// and at most.
#[derive(Debug, Clone, Copy)]
struct Usage {
    records: (u64, u64),
    bytes: (u64, u64),
}

/// The bytes of the frame of a record of `len` bytes (no delay, no TTL).
fn frame_bytes(len: usize) -> u64 {
    crate::format::frame::frame_len(len) as u64
}

fn payload(id: u64, len: u16) -> Vec<u8> {
    let mut bytes = vec![(id as u8) ^ 0xA5; usize::from(len.max(8))];
    bytes[..8].copy_from_slice(&id.to_le_bytes());
    bytes
}

impl Model {
    fn new_ids(&mut self, count: usize) -> Vec<u64> {
        let first = self.next_id;
        self.next_id += count as u64;
        (first..self.next_id).collect()
    }

    /// A push that returned `seqs` for `ids`.
    fn pushed(
        &mut self,
        ids: &[u64],
        seqs: std::ops::Range<u64>,
        synced: bool,
    ) -> Result<(), String> {
        if seqs.end - seqs.start != ids.len() as u64 {
            return Err(format!("a push of {} records returned {seqs:?}", ids.len()));
        }
        for (&id, seq) in ids.iter().zip(seqs) {
            self.learn_seq(id, seq)?;
            let record = self.records.get_mut(&id).ok_or("pushed an unknown id")?;
            record.fate = Fate::Owed;
            record.push_unsynced = !synced;
            self.summary.pushed += 1;
        }
        Ok(())
    }

    /// Records about to be pushed (`frame`: the bytes of each one's frame): they may be in the
    /// queue from now on.
    fn pushing(&mut self, ids: &[u64], frame: u64) {
        let batch = (ids.len() > 1).then(|| (ids[0], ids.len() as u64));
        for &id in ids {
            self.records.insert(
                id,
                Record {
                    fate: Fate::Maybe,
                    seq: None,
                    push_unsynced: true,
                    consume_unsynced: false,
                    delivered: false,
                    handed: false,
                    holder: None,
                    deliveries: 0,
                    lease_may_end: false,
                    dead_loose: false,
                    frame,
                    batch,
                },
            );
        }
    }

    fn learn_seq(&mut self, id: u64, seq: u64) -> Result<(), String> {
        if let Some(&other) = self.ids_by_seq.get(&seq) {
            if other != id {
                return Err(format!(
                    "sequence number {seq} belongs to record {other} and to record {id}"
                ));
            }
        }
        let record = self
            .records
            .get_mut(&id)
            .ok_or_else(|| format!("record {id} (seq {seq}) was never pushed"))?;
        match record.seq {
            Some(known) if known != seq => {
                return Err(format!(
                    "record {id} has sequence number {known} and now {seq}"
                ))
            }
            _ => record.seq = Some(seq),
        }
        self.ids_by_seq.insert(seq, id);
        // The records of a batch follow each other.
        if let Some((first, count)) = record.batch {
            for other in first..first + count {
                let Some(other_seq) = self.records.get(&other).and_then(|record| record.seq) else {
                    continue;
                };
                if i128::from(other_seq) - i128::from(seq) != i128::from(other) - i128::from(id) {
                    return Err(format!(
                        "records {other} and {id} of one batch have sequence numbers {other_seq} \
                         and {seq}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Record `id`, of a batch whose push a kill or a power loss cut, turned up at `seq`
    /// before any record of the batch may have been handed out: the whole batch is there (a
    /// batch is all or nothing), at the numbers around `seq`, and owed.
    fn batch_found(&mut self, id: u64, seq: u64) -> Result<(), String> {
        let Some(record) = self.records.get(&id) else {
            return Ok(());
        };
        let Some((first, count)) = record.batch else {
            return Ok(());
        };
        if record.fate != Fate::Maybe || record.handed {
            return Ok(());
        }
        let members = first..first + count;
        let untouched = members.clone().filter(|&other| other != id).all(|other| {
            self.records.get(&other).is_some_and(|record| {
                record.fate == Fate::Maybe
                    && !record.handed
                    && record.seq.is_none()
                    && record.holder.is_none()
            })
        });
        if !untouched {
            return Ok(());
        }
        for other in members.filter(|&other| other != id) {
            let other_seq = (i128::from(seq) + i128::from(other) - i128::from(id))
                .try_into()
                .map_err(|_| {
                    format!("record {id} of a batch of {count} from id {first} is at seq {seq}")
                })?;
            self.learn_seq(other, other_seq)?;
            if let Some(record) = self.records.get_mut(&other) {
                record.fate = Fate::Owed;
                record.push_unsynced = !self.all_always;
            }
        }
        self.summary.cut_batches_found += 1;
        Ok(())
    }

    /// A record handed out (`consumed`: by a pop or an acknowledgement that returned; else a
    /// receive that was released again).
    fn delivered(
        &mut self,
        seq: u64,
        bytes: &[u8],
        consumed: bool,
        synced: bool,
    ) -> Result<(), String> {
        let id = self.identify(seq, bytes)?;
        self.owed_seqs.remove(&seq);
        let record = self.records.get_mut(&id).ok_or("unknown record")?;
        if !record.delivered {
            if let Some(last) = self.last_first {
                if seq <= last {
                    return Err(format!(
                        "record {id} (seq {seq}) delivered for the first time after seq {last}"
                    ));
                }
            }
            self.last_first = Some(seq);
        }
        record.delivered = true;
        record.handed = true;
        if synced && self.all_always {
            // Where every handle is under `Always`, readers read only what a sync covered (a
            // handle under another policy shows what it commits, synced or not).
            record.push_unsynced = false;
        }
        if consumed {
            record.fate = Fate::Consumed;
            record.consume_unsynced = !synced;
            self.summary.consumed += 1;
        } else {
            // Released: in the queue again, as any record whose push returned.
            if record.fate == Fate::Maybe {
                record.fate = Fate::Owed;
            }
            record.consume_unsynced = !synced;
        }
        Ok(())
    }

    /// The id of the record `seq` handed out with `bytes`, checked: pushed with these bytes,
    /// this sequence number its only one, and still in the queue as far as the model knows.
    fn identify(&mut self, seq: u64, bytes: &[u8]) -> Result<u64, String> {
        let id = bytes
            .get(..8)
            .map(|head| u64::from_le_bytes(head.try_into().unwrap_or_default()))
            .ok_or_else(|| format!("record {seq} is shorter than its id"))?;
        if bytes[8..].iter().any(|&byte| byte != (id as u8) ^ 0xA5) {
            return Err(format!(
                "record {id} (seq {seq}) has other bytes than were pushed"
            ));
        }
        self.learn_seq(id, seq)?;
        self.batch_found(id, seq)?;
        let record = self.records.get(&id).ok_or("unknown record")?;
        if record.fate == Fate::Consumed {
            return Err(format!(
                "record {id} (seq {seq}) delivered again after a pop or an acknowledgement of \
                 it returned"
            ));
        }
        if record.fate == Fate::Never {
            return Err(format!(
                "record {id} (seq {seq}) delivered, but its push wrote nothing (deduplicated)"
            ));
        }
        if record.fate == Fate::Dead {
            return Err(format!(
                "record {id} (seq {seq}) delivered again after it was moved to the dead-letter \
                 queue"
            ));
        }
        if record.fate == Fate::Parked {
            return Err(format!(
                "record {id} (seq {seq}) delivered again within the hour of its retry_after"
            ));
        }
        if let Some(holder) = record.holder {
            return Err(format!(
                "record {id} (seq {seq}) handed out while process {holder} holds its lease"
            ));
        }
        Ok(id)
    }

    /// A push of record `id` with deduplication id `key` returned `seq`: the number of an
    /// earlier push with the id that returned (nothing written), of a record a cut push with
    /// the id left, or of the new record; never a number twice for one id in the window.
    fn pushed_dedup(&mut self, key: u8, id: u64, seq: u64, synced: bool) -> Result<(), String> {
        let entry = self.dedup.entry(key).or_default();
        if let Some((first, first_seq, _)) = entry.returned {
            if seq != first_seq {
                return Err(format!(
                    "a push with id {key} returned seq {seq}, an earlier one returned \
                     {first_seq} (record {first})"
                ));
            }
            if let Some(record) = self.records.get_mut(&id) {
                record.fate = Fate::Never;
            }
            return Ok(());
        }
        let candidates = std::mem::take(&mut entry.candidates);
        let loose = entry.loose;
        if let Some(&other) = self.ids_by_seq.get(&seq) {
            // The record of a cut push with the id.
            if !candidates.contains(&other) {
                return Err(format!(
                    "a push with id {key} returned seq {seq}, which record {other} holds"
                ));
            }
            if let Some(record) = self.records.get_mut(&id) {
                record.fate = Fate::Never;
            }
            if let Some(record) = self.records.get_mut(&other) {
                // Its push took effect: owed, unless it may have been consumed already.
                if record.fate == Fate::Maybe && !record.delivered {
                    record.fate = Fate::Owed;
                }
                record.push_unsynced &= !synced;
            }
            let entry = self.dedup.entry(key).or_default();
            entry.returned = Some((other, seq, !synced));
            entry.candidates = candidates.into_iter().filter(|&c| c != other).collect();
            return Ok(());
        }
        if !loose {
            // A cut push's record known to be there has its id remembered.
            if let Some(known) = candidates
                .iter()
                .filter_map(|c| self.records.get(c).and_then(|record| record.seq))
                .next()
            {
                return Err(format!(
                    "a push with id {key} wrote seq {seq}, but a record with the id is at {known}"
                ));
            }
        }
        let unknown: Vec<u64> = candidates
            .iter()
            .copied()
            .filter(|c| {
                self.records
                    .get(c)
                    .is_some_and(|record| record.seq.is_none())
            })
            .collect();
        if unknown.is_empty() {
            self.pushed(&[id], seq..seq + 1, synced)?;
        } else if unknown
            .iter()
            .all(|c| self.records.get(c).is_some_and(|record| !record.delivered))
        {
            // The new record or one a cut push left: whichever it is must be delivered.
            self.owed_seqs.insert(seq, !synced);
        }
        let entry = self.dedup.entry(key).or_default();
        entry.returned = Some((id, seq, !synced));
        entry.candidates = candidates;
        if !unknown.is_empty() {
            entry.candidates.push(id);
        }
        Ok(())
    }

    /// The records (and bytes) the queue holds for sure, and at most (for its bound, `len`
    /// and the usage pushes check): owed (not possibly moved to the dead-letter queue) and
    /// parked ones; and those that may be there.
    fn usage_bounds(&self) -> Usage {
        let (mut lower, mut upper) = ((0, 0), (0, 0));
        for record in self.records.values() {
            let add = |sum: &mut (u64, u64)| {
                sum.0 += 1;
                sum.1 += record.frame;
            };
            match record.fate {
                Fate::Owed if !record.dead_loose => add(&mut lower),
                Fate::Parked => add(&mut lower),
                Fate::Owed | Fate::Maybe => add(&mut upper),
                Fate::Consumed | Fate::Dead | Fate::Never => {}
            }
        }
        Usage {
            records: (lower.0, lower.0 + upper.0),
            bytes: (lower.1, lower.1 + upper.1),
        }
    }

    /// A push of `count` records of `bytes` bytes of frames returned: the queue had room for
    /// it (after what it dropped, if the model knows what that was).
    fn accepted(&self, count: u64, bytes: u64, bound: &Bound) -> Result<(), String> {
        let usage = self.usage_bounds();
        if bound
            .max_records
            .is_some_and(|max| usage.records.0 + count > max)
        {
            return Err(format!(
                "a push of {count} records was accepted by a queue bounded to {:?} records \
                 that holds at least {}",
                bound.max_records, usage.records.0
            ));
        }
        if bound
            .max_bytes
            .is_some_and(|max| usage.bytes.0 + bytes > max)
        {
            return Err(format!(
                "a push of {count} records ({bytes} bytes) was accepted by a queue bounded to \
                 {:?} bytes that holds at least {}",
                bound.max_bytes, usage.bytes.0
            ));
        }
        Ok(())
    }

    /// A push of `ids` (`bytes` bytes of frames) was refused (`Error::Full`) naming the usage
    /// `used`: it wrote nothing; the queue had no room; the usage is what the queue holds.
    fn refused(
        &mut self,
        ids: &[u64],
        bytes: u64,
        used: (u64, u64),
        bound: &Bound,
    ) -> Result<(), String> {
        let usage = self.usage_bounds();
        let count = ids.len() as u64;
        let no_room = bound
            .max_records
            .is_some_and(|max| usage.records.1 + count > max)
            || bound
                .max_bytes
                .is_some_and(|max| usage.bytes.1 + bytes > max);
        if !no_room {
            return Err(format!(
                "a push of {count} records ({bytes} bytes) was refused by a queue bounded to \
                 {:?} records and {:?} bytes that holds at most {} records and {} bytes",
                bound.max_records, bound.max_bytes, usage.records.1, usage.bytes.1
            ));
        }
        self.check_usage(used, "a refused push names")?;
        for id in ids {
            if let Some(record) = self.records.get_mut(id) {
                record.fate = Fate::Never;
            }
        }
        self.summary.refused += 1;
        Ok(())
    }

    /// The usage `used` (records, bytes) lies between what the queue holds for sure and at
    /// most.
    fn check_usage(&self, used: (u64, u64), what: &str) -> Result<(), String> {
        let usage = self.usage_bounds();
        let within = |value: u64, (lower, upper): (u64, u64)| lower <= value && value <= upper;
        if !within(used.0, usage.records) || !within(used.1, usage.bytes) {
            return Err(format!(
                "{what} a usage of {} records and {} bytes; the queue holds {:?} records and \
                 {:?} bytes",
                used.0, used.1, usage.records, usage.bytes
            ));
        }
        Ok(())
    }

    /// `len` returned `len`: the records the queue holds.
    fn check_len(&self, len: u64) -> Result<(), String> {
        let (lower, upper) = self.usage_bounds().records;
        if len < lower || len > upper {
            return Err(format!(
                "len is {len}; the queue holds {lower} to {upper} records"
            ));
        }
        Ok(())
    }

    /// A push returned (or was refused) after it discarded `dropped` (seq, payload) to make
    /// room (`Overflow::DropOldest`): consumed like a pop's records, so checked like them
    /// (the oldest ready records: never consumed, held or parked, first deliveries in order)
    /// and never delivered again.
    /// With `to_dead_letters`, they moved to the dead-letter queue: there once at the end.
    fn dropped(
        &mut self,
        dropped: &[(u64, Vec<u8>)],
        to_dead_letters: bool,
        synced: bool,
    ) -> Result<(), String> {
        for (seq, bytes) in dropped {
            self.delivered(*seq, bytes, true, synced)?;
            if to_dead_letters {
                if let Some(record) = self.records.get_mut(&id_of(bytes)) {
                    record.fate = Fate::Dead;
                }
            }
            self.summary.dropped += 1;
        }
        Ok(())
    }

    /// A push of record `id` with deduplication id `key` was cut by a kill.
    fn dedup_cut(&mut self, key: u8, id: u64) {
        let entry = self.dedup.entry(key).or_default();
        if entry.returned.is_none() {
            entry.candidates.push(id);
        } else if let Some(record) = self.records.get_mut(&id) {
            // The id is taken: it writes nothing.
            record.fate = Fate::Never;
        }
    }

    /// A receive that returned record `seq` with delivery count `deliveries`, kept under the
    /// lease of process `holder` if any (else settled in the same operation).
    fn received(
        &mut self,
        seq: u64,
        bytes: &[u8],
        deliveries: u32,
        holder: Option<u32>,
        synced: bool,
    ) -> Result<u64, String> {
        self.delivered(seq, bytes, false, synced)?;
        let id = self.identify(seq, bytes)?;
        let record = self.records.get_mut(&id).ok_or("unknown record")?;
        if self.max_deliveries.is_some_and(|max| deliveries > max) {
            return Err(format!(
                "record {id} (seq {seq}) delivered with count {deliveries}, past max_deliveries"
            ));
        }
        if deliveries <= record.deliveries {
            return Err(format!(
                "record {id} (seq {seq}) delivered with count {deliveries}, after count {}",
                record.deliveries
            ));
        }
        record.deliveries = deliveries;
        record.holder = holder;
        record.lease_may_end = false;
        Ok(id)
    }

    /// An acknowledgement of `id` returned.
    fn acked(&mut self, id: u64, synced: bool) -> Result<(), String> {
        let record = self.records.get_mut(&id).ok_or("unknown record")?;
        record.holder = None;
        record.fate = Fate::Consumed;
        record.consume_unsynced = !synced;
        self.summary.consumed += 1;
        Ok(())
    }

    /// A release of `id` (delivered `deliveries` times) returned (for an hour if `later`):
    /// with its deliveries used up, it moved to the dead-letter queue.
    fn released(
        &mut self,
        id: u64,
        deliveries: u32,
        later: bool,
        synced: bool,
    ) -> Result<(), String> {
        let spent = self.max_deliveries.is_some_and(|max| deliveries >= max);
        let record = self.records.get_mut(&id).ok_or("unknown record")?;
        record.holder = None;
        record.fate = if spent {
            self.summary.dead_lettered += 1;
            Fate::Dead
        } else if later {
            Fate::Parked
        } else {
            Fate::Owed
        };
        record.consume_unsynced = !synced;
        Ok(())
    }

    /// Process `process` died holding leases: they end when its death is found (a consumer
    /// looks at most every 10 ms), and the records are delivered again.
    fn holder_died(&mut self, process: u32) {
        for record in self.records.values_mut() {
            if record.holder == Some(process) {
                record.holder = None;
                record.lease_may_end = true;
                // Spent, the next consumer that reaches it moves it.
                record.dead_loose |= self
                    .max_deliveries
                    .is_some_and(|max| record.deliveries >= max);
                self.leases_may_end = true;
            }
        }
    }

    /// A settling of the records `ids` was cut by a kill: each may be settled or not.
    fn settle_cut(&mut self, ids: &[u64]) {
        self.leases_may_end = true;
        for id in ids {
            if let Some(record) = self.records.get_mut(id) {
                record.holder = None;
                record.fate = Fate::Maybe;
                record.consume_unsynced = true;
                record.dead_loose = true;
            }
        }
    }

    /// A peek showed `peeked`; `popped` is what a pop right after returned, if one ran. The
    /// record shown is one a pop may return: never consumed, and if it was never delivered, the
    /// next in the order of first deliveries. The pop returns that very record (or nothing
    /// after a peek of nothing), unless a dead process's lease may have ended in between.
    fn peeked(
        &mut self,
        peeked: Option<&(u64, Vec<u8>)>,
        popped: Option<Option<&(u64, Vec<u8>)>>,
        synced: bool,
    ) -> Result<(), String> {
        if let Some((seq, bytes)) = peeked {
            let id = self.identify(*seq, bytes)?;
            let delivered = self.records.get(&id).is_some_and(|record| record.delivered);
            if let (false, Some(last)) = (delivered, self.last_first) {
                if *seq <= last {
                    return Err(format!(
                        "a peek showed record {id} (seq {seq}), never delivered, after the \
                         first delivery of seq {last}"
                    ));
                }
            }
        }
        let Some(popped) = popped else {
            return Ok(());
        };
        // A peek shows a record whose deliveries are used up, which a pop moves to the
        // dead-letter queue instead.
        let spent = peeked.is_some_and(|(_, bytes)| {
            self.records.get(&id_of(bytes)).is_some_and(|record| {
                record.dead_loose
                    || self
                        .max_deliveries
                        .is_some_and(|max| record.deliveries >= max)
            })
        });
        if !self.leases_may_end
            && !spent
            && peeked.map(|(seq, _)| *seq) != popped.map(|(seq, _)| *seq)
        {
            return Err(format!(
                "a peek showed seq {:?}, the pop right after returned seq {:?}",
                peeked.map(|(seq, _)| *seq),
                popped.map(|(seq, _)| *seq)
            ));
        }
        if let Some((seq, bytes)) = popped {
            self.delivered(*seq, bytes, true, synced)?;
        }
        Ok(())
    }

    /// A consuming operation of up to `max` records was cut by a kill: the records at the front
    /// may be consumed, leased for good, or still there.
    fn consumption_cut(&mut self, max: usize) {
        // It may have left leases of its own, which end when its death is found.
        self.leases_may_end = true;
        if self.owed_seqs.is_empty() {
            // The records that exist follow each other in the order of their ids (pushes are
            // made one at a time; a record a power loss took gives its number to the next):
            // the operation reached no further than its first `max` records certainly there
            // and ready. Before them, the records that may be there (a cut push's, a cut
            // consumption's) may have been taken or leased too, and those a dead process held
            // (if its death was found) may have been taken: neither counts. Records a live
            // process holds or that are parked are not ready.
            let mut front = Vec::new();
            let mut taken = 0;
            for (&id, record) in &self.records {
                if taken == max {
                    break;
                }
                match record.fate {
                    Fate::Consumed | Fate::Dead | Fate::Never | Fate::Parked => {}
                    Fate::Owed if record.holder.is_some() => {}
                    Fate::Owed => {
                        // A spent record is moved to the dead-letter queue rather than taken.
                        taken += usize::from(!record.lease_may_end && !record.dead_loose);
                        front.push(id);
                    }
                    Fate::Maybe => front.push(id),
                }
            }
            for id in front {
                if let Some(record) = self.records.get_mut(&id) {
                    record.fate = Fate::Maybe;
                    record.delivered = true;
                    record.handed = true;
                    record.dead_loose = true;
                }
            }
            return;
        }
        // Records a cut push may have left (number unknown) may be at the front too: the cut
        // operation may have leased them, and a lease of a dead process ends (when it runs out,
        // or sooner when its death is found): they may then come after later ones.
        for record in self.records.values_mut() {
            if record.fate == Fate::Maybe {
                record.delivered = true;
                record.handed = true;
                record.dead_loose = true;
            }
        }
        // Records a live process holds are not at the front; those a dead process held may
        // be (if its death was found) or not: they may be taken, but do not count.
        let mut front = Vec::new();
        let mut taken = 0;
        // The records at known numbers, and those owed at numbers whose record the model
        // cannot name (pushes with ids).
        let seqs: std::collections::BTreeSet<u64> = self
            .ids_by_seq
            .keys()
            .chain(self.owed_seqs.keys())
            .copied()
            .collect();
        for seq in seqs {
            if taken == max {
                break;
            }
            if self.owed_seqs.contains_key(&seq) {
                taken += 1;
                front.push(seq);
                continue;
            }
            let Some(record) = self
                .ids_by_seq
                .get(&seq)
                .and_then(|id| self.records.get(id))
            else {
                continue;
            };
            if record.fate != Fate::Owed || record.holder.is_some() {
                continue;
            }
            // A spent record is moved to the dead-letter queue rather than taken.
            taken += usize::from(!record.lease_may_end && !record.dead_loose);
            front.push(seq);
        }
        for seq in front {
            self.owed_seqs.remove(&seq);
            if let Some(record) = self
                .ids_by_seq
                .get(&seq)
                .and_then(|id| self.records.get_mut(id))
            {
                record.fate = Fate::Maybe;
                record.delivered = true;
                record.handed = true;
                record.dead_loose = true;
            }
        }
    }

    /// A sync returned: every push before is durable (it syncs the active segment, in which
    /// every process writes; the sealed ones were synced when they were sealed), and every
    /// consumption before too if `consumer` (the handle has a consumer: a consumer call since
    /// its open), whose sync then syncs the head index and the ack log every consumer writes.
    /// A handle that never consumed syncs no consumer file (`Shared::sync_all`).
    fn synced(&mut self, consumer: bool) {
        // The deduplication log too, before the records.
        for entry in self.dedup.values_mut() {
            if let Some((_, _, unsynced)) = &mut entry.returned {
                *unsynced = false;
            }
        }
        for unsynced in self.owed_seqs.values_mut() {
            *unsynced = false;
        }
        for record in self.records.values_mut() {
            record.push_unsynced = false;
            if consumer {
                record.consume_unsynced = false;
            }
        }
    }

    /// What a power loss may undo: where a handle is under `Never` or `Interval`, whatever no
    /// sync covered (the model does not follow which syncs covered what another handle did).
    fn power_loss(&mut self) {
        self.summary.power_losses += 1;
        self.spool.power_loss(self.all_always);
        self.last_first = None;
        // Every process died; the open that recovers the queue ends every lease.
        self.leases_may_end = false;
        if !self.all_always {
            self.owed_seqs.retain(|_, unsynced| !*unsynced);
            for entry in self.dedup.values_mut() {
                // A record may survive without its id's entry.
                entry.loose = true;
                if let Some((id, _, true)) = entry.returned {
                    entry.returned = None;
                    entry.candidates.push(id);
                }
            }
        }
        // Under `Always` only pushes cut by a kill are unsynced, and no consumption is.
        for record in self.records.values_mut() {
            record.holder = None;
            record.lease_may_end = false;
            // Its lease ends: spent, the next consumer that reaches it moves it.
            record.dead_loose |= self
                .max_deliveries
                .is_some_and(|max| record.deliveries >= max);
            if !self.all_always {
                // The delivery counts the ack log had not synced may be lost.
                record.deliveries = 0;
            }
            if record.push_unsynced {
                record.fate = Fate::Maybe;
                record.delivered = true;
                // It may survive with a delivery count that spends it.
                record.dead_loose = true;
                // Lost, its sequence number goes to the next push.
                if let Some(seq) = record.seq.take() {
                    self.ids_by_seq.remove(&seq);
                }
            } else if record.consume_unsynced {
                record.fate = Fate::Maybe;
                record.delivered = true;
                record.handed = true;
                // A move to the dead-letter queue may be undone (or half of it: the push
                // there is as durable as any push under this policy).
                record.dead_loose = true;
            } else if (record.fate == Fate::Dead || record.dead_loose) && !self.all_always {
                // Moved (or possibly moved) to the dead-letter queue, whose push no sync of
                // this queue covers (durable only under `Always`, sentence 14): a power loss
                // may take it there after a sync here made the acknowledgement durable.
                record.fate = Fate::Maybe;
                record.dead_loose = true;
            }
            record.consume_unsynced = false;
        }
    }

    /// Whether a record owed was leased by a dead (or closed) process.
    fn owes_behind_dead_leases(&self) -> bool {
        self.records
            .values()
            .any(|record| record.fate == Fate::Owed && record.lease_may_end)
    }

    /// The dead-letter queue held `letters` (original seq, payload) after the final drain:
    /// every record moved is there once (or, where a kill or a power loss may have cut or
    /// undone a move, any number of times), nothing else is; a record owed but not drained
    /// is there.
    fn dead_letters(&mut self, letters: &[(u64, Vec<u8>)]) -> Result<(), String> {
        let mut copies: BTreeMap<u64, u32> = BTreeMap::new();
        for (seq, bytes) in letters {
            let id = id_of(bytes);
            if bytes
                .get(8..)
                .is_none_or(|rest| rest.iter().any(|&byte| byte != (id as u8) ^ 0xA5))
            {
                return Err(format!(
                    "dead letter of seq {seq} has other bytes than were pushed"
                ));
            }
            let record = self
                .records
                .get(&id)
                .ok_or_else(|| format!("dead letter of seq {seq} names no record pushed"))?;
            if record.seq.is_some_and(|known| known != *seq) {
                return Err(format!(
                    "dead letter of record {id} names seq {seq}, not {:?}",
                    record.seq
                ));
            }
            *copies.entry(id).or_default() += 1;
        }
        for (&id, record) in &mut self.records {
            let count = copies.get(&id).copied().unwrap_or(0);
            let wrong = match (record.fate, record.dead_loose) {
                (Fate::Maybe, _) => false,
                (Fate::Dead, false) => count != 1,
                (Fate::Dead, true) => count == 0,
                // Spent where the model cannot tell: moved by the drain, or before.
                (Fate::Owed, true) if count > 0 => {
                    record.fate = Fate::Dead;
                    false
                }
                (Fate::Owed, _) => false,
                (_, true) => false,
                (_, false) => count != 0,
            };
            if wrong {
                return Err(format!(
                    "record {id} (seq {:?}, {:?}) is in the dead-letter queue {count} times",
                    record.seq, record.fate
                ));
            }
        }
        Ok(())
    }

    /// After the final drain: every record owed was delivered.
    fn check_drained(&self) -> Result<(), String> {
        let owed: Vec<(u64, Option<u64>)> = self
            .records
            .iter()
            .filter(|(_, record)| record.fate == Fate::Owed)
            .map(|(&id, record)| (id, record.seq))
            .collect();
        if !self.owed_seqs.is_empty() {
            return Err(format!(
                "numbers pushes with ids returned were never delivered: {:?}",
                self.owed_seqs.keys().collect::<Vec<_>>()
            ));
        }
        if owed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "records whose push returned were never delivered (id, seq): {owed:?}"
            ))
        }
    }
}

/// Where the model stands on one copy of a fanout.
#[derive(Debug, Clone, Copy, Default)]
struct Copy {
    fate: Option<Fate>,
    seq: Option<u64>,
    /// A pop a kill cut may have taken it (or a power loss undone its pop): if it comes, it
    /// tells nothing of the other copy.
    taken: bool,
    /// A power loss under `Never` or `Interval` may have kept it and lost its deduplication
    /// entry, or the fanout's mark of done: a roll-forward may then write it again (as a push
    /// with an id there may be written twice).
    loose: bool,
}

/// The model of the fanouts of a run with a spool: each fanout writes one copy into each of
/// the two queues, all or nothing, across kills under every policy (its intent is recorded
/// first, and the next fanout or open in any process rolls it forward) and across power
/// losses under `Always`; each copy comes once from its queue, in the order of that queue.
#[derive(Debug, Default)]
struct SpoolModel {
    /// The two copies of each fanout, by the record id in its payload; `linked`: a fanout
    /// cut by a kill, none of whose copies came yet: if one comes, the other is owed.
    fanouts: BTreeMap<u64, ([Copy; 2], bool)>,
    /// The fanout each known sequence number of each queue belongs to.
    ids_by_seq: [BTreeMap<u64, u64>; 2],
    /// The number of the last copy popped from each queue.
    last_popped: [Option<u64>; 2],
}

impl SpoolModel {
    /// A fanout of record `id` is about to run.
    fn fanning(&mut self, id: u64) {
        let maybe = Copy {
            fate: Some(Fate::Maybe),
            ..Copy::default()
        };
        self.fanouts.insert(id, ([maybe; 2], false));
    }

    fn learn_seq(&mut self, id: u64, target: usize, seq: u64) -> Result<(), String> {
        if let Some(&other) = self.ids_by_seq[target].get(&seq) {
            if other != id {
                return Err(format!(
                    "seq {seq} of queue {} belongs to fanouts {other} and {id}",
                    TARGETS[target]
                ));
            }
        }
        let (copies, _) = self
            .fanouts
            .get_mut(&id)
            .ok_or_else(|| format!("fanout {id} never ran"))?;
        match copies[target].seq {
            Some(known) if known != seq && !copies[target].loose => {
                return Err(format!(
                    "the copy of fanout {id} in queue {} has seq {known} and now {seq}",
                    TARGETS[target]
                ))
            }
            _ => copies[target].seq = Some(seq),
        }
        self.ids_by_seq[target].insert(seq, id);
        Ok(())
    }

    /// A fanout of record `id` returned the numbers `seqs` (in the order of `TARGETS`).
    fn fanned_out(
        &mut self,
        id: u64,
        seqs: &[u64],
        summary: &mut ProcessesSummary,
    ) -> Result<(), String> {
        if seqs.len() != TARGETS.len() {
            return Err(format!("a fanout to two queues returned {seqs:?}"));
        }
        for (target, &seq) in seqs.iter().enumerate() {
            self.learn_seq(id, target, seq)?;
        }
        if let Some((copies, _)) = self.fanouts.get_mut(&id) {
            for copy in copies {
                copy.fate = Some(Fate::Owed);
            }
        }
        summary.fanouts += 1;
        Ok(())
    }

    /// A fanout of record `id` was cut by a kill: all of it comes or none.
    fn fanout_cut(&mut self, id: u64) {
        if let Some((_, linked)) = self.fanouts.get_mut(&id) {
            *linked = true;
        }
    }

    /// A pop from queue `target` was cut by a kill: it may have taken any copy there.
    fn pop_cut(&mut self, target: usize) {
        for (copies, _) in self.fanouts.values_mut() {
            let copy = &mut copies[target];
            if matches!(copy.fate, Some(Fate::Owed | Fate::Maybe)) {
                copy.fate = Some(Fate::Maybe);
                copy.taken = true;
            }
        }
    }

    /// A pop from queue `target` returned `seq` with `bytes`.
    fn popped(
        &mut self,
        target: usize,
        seq: u64,
        bytes: &[u8],
        summary: &mut ProcessesSummary,
    ) -> Result<(), String> {
        let id = id_of(bytes);
        if bytes
            .get(8..)
            .is_none_or(|rest| rest.iter().any(|&byte| byte != (id as u8) ^ 0xA5))
        {
            return Err(format!(
                "copy {seq} of queue {} has other bytes than were fanned out",
                TARGETS[target]
            ));
        }
        self.learn_seq(id, target, seq)?;
        if let Some(last) = self.last_popped[target] {
            if seq <= last {
                return Err(format!(
                    "queue {} handed out seq {seq} after seq {last}",
                    TARGETS[target]
                ));
            }
        }
        self.last_popped[target] = Some(seq);
        let (copies, linked) = self.fanouts.get_mut(&id).ok_or("unknown fanout")?;
        match copies[target].fate {
            Some(Fate::Consumed) if !copies[target].loose => {
                return Err(format!(
                    "the copy of fanout {id} came twice from queue {} (seq {seq})",
                    TARGETS[target]
                ))
            }
            Some(Fate::Owed | Fate::Maybe | Fate::Consumed) => {}
            other => return Err(format!("the copy of fanout {id} came as {other:?}")),
        }
        if *linked && !copies[target].taken {
            // The cut fanout took effect: its other copy is there too.
            let other = &mut copies[1 - target];
            if other.fate == Some(Fate::Maybe) && !other.taken {
                other.fate = Some(Fate::Owed);
                summary.cut_fanouts_found += 1;
            }
        }
        *linked = false;
        copies[target].fate = Some(Fate::Consumed);
        summary.copies_popped += 1;
        Ok(())
    }

    /// A power loss: under `Always` every fanout and pop that returned was durable, and a cut
    /// fanout's intent too if it was recorded; under the other policies any of it may be lost
    /// (no sync of the spool's queues runs), a copy without the other.
    fn power_loss(&mut self, always: bool) {
        self.last_popped = [None; 2];
        if always {
            return;
        }
        self.ids_by_seq = Default::default();
        for (copies, linked) in self.fanouts.values_mut() {
            *linked = false;
            for copy in copies {
                copy.fate = Some(Fate::Maybe);
                copy.seq = None;
                copy.taken = true;
                copy.loose = true;
            }
        }
    }

    /// After the final drain: every copy owed came.
    fn check_drained(&self) -> Result<(), String> {
        for (id, (copies, _)) in &self.fanouts {
            for (target, copy) in copies.iter().enumerate() {
                if copy.fate == Some(Fate::Owed) {
                    return Err(format!(
                        "the copy of fanout {id} in queue {} (seq {:?}) never came",
                        TARGETS[target], copy.seq
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What an operation on one handle did (computed on whichever thread ran it).
enum Outcome {
    Pushed(std::ops::Range<u64>),
    /// `(seq, payload, consumed)` of each record handed out.
    Delivered(Vec<(u64, Vec<u8>, bool)>),
    /// What a peek showed, and what the pop right after returned if one ran.
    Peeked(Option<(u64, Vec<u8>)>, Option<Option<(u64, Vec<u8>)>>),
    /// Records received and kept under their lease.
    Received(Vec<Delivery>),
    /// Records settled as `how` says (`fresh`: received by the same operation), as `(seq,
    /// payload, delivery count)`; `kept`: the deliveries still held (after an extension).
    Settled {
        fresh: bool,
        how: Settle,
        records: Vec<(u64, Vec<u8>, u32)>,
        kept: Vec<Delivery>,
    },
    /// A batch or a push with an id not made under `Overflow::Block`: no room without waiting.
    Skipped,
    /// A fanout returned these numbers.
    FannedOut(Vec<u64>),
    /// A pop from a spool's queue returned this copy.
    Copy(usize, Option<(u64, Vec<u8>)>),
    Done,
}

/// The bound of a run, as pushes need it.
#[derive(Debug, Clone, Copy)]
struct Bound {
    max_records: Option<u64>,
    max_bytes: Option<u64>,
    overflow: Overflow,
}

impl Bound {
    fn of(config: &ProcessesConfig) -> Option<Bound> {
        config.bounded().then_some(Bound {
            max_records: config.max_records,
            max_bytes: config.max_bytes,
            overflow: config.overflow,
        })
    }

    /// Whether `payloads` fit beside `used` (records, bytes).
    fn fits(&self, used: (u64, u64), payloads: &[Vec<u8>]) -> bool {
        let bytes: u64 = payloads.iter().map(|bytes| frame_bytes(bytes.len())).sum();
        self.max_records
            .is_none_or(|max| used.0 + payloads.len() as u64 <= max)
            && self.max_bytes.is_none_or(|max| used.1 + bytes <= max)
    }
}

/// Runs `op` on `queue`; `held`: the deliveries its process holds, for a `Settle`; `bound`:
/// the queue's bound (under `Overflow::Block` no push may wait: the simulation is one thread).
fn run_work(
    queue: &Queue,
    spool: Option<&Spool>,
    op: &ProcessOp,
    payloads: &[Vec<u8>],
    held: Vec<Delivery>,
    bound: Option<Bound>,
) -> Result<Outcome, Error> {
    match (op, spool) {
        (ProcessOp::Fanout { .. }, Some(spool)) => {
            return Ok(Outcome::FannedOut(spool.fanout(&payloads[0], &TARGETS)?));
        }
        (ProcessOp::PopCopy { target, .. }, Some(spool)) => {
            let target = usize::from(*target % 2);
            let copy = spool
                .queue(TARGETS[target])?
                .pop()?
                .map(|record| (record.seq(), record.payload().to_vec()));
            return Ok(Outcome::Copy(target, copy));
        }
        (ProcessOp::Fanout { .. } | ProcessOp::PopCopy { .. }, None) => {
            return Err(Error::InvalidOptions("a run without a spool".into()));
        }
        _ => {}
    }
    if let Some(bound) = bound.filter(|bound| bound.overflow == Overflow::Block) {
        match op {
            ProcessOp::Push { .. } => {
                // Fails with `Error::Full` at once when there is no room.
                let seq = queue.push_timeout(&payloads[0], Duration::ZERO)?;
                return Ok(Outcome::Pushed(seq..seq + 1));
            }
            ProcessOp::PushBatch { .. } | ProcessOp::PushDedup { .. } => {
                // Nothing else runs while this thread pushes: with room now, it never waits.
                let used = queue.bound_usage().unwrap_or_default();
                if !bound.fits(used, payloads) {
                    return Ok(Outcome::Skipped);
                }
            }
            _ => {}
        }
    }
    match op {
        ProcessOp::Push { .. } => {
            let seq = queue.push(&payloads[0])?;
            Ok(Outcome::Pushed(seq..seq + 1))
        }
        ProcessOp::PushBatch { .. } => Ok(Outcome::Pushed(queue.push_batch(payloads)?)),
        ProcessOp::PushDedup { key, .. } => {
            let seq = queue.push_with(&payloads[0], crate::Push::new().dedup_id([*key]))?;
            Ok(Outcome::Pushed(seq..seq + 1))
        }
        ProcessOp::Pop { max, .. } => {
            let records = if *max == 1 {
                queue.pop()?.into_iter().collect()
            } else {
                queue.pop_batch(usize::from(*max))?
            };
            Ok(Outcome::Delivered(
                records
                    .iter()
                    .map(|record| (record.seq(), record.payload().to_vec(), true))
                    .collect(),
            ))
        }
        ProcessOp::RecvAck { count, reverse, .. } => {
            let mut deliveries = queue.try_recv_batch(usize::from(*count))?;
            // In the order received (the model checks the order of first deliveries).
            let seen = deliveries
                .iter()
                .map(|delivery| (delivery.seq(), delivery.payload().to_vec(), true))
                .collect();
            if *reverse {
                deliveries.reverse();
            }
            for delivery in deliveries {
                delivery.ack()?;
            }
            Ok(Outcome::Delivered(seen))
        }
        ProcessOp::RecvNack { count, .. } => {
            let deliveries = queue.try_recv_batch(usize::from(*count))?;
            settle(deliveries, Settle::Nack, true)
        }
        ProcessOp::RecvHold { count, .. } => Ok(Outcome::Received(
            queue.try_recv_batch(usize::from(*count))?,
        )),
        ProcessOp::Settle { how, .. } => settle(held, *how, false),
        ProcessOp::Peek { then_pop, .. } => {
            let peeked = queue
                .peek()?
                .map(|record| (record.seq(), record.payload().to_vec()));
            let popped = if *then_pop {
                Some(
                    queue
                        .pop()?
                        .map(|record| (record.seq(), record.payload().to_vec())),
                )
            } else {
                None
            };
            Ok(Outcome::Peeked(peeked, popped))
        }
        ProcessOp::Compact { .. } => queue.compact().map(|_| Outcome::Done),
        ProcessOp::Sync { .. } => queue.sync().map(|_| Outcome::Done),
        ProcessOp::Fanout { .. }
        | ProcessOp::PopCopy { .. }
        | ProcessOp::Reopen { .. }
        | ProcessOp::Kill { .. }
        | ProcessOp::KillOpen { .. }
        | ProcessOp::KillDuring { .. }
        | ProcessOp::KillAtPoint { .. }
        | ProcessOp::KillAnswer { .. }
        | ProcessOp::PowerLoss { .. } => Ok(Outcome::Done),
    }
}

/// Settles `deliveries` as `how` says.
fn settle(deliveries: Vec<Delivery>, how: Settle, fresh: bool) -> Result<Outcome, Error> {
    let records = deliveries
        .iter()
        .map(|delivery| {
            (
                delivery.seq(),
                delivery.payload().to_vec(),
                delivery.deliveries(),
            )
        })
        .collect();
    let mut kept = Vec::new();
    for delivery in deliveries {
        match how {
            Settle::Ack => delivery.ack()?,
            Settle::Nack => delivery.nack()?,
            Settle::RetryLater => delivery.retry_after(Duration::from_secs(3600))?,
            Settle::Extend => {
                delivery.extend(2 * LEASE)?;
                kept.push(delivery);
            }
        }
    }
    Ok(Outcome::Settled {
        fresh,
        how,
        records,
        kept,
    })
}

/// Whether `op` pushes into the queue (a fanout pushes into the spool's queues).
fn pushes(op: &ProcessOp) -> bool {
    matches!(
        op,
        ProcessOp::Push { .. } | ProcessOp::PushBatch { .. } | ProcessOp::PushDedup { .. }
    )
}

/// The id in the first 8 bytes of a payload.
fn id_of(bytes: &[u8]) -> u64 {
    bytes.get(..8).map_or(u64::MAX, |head| {
        u64::from_le_bytes(head.try_into().unwrap_or_default())
    })
}

/// Where a kill cuts an operation.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// At the process's `n + 1`-th call.
    Calls(u16),
    /// At a crash point of the engine.
    Point(CrashPoint),
}

/// What an open in a thread of its own returns: the queue, and the spool in a run with one.
type OpenResult = Result<(Arc<Queue>, Option<Arc<Spool>>), Error>;

/// One simulated process with its handle.
struct Process {
    /// Its number on the simulated filesystem (a new one for each start).
    number: u32,
    queue: Option<Arc<Queue>>,
    /// Whether it made a consumer call (pop, receive, compaction) since it opened the queue.
    consumer: bool,
    /// The deliveries it received and holds (`RecvHold`).
    held: Vec<Delivery>,
    /// Its spool, in a run with one.
    spool: Option<Arc<Spool>>,
}

/// The run: the filesystem, the processes, the model, and what killed processes left.
struct Run {
    sim: SimStorage,
    config: ProcessesConfig,
    processes: Vec<Process>,
    next_process: u32,
    model: Model,
    /// Handles of killed processes, never dropped (a killed process runs no destructor).
    dead: Vec<Arc<Queue>>,
    /// Threads stopped at a kill point.
    stopped: Vec<std::thread::JoinHandle<Result<Outcome, Error>>>,
    /// Opens stopped at a kill point.
    stopped_opens: Vec<std::thread::JoinHandle<OpenResult>>,
    /// Records the handle of the operation running had discarded to make room before it.
    discards_before: u64,
    /// How many records the queue may hold over its bound: consumer calls cut by a kill
    /// may have counted as consumed records that are still there (sentence 31).
    bound_slack: u64,
    /// Whether a consumer call returned since the last one a kill cut (its turn counted the
    /// usage from the files).
    slack_settled: bool,
    /// Draws whether a process that closed or died starts again at once or only at its slot's
    /// next operation (runs with solo: meanwhile the others may work solo).
    restarts: SimRng,
}

impl Run {
    /// The options of the process `process` started in slot `index`.
    fn options(&self, index: usize, process: u32) -> Options {
        let mut options = self.dead_letter_options(index, process);
        if let Some(max) = self.config.max_deliveries {
            options = options.max_deliveries(max);
        }
        if self.config.dedup {
            options = options.dedup_window(Duration::from_secs(3600));
        }
        if let Some(max) = self.config.max_records {
            options = options.max_records(max);
        }
        if let Some(max) = self.config.max_bytes {
            options = options.max_bytes(max);
        }
        if self.config.bounded() {
            options = options.overflow(self.config.overflow);
        }
        if self.config.drops_to_dead_letters {
            options = options.dead_letter_dir(format!("{DIR}.dead"));
        }
        options
    }

    /// The options of the dead-letter queue (those of the queue without its policies).
    fn dead_letter_options(&self, index: usize, process: u32) -> Options {
        Options::default()
            .exclusive(false)
            .segment_size(SEGMENT_SIZE)
            .max_record_size(usize::from(PAYLOAD_MAX) + 16)
            .sync(self.config.policy_of(index).sync_policy())
            .lease(LEASE)
            .storage(Arc::new(self.sim.process(process)))
    }

    /// Starts a new process for slot `index` and opens the queue in it.
    fn start(&mut self, index: usize) -> Result<(), String> {
        self.next_process += 1;
        let number = self.next_process;
        let queue = Queue::open(DIR, self.options(index, number))
            .map_err(|error| format!("open in process {number} failed: {error}"))?;
        self.processes[index] = Process {
            number,
            queue: Some(Arc::new(queue)),
            consumer: false,
            held: Vec::new(),
            spool: None,
        };
        self.open_spool(index)
    }

    /// Opens the spool in the process of slot `index` (in a run with one): its open finishes
    /// the fanouts a dead process left.
    fn open_spool(&mut self, index: usize) -> Result<(), String> {
        if !self.config.spool {
            return Ok(());
        }
        let number = self.processes[index].number;
        let spool = Spool::open(SPOOL_DIR, self.spool_options(index, number))
            .map_err(|error| format!("open of the spool in process {number} failed: {error}"))?;
        self.processes[index].spool = Some(Arc::new(spool));
        Ok(())
    }

    /// The options of the spool's queues.
    fn spool_options(&self, index: usize, process: u32) -> Options {
        Options::default()
            .exclusive(false)
            .segment_size(SEGMENT_SIZE)
            .max_record_size(usize::from(PAYLOAD_MAX) + 16)
            .sync(self.config.policy_of(index).sync_policy())
            .dedup_window(Duration::from_secs(3600))
            .storage(Arc::new(self.sim.process(process)))
    }

    /// Starts a new process for slot `index` whose open is killed at its `calls + 1`-th
    /// storage call (then another starts), while the next handle pushes if `racing_push`.
    fn start_cut(&mut self, index: usize, calls: u16, racing_push: bool) -> Result<(), String> {
        self.next_process += 1;
        let number = self.next_process;
        let options = self.options(index, number);
        // In a run with a spool the kill may also cut the spool's open, and the roll-forward
        // of the fanouts a dead process left in it.
        let spool_options = self.config.spool.then(|| self.spool_options(index, number));
        let kills_before = self.sim.kills(number);
        self.sim.kill_at(number, u64::from(calls));
        let opening = std::thread::spawn(move || {
            let queue = Arc::new(Queue::open(DIR, options)?);
            let spool = match spool_options {
                Some(options) => Some(Arc::new(Spool::open(SPOOL_DIR, options)?)),
                None => None,
            };
            Ok((queue, spool))
        });
        let pusher = (index + 1) % self.processes.len();
        if racing_push && self.processes[pusher].queue.is_some() {
            let push = ProcessOp::Push {
                handle: pusher as u8,
                len: 8 + (calls % 64),
            };
            let payloads = self.prepare(&push);
            let queue = self.queue(pusher)?;
            self.discards_before = queue.overflow_discards();
            queue.take_dropped();
            let outcome = run_work(
                &queue,
                None,
                &push,
                &payloads,
                Vec::new(),
                Bound::of(&self.config),
            );
            self.apply(pusher, &push, &payloads, outcome)?;
        }
        loop {
            if self.sim.kills(number) != kills_before {
                // Killed: the thread stays where the kill stopped it.
                self.stopped_opens.push(opening);
                self.model.summary.kills_during += 1;
                return self.start(index);
            }
            if opening.is_finished() {
                self.sim.disarm_kill(number);
                let (queue, spool) = opening
                    .join()
                    .map_err(|_| format!("open in process {number} panicked"))?
                    .map_err(|error: Error| format!("open in process {number} failed: {error}"))?;
                self.processes[index] = Process {
                    number,
                    queue: Some(queue),
                    consumer: false,
                    held: Vec::new(),
                    spool,
                };
                return Ok(());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// After the process of slot `index` closed or died: starts the next at once, or, in a
    /// run where handles may be solo, half of the time only at the slot's next operation (see
    /// [`start_if_not_running`](Self::start_if_not_running)), so that the handles left work
    /// alone (solo) meanwhile.
    fn start_now_or_later(&mut self, index: usize) -> Result<(), String> {
        if self.config.solo && !self.config.bounded() && self.restarts.chance(1, 2) {
            return Ok(());
        }
        self.start(index)
    }

    /// Starts a process in slot `index` if none runs there (see
    /// [`start_now_or_later`](Self::start_now_or_later)).
    fn start_if_not_running(&mut self, index: usize) -> Result<(), String> {
        match self.processes[index].queue {
            Some(_) => Ok(()),
            None => self.start(index),
        }
    }

    /// `ProcessOp::KillAnswer`.
    fn kill_in_answer(&mut self, point: u8) -> Result<(), String> {
        let slots = 0..self.processes.len();
        let solo = slots.clone().find(|&index| {
            self.processes[index]
                .queue
                .as_ref()
                .is_some_and(|queue| crate::testkit::is_solo(queue))
        });
        let empty = slots
            .clone()
            .find(|&index| self.processes[index].queue.is_none());
        let (Some(solo), Some(empty)) = (solo, empty) else {
            return Ok(());
        };
        let number = self.processes[solo].number;
        let kills_before = self.sim.kills(number);
        let point = SOLO_ANSWER_POINTS[usize::from(point) % SOLO_ANSWER_POINTS.len()];
        self.sim.kill_in_answer_at(number, point);
        let started = self.start(empty);
        if self.sim.kills(number) == kills_before {
            self.sim.disarm_kill(number);
            return started;
        }
        // Killed in its answer (of the queue's open, or of the open of a queue of the
        // spool): dead, as a process killed while its solo thread answered.
        self.bury(solo);
        self.model.summary.kills_in_answers += 1;
        started?;
        self.others_look_if_alone(solo)?;
        self.start_now_or_later(solo)
    }

    /// In a run with solo, after the handle of slot `index` closed or died: each other live
    /// handle looks whether it is alone and becomes solo if so, as its solo thread does when
    /// a handle that drops wakes it (or a second later, for a killed one). The process that
    /// starts in slot `index` next then finds it solo, and runs its answer.
    fn others_look_if_alone(&mut self, index: usize) -> Result<(), String> {
        if !self.config.solo {
            return Ok(());
        }
        for other in (0..self.processes.len()).filter(|&other| other != index) {
            if let Some(queue) = &self.processes[other].queue {
                let entered = crate::testkit::enter_solo_if_alone(queue)
                    .map_err(|error| format!("handle {other} failed to become solo: {error}"))?;
                self.model.summary.solo_entries += u64::from(entered);
            }
        }
        Ok(())
    }

    /// The process of slot `index` is dead: its handle is kept as it is, never dropped.
    fn bury(&mut self, index: usize) {
        if let Some(queue) = self.processes[index].queue.take() {
            self.dead.push(queue);
        }
        if let Some(spool) = self.processes[index].spool.take() {
            // Never dropped: its queues would close.
            std::mem::forget(spool);
        }
        // A dead process settles nothing: its deliveries are never dropped (a drop releases).
        for delivery in std::mem::take(&mut self.processes[index].held) {
            std::mem::forget(delivery);
        }
        self.model.holder_died(self.processes[index].number);
    }

    fn queue(&self, index: usize) -> Result<Arc<Queue>, String> {
        self.processes[index]
            .queue
            .clone()
            .ok_or_else(|| format!("handle {index} is not open"))
    }

    fn step(&mut self, op: &ProcessOp) -> Result<(), String> {
        let index = op
            .handle()
            .map(|handle| usize::from(handle) % self.processes.len());
        if let Some(index) = index {
            self.start_if_not_running(index)?;
        }
        match op {
            ProcessOp::PowerLoss { seed } => {
                self.sim.power_loss_seeded(*seed);
                for index in 0..self.processes.len() {
                    self.bury(index);
                }
                self.model.power_loss();
                for index in 0..self.processes.len() {
                    self.start(index)?;
                }
                Ok(())
            }
            ProcessOp::Kill { .. } => {
                let index = index.unwrap_or(0);
                self.sim.kill_process(self.processes[index].number);
                self.bury(index);
                self.model.summary.kills += 1;
                self.others_look_if_alone(index)?;
                self.start_now_or_later(index)
            }
            ProcessOp::Reopen { .. } => {
                let index = index.unwrap_or(0);
                if let Some(queue) = self.processes[index].queue.take() {
                    let queue = Arc::try_unwrap(queue)
                        .map_err(|_| "a handle is still in use".to_string())?;
                    queue
                        .close()
                        .map_err(|error| format!("close of handle {index} failed: {error}"))?;
                }
                // Its spool closes its queues.
                drop(self.processes[index].spool.take());
                // What it held settles nothing now. Its leases end for the other handles as a
                // dead process's do: once a consumer finds its slot file unlocked (it looks at
                // most every 10 ms; sentence 29).
                for delivery in std::mem::take(&mut self.processes[index].held) {
                    std::mem::forget(delivery);
                }
                self.model.holder_died(self.processes[index].number);
                self.others_look_if_alone(index)?;
                self.start_now_or_later(index)
            }
            ProcessOp::KillOpen {
                calls, racing_push, ..
            } => {
                let index = index.unwrap_or(0);
                self.sim.kill_process(self.processes[index].number);
                self.bury(index);
                self.model.summary.kills += 1;
                self.others_look_if_alone(index)?;
                self.start_cut(index, *calls, *racing_push)
            }
            ProcessOp::KillDuring { calls, op } => {
                self.cut(index.unwrap_or(0), Cut::Calls(*calls), op)
            }
            ProcessOp::KillAtPoint { point, op } => {
                self.cut(index.unwrap_or(0), Cut::Point(*point), op)
            }
            ProcessOp::KillAnswer { point } => self.kill_in_answer(*point),
            work => {
                let index = index.unwrap_or(0);
                let payloads = self.prepare(work);
                let queue = self.queue(index)?;
                let held = self.held_for(index, work);
                self.discards_before = queue.overflow_discards();
                queue.take_dropped();
                let spool = self.processes[index].spool.clone();
                let outcome = run_work(
                    &queue,
                    spool.as_deref(),
                    work,
                    &payloads,
                    held,
                    Bound::of(&self.config),
                );
                self.apply(index, work, &payloads, outcome)?;
                // The usage of a bounded queue is exact, also after kills (sentence 31), as
                // a consumer counts it.
                if self.config.max_records.is_some() && self.processes[index].consumer {
                    self.model.check_len(queue.len())?;
                }
                Ok(())
            }
        }
    }

    /// After every step of a bounded run: the usage every push checks (the control file's
    /// totals pushed and consumed) lies between what the queue holds for sure and at most,
    /// and within the bound (unless a power loss under `Never` or `Interval` undid
    /// consumptions, which may leave more records than the bound).
    fn check_bound_usage(&mut self) -> Result<(), String> {
        if !self.config.bounded() {
            return Ok(());
        }
        let queue = self.queue(0)?;
        let used = queue
            .bound_usage()
            .ok_or("a bounded queue's handle has no bound")?;
        let may_overflow = !self.config.all_always() && self.model.summary.power_losses > 0;
        let slack = self.bound_slack;
        let over = self.config.max_records.is_some_and(|max| used.0 > max)
            || self.config.max_bytes.is_some_and(|max| used.1 > max);
        let past_slack =
            self.config
                .max_records
                .is_some_and(|max| used.0 > max + slack)
                || self.config.max_bytes.is_some_and(|max| {
                    used.1 > max + slack * frame_bytes(usize::from(PAYLOAD_MAX))
                });
        if !may_overflow && past_slack {
            return Err(format!(
                "the usage is {} records and {} bytes, past the bound of {:?} records and {:?} \
                 bytes (by more than the {slack} records consumer calls cut by kills may have \
                 counted)",
                used.0, used.1, self.config.max_records, self.config.max_bytes
            ));
        }
        if !over && self.slack_settled {
            self.bound_slack = 0;
        }
        self.model.check_usage(used, "pushes check")
    }

    /// The deliveries `op` settles: all that the process holds, for a `Settle`.
    fn held_for(&mut self, index: usize, op: &ProcessOp) -> Vec<Delivery> {
        if matches!(op, ProcessOp::Settle { .. }) {
            std::mem::take(&mut self.processes[index].held)
        } else {
            Vec::new()
        }
    }

    /// The ids and payloads of what `op` pushes (known to the model from now on).
    fn prepare(&mut self, op: &ProcessOp) -> Vec<Vec<u8>> {
        if let ProcessOp::Fanout { len, .. } = op {
            let id = self.model.new_ids(1)[0];
            self.model.spool.fanning(id);
            return vec![payload(id, *len)];
        }
        let (count, len) = match op {
            ProcessOp::Push { len, .. } | ProcessOp::PushDedup { len, .. } => (1, *len),
            ProcessOp::PushBatch { count, len, .. } => (usize::from(*count), *len),
            _ => return Vec::new(),
        };
        let ids = self.model.new_ids(count);
        self.model
            .pushing(&ids, frame_bytes(usize::from(len.max(8))));
        ids.iter().map(|&id| payload(id, len)).collect()
    }

    fn apply(
        &mut self,
        index: usize,
        op: &ProcessOp,
        payloads: &[Vec<u8>],
        outcome: Result<Outcome, Error>,
    ) -> Result<(), String> {
        let always = self.config.policy_of(index) == Policy::Always;
        if matches!(
            op,
            ProcessOp::Pop { .. }
                | ProcessOp::RecvAck { .. }
                | ProcessOp::RecvNack { .. }
                | ProcessOp::Peek { .. }
                | ProcessOp::RecvHold { .. }
                | ProcessOp::Compact { .. }
        ) || matches!(&outcome, Ok(Outcome::Settled { records, .. }) if !records.is_empty())
        {
            self.processes[index].consumer = true;
            // Its turn counted the usage from the files, after any that a kill cut.
            self.slack_settled |= outcome.is_ok();
        }
        if std::env::var_os("DISKSPOOL_SIM_TRACE").is_some() {
            match &outcome {
                Ok(Outcome::Pushed(seqs)) => eprintln!("  pushed {seqs:?}"),
                Ok(Outcome::Delivered(records)) => eprintln!(
                    "  delivered {:?}",
                    records
                        .iter()
                        .map(|(seq, bytes, consumed)| (*seq, bytes.get(..1), *consumed))
                        .collect::<Vec<_>>()
                ),
                Ok(Outcome::Peeked(peeked, popped)) => eprintln!(
                    "  peeked {:?}, popped {:?}",
                    peeked.as_ref().map(|(seq, _)| seq),
                    popped
                        .as_ref()
                        .map(|popped| popped.as_ref().map(|(seq, _)| seq))
                ),
                Ok(Outcome::Received(deliveries)) => eprintln!(
                    "  received {:?}",
                    deliveries
                        .iter()
                        .map(|delivery| (delivery.seq(), delivery.deliveries()))
                        .collect::<Vec<_>>()
                ),
                Ok(Outcome::Settled { how, records, .. }) => eprintln!(
                    "  settled {how:?} {:?}",
                    records
                        .iter()
                        .map(|(seq, _, count)| (*seq, *count))
                        .collect::<Vec<_>>()
                ),
                Ok(Outcome::Done) => {}
                Ok(Outcome::Skipped) => eprintln!("  skipped: no room without waiting"),
                Ok(Outcome::FannedOut(seqs)) => eprintln!("  fanned out {seqs:?}"),
                Ok(Outcome::Copy(target, copy)) => eprintln!(
                    "  popped from {} {:?}",
                    TARGETS[*target],
                    copy.as_ref().map(|(seq, bytes)| (*seq, id_of(bytes)))
                ),
                Err(error) => eprintln!("  failed: {error}"),
            }
        }
        let ids: Vec<u64> = payloads.iter().map(|bytes| id_of(bytes)).collect();
        let bytes: u64 = payloads.iter().map(|bytes| frame_bytes(bytes.len())).sum();
        if let Some(bound) = Bound::of(&self.config).filter(|_| pushes(op)) {
            {
                // What a push under `DropOldest` discarded first.
                let queue = self.queue(index)?;
                let dropped = queue.take_dropped();
                let counted = queue
                    .overflow_discards()
                    .saturating_sub(self.discards_before);
                if counted != dropped.len() as u64 {
                    return Err(format!(
                        "{op:?} discarded {} records and counted {counted}",
                        dropped.len()
                    ));
                }
                if !dropped.is_empty() {
                    if bound.overflow != Overflow::DropOldest {
                        return Err(format!(
                            "{op:?} discarded {counted} records under {:?}",
                            bound.overflow
                        ));
                    }
                    // A consumer call: its sync syncs the consumer files.
                    self.processes[index].consumer = true;
                    self.model
                        .dropped(&dropped, self.config.drops_to_dead_letters, always)?;
                }
            }
            if let Err(Error::Full {
                records: used_records,
                bytes: used_bytes,
                ..
            }) = &outcome
            {
                return self
                    .model
                    .refused(&ids, bytes, (*used_records, *used_bytes), &bound);
            }
            if let Ok(Outcome::Pushed(_)) = &outcome {
                if !matches!(op, ProcessOp::PushDedup { .. }) {
                    self.model.accepted(ids.len() as u64, bytes, &bound)?;
                }
            }
        }
        match outcome.map_err(|error| format!("{op:?} on handle {index} failed: {error}"))? {
            Outcome::Pushed(seqs) => match op {
                ProcessOp::PushDedup { key, .. } => {
                    self.model.pushed_dedup(*key, ids[0], seqs.start, always)
                }
                _ => self.model.pushed(&ids, seqs, always),
            },
            Outcome::Delivered(records) => {
                for (seq, bytes, consumed) in records {
                    self.model.delivered(seq, &bytes, consumed, always)?;
                }
                Ok(())
            }
            Outcome::Received(deliveries) => {
                let number = self.processes[index].number;
                for delivery in &deliveries {
                    self.model.received(
                        delivery.seq(),
                        delivery.payload(),
                        delivery.deliveries(),
                        Some(number),
                        always,
                    )?;
                }
                self.processes[index].held.extend(deliveries);
                Ok(())
            }
            Outcome::Settled {
                fresh,
                how,
                records,
                kept,
            } => {
                for (seq, bytes, count) in records {
                    let id = if fresh {
                        self.model.received(seq, &bytes, count, None, always)?
                    } else {
                        id_of(&bytes)
                    };
                    match how {
                        Settle::Ack => self.model.acked(id, always)?,
                        Settle::Nack => self.model.released(id, count, false, always)?,
                        Settle::RetryLater => self.model.released(id, count, true, always)?,
                        Settle::Extend => {}
                    }
                }
                self.processes[index].held.extend(kept);
                Ok(())
            }
            Outcome::Peeked(peeked, popped) => {
                self.model
                    .peeked(peeked.as_ref(), popped.as_ref().map(Option::as_ref), always)
            }
            Outcome::FannedOut(seqs) => {
                self.model
                    .spool
                    .fanned_out(ids[0], &seqs, &mut self.model.summary)
            }
            Outcome::Copy(target, copy) => match copy {
                Some((seq, bytes)) => {
                    self.model
                        .spool
                        .popped(target, seq, &bytes, &mut self.model.summary)
                }
                None => Ok(()),
            },
            Outcome::Skipped => {
                for id in &ids {
                    if let Some(record) = self.model.records.get_mut(id) {
                        record.fate = Fate::Never;
                    }
                }
                self.model.summary.skipped += 1;
                Ok(())
            }
            Outcome::Done => {
                if matches!(op, ProcessOp::Sync { .. }) {
                    self.model.synced(self.processes[index].consumer);
                }
                Ok(())
            }
        }
    }

    /// Runs `op` on its own thread with a kill point armed in its process; a reached kill
    /// point stops that thread for good, and the process starts again.
    fn cut(&mut self, index: usize, cut: Cut, op: &ProcessOp) -> Result<(), String> {
        let payloads = self.prepare(op);
        let queue = self.queue(index)?;
        let held = self.held_for(index, op);
        let held_ids: Vec<u64> = held
            .iter()
            .map(|delivery| id_of(delivery.payload()))
            .collect();
        let number = self.processes[index].number;
        let kills_before = self.sim.kills(number);
        let point = match cut {
            Cut::Calls(calls) => {
                self.sim.kill_at(number, u64::from(calls));
                None
            }
            Cut::Point(point) => Some(point.name()),
        };
        self.discards_before = queue.overflow_discards();
        queue.take_dropped();
        let bound = Bound::of(&self.config);
        let spool = self.processes[index].spool.clone();
        let thread = {
            let (op, payloads, sim) = (op.clone(), payloads.clone(), self.sim.clone());
            std::thread::spawn(move || {
                if let Some(point) = point {
                    crate::engine::failpoint::on_reached_in_this_thread(Some(Box::new(
                        move |name| {
                            if name == point {
                                sim.kill_process(number);
                                // Dead from here on, like a thread stopped at a kill point.
                                loop {
                                    std::thread::park();
                                }
                            }
                        },
                    )));
                }
                run_work(&queue, spool.as_deref(), &op, &payloads, held, bound)
            })
        };
        loop {
            if self.sim.kills(number) != kills_before {
                // Killed: the thread stays where the kill stopped it.
                self.stopped.push(thread);
                self.bury(index);
                self.model.summary.kills_during += 1;
                // A consumer call cut short may have counted as consumed records that are not
                // (they come back): the queue may then go over its bound by as many, until the
                // next consumer turn counts the usage from the files and they are consumed
                // (sentence 31).
                let counted = match op {
                    ProcessOp::Pop { max: count, .. }
                    | ProcessOp::RecvHold { count, .. }
                    | ProcessOp::RecvAck { count, .. }
                    | ProcessOp::RecvNack { count, .. } => u64::from(*count),
                    ProcessOp::Peek { .. } => 1,
                    ProcessOp::Settle { .. } => held_ids.len() as u64,
                    _ if self.config.overflow == Overflow::DropOldest && pushes(op) => {
                        payloads.len() as u64
                            + payloads
                                .iter()
                                .map(|bytes| frame_bytes(bytes.len()))
                                .sum::<u64>()
                                .div_ceil(frame_bytes(8))
                    }
                    _ => 0,
                };
                self.bound_slack += counted;
                self.slack_settled = false;
                match op {
                    ProcessOp::Pop { max, .. } => self.model.consumption_cut(usize::from(*max)),
                    ProcessOp::Peek { .. } => self.model.consumption_cut(1),
                    ProcessOp::RecvHold { count, .. } => {
                        self.model.consumption_cut(usize::from(*count))
                    }
                    ProcessOp::Settle { how, .. } if *how != Settle::Extend => {
                        self.model.settle_cut(&held_ids)
                    }
                    // An extension cut ends with its process, and its leases (`bury`).
                    ProcessOp::Settle { .. } => {}
                    ProcessOp::RecvAck { count, .. } | ProcessOp::RecvNack { count, .. } => {
                        self.model.consumption_cut(usize::from(*count))
                    }
                    ProcessOp::PushDedup { key, .. } => {
                        self.model.dedup_cut(*key, id_of(&payloads[0]))
                    }
                    ProcessOp::Fanout { .. } => self.model.spool.fanout_cut(id_of(&payloads[0])),
                    ProcessOp::PopCopy { target, .. } => {
                        self.model.spool.pop_cut(usize::from(*target % 2))
                    }
                    // What it pushed stays "maybe"; a sync that did not return promises nothing.
                    _ => {}
                }
                if self.config.bounded()
                    && self.config.overflow == Overflow::DropOldest
                    && pushes(op)
                {
                    // It may have dropped records at the front first: as many as its records
                    // need, and one at a time for its bytes.
                    let bytes: u64 = payloads.iter().map(|bytes| frame_bytes(bytes.len())).sum();
                    let most = payloads.len() as u64 + bytes.div_ceil(frame_bytes(8));
                    self.model
                        .consumption_cut(usize::try_from(most).unwrap_or(usize::MAX));
                }
                self.others_look_if_alone(index)?;
                return self.start_now_or_later(index);
            }
            if thread.is_finished() {
                self.sim.disarm_kill(number);
                let outcome = thread
                    .join()
                    .map_err(|_| format!("{op:?} on handle {index} panicked"))?;
                return self.apply(index, op, &payloads, outcome);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Pops everything left from one handle.
    fn drain(&mut self) -> Result<(), String> {
        for index in 0..self.processes.len() {
            self.start_if_not_running(index)?;
        }
        // What the live processes hold, released.
        for index in 0..self.processes.len() {
            let held = std::mem::take(&mut self.processes[index].held);
            let outcome = settle(held, Settle::Nack, false);
            self.apply(
                index,
                &ProcessOp::Settle {
                    handle: index as u8,
                    how: Settle::Nack,
                },
                &[],
                outcome,
            )?;
        }
        let queue = self.queue(0)?;
        // The leases of dead processes end once a consumer finds them dead (it looks at most
        // every 10 ms).
        let mut waits = 2;
        loop {
            let records = queue
                .pop_batch(64)
                .map_err(|error| format!("final drain failed: {error}"))?;
            if records.is_empty() {
                if waits > 0 && self.model.owes_behind_dead_leases() {
                    waits -= 1;
                    std::thread::sleep(Duration::from_millis(11));
                    continue;
                }
                self.read_dead_letters()?;
                self.drain_spool()?;
                return self.model.check_drained();
            }
            for record in records {
                self.model
                    .delivered(record.seq(), record.payload(), true, false)?;
            }
        }
    }

    /// Pops everything left in the spool's queues (in a run with one), and checks that every
    /// copy owed came.
    fn drain_spool(&mut self) -> Result<(), String> {
        let Some(spool) = self.processes[0].spool.clone() else {
            return Ok(());
        };
        for (target, name) in TARGETS.iter().enumerate() {
            let queue = spool
                .queue(name)
                .map_err(|error| format!("open of spool queue {name} failed: {error}"))?;
            while let Some(record) = queue
                .pop()
                .map_err(|error| format!("drain of spool queue {name} failed: {error}"))?
            {
                self.model.spool.popped(
                    target,
                    record.seq(),
                    record.payload(),
                    &mut self.model.summary,
                )?;
            }
        }
        self.model.spool.check_drained()
    }

    /// Reads the dead-letter queue in a process of its own, into the model.
    fn read_dead_letters(&mut self) -> Result<(), String> {
        if self.config.max_deliveries.is_none() && !self.config.drops_to_dead_letters {
            return Ok(());
        }
        self.next_process += 1;
        let letters_dir = format!("{DIR}.dead");
        let letters = Queue::open(&letters_dir, self.dead_letter_options(0, self.next_process))
            .map_err(|error| format!("open of the dead-letter queue failed: {error}"))?;
        let mut read = Vec::new();
        loop {
            let records = letters
                .pop_batch(64)
                .map_err(|error| format!("drain of the dead-letter queue failed: {error}"))?;
            if records.is_empty() {
                break;
            }
            for record in records {
                let letter = crate::DeadLetter::decode(record.payload())
                    .ok_or_else(|| format!("dead letter {} is no envelope", record.seq()))?;
                read.push((letter.original_seq, letter.payload.to_vec()));
            }
        }
        let _ = letters.close();
        self.model.dead_letters(&read)
    }

    /// Closes the live handles; leaves the dead ones as their kills left them (a thread stopped
    /// at a kill point sleeps for good: see `SimStorage::kill_at`).
    fn finish(&mut self) {
        for process in &mut self.processes {
            if let Some(queue) = process.queue.take() {
                if let Ok(queue) = Arc::try_unwrap(queue) {
                    let _ = queue.close();
                }
            }
        }
        // Detached: they never end.
        self.stopped.clear();
        self.stopped_opens.clear();
        for queue in self.dead.drain(..) {
            match Arc::try_unwrap(queue) {
                Ok(queue) => queue.abandon(),
                // A thread stopped at its kill point holds it too.
                Err(queue) => std::mem::forget(queue),
            }
        }
    }
}

/// Runs `ops` against the model with `config`; a violation of the contract (or an operation
/// that failed) is the error, naming the step.
pub fn run_processes(
    config: &ProcessesConfig,
    ops: &[ProcessOp],
) -> Result<ProcessesSummary, String> {
    let sim = SimStorage::new(0x516D_0001);
    sim.set_writable_mappings(config.writable_mappings);
    if config.solo {
        sim.allow_solo();
    }
    let mut run = Run {
        sim,
        config: *config,
        processes: (0..config.handles)
            .map(|_| Process {
                number: 0,
                queue: None,
                consumer: false,
                held: Vec::new(),
                spool: None,
            })
            .collect(),
        next_process: 0,
        model: Model {
            max_deliveries: config.max_deliveries,
            all_always: config.all_always(),
            ..Model::default()
        },
        dead: Vec::new(),
        stopped: Vec::new(),
        stopped_opens: Vec::new(),
        discards_before: 0,
        bound_slack: 0,
        slack_settled: true,
        restarts: SimRng::new(0x5010_0057_A127),
    };
    let result = (|| {
        for index in 0..run.processes.len() {
            run.start(index)?;
        }
        let trace = std::env::var_os("DISKSPOOL_SIM_TRACE").is_some();
        for (step, op) in ops.iter().enumerate() {
            if trace {
                let files: Vec<String> = run
                    .sim
                    .file_names(Path::new(DIR))
                    .into_iter()
                    .map(|name| {
                        let len = run
                            .sim
                            .read_file(&Path::new(DIR).join(&name))
                            .map_or(0, |bytes| bytes.len());
                        format!("{name}:{len}")
                    })
                    .collect();
                eprintln!("  files {}", files.join(" "));
                let letters = run.sim.file_names(Path::new(&format!("{DIR}.dead")));
                if !letters.is_empty() {
                    eprintln!("  dead-letter files {}", letters.join(" "));
                }
                if let Some(bytes) = run.sim.read_file(&Path::new(DIR).join("head")) {
                    let read = crate::format::head::decode_head_file(&bytes);
                    let slots: Vec<String> = read
                        .slots
                        .iter()
                        .map(|slot| match slot {
                            Ok(slot) => {
                                format!("gen {} head {}", slot.generation, slot.state.head_seq)
                            }
                            Err(_) => "invalid".into(),
                        })
                        .collect();
                    eprintln!("  head {slots:?} current {:?}", read.current);
                }
                eprintln!("step {step}: {op:?}");
            }
            run.step(op)
                .and_then(|()| run.check_bound_usage())
                .map_err(|violation| format!("step {step} ({op:?}): {violation}"))?;
        }
        run.drain()
    })();
    run.finish();
    let mixes = config.mixes_policies();
    result.map(|()| ProcessesSummary {
        mixed_runs: u64::from(mixes),
        mixed_power_losses: if mixes {
            run.model.summary.power_losses
        } else {
            0
        },
        solo_answers: run.sim.stats().solo_answers,
        ..run.model.summary
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model whose push of a batch of three records was cut (ids 0, 1, 2).
    fn cut_batch() -> (Model, Vec<u64>) {
        let mut model = Model::default();
        let ids = model.new_ids(3);
        model.pushing(&ids, frame_bytes(16));
        (model, ids)
    }

    #[test]
    fn a_cut_batch_that_shows_is_owed_whole() {
        let (mut model, ids) = cut_batch();
        model
            .delivered(7, &payload(ids[0], 16), true, false)
            .unwrap();
        // The other two are owed, at 8 and 9.
        assert!(model.check_drained().is_err());
        model
            .delivered(8, &payload(ids[1], 16), true, false)
            .unwrap();
        model
            .delivered(9, &payload(ids[2], 16), true, false)
            .unwrap();
        model.check_drained().unwrap();
        assert_eq!(model.summary.cut_batches_found, 1);
    }

    #[test]
    fn a_batch_is_refused_out_of_order_or_apart() {
        let (mut model, ids) = cut_batch();
        model
            .delivered(7, &payload(ids[1], 16), true, false)
            .unwrap();
        // Its first record, before it, was never handed out: it cannot come after it.
        let error = model
            .delivered(6, &payload(ids[0], 16), true, false)
            .unwrap_err();
        assert!(error.contains("first time"), "{error}");

        let (mut model, ids) = cut_batch();
        model
            .delivered(7, &payload(ids[0], 16), true, false)
            .unwrap();
        let error = model
            .delivered(9, &payload(ids[1], 16), true, false)
            .unwrap_err();
        // Its second record is owed at 8 (9 is its third's).
        assert!(error.contains("belongs to record 2"), "{error}");
    }

    #[test]
    fn a_batch_possibly_handed_out_in_part_promises_nothing() {
        let (mut model, ids) = cut_batch();
        // A consumer call cut by a kill may have taken its first record.
        model.consumption_cut(1);
        model
            .delivered(8, &payload(ids[1], 16), true, false)
            .unwrap();
        model.check_drained().unwrap();
    }
}
