//! The deterministic simulation of a queue shared by several processes: two or three handles
//! opened with `Options::exclusive(false)` on one [`SimStorage`], each acting as a simulated
//! process of its own ([`SimStorage::process`]). One seed draws the setup and the workload:
//! pushes, batches, pops, receives acknowledged or released, compactions and syncs from random
//! handles, clean reopens, kills of one process between two operations
//! ([`SimStorage::kill_process`]) or in the middle of one, at its `n`-th storage call
//! ([`SimStorage::kill_at`]: the thread stops right there, nothing of the operation after it
//! runs), and power losses that kill every process. A killed process opens the queue again at
//! once, as a restarted one would.
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
use crate::{Error, Options, Queue};

/// The segment size of these runs: small, so that rolls and compactions are frequent.
const SEGMENT_SIZE: u64 = 4096;
/// The longest payload (the first 8 bytes are the record's id).
const PAYLOAD_MAX: u16 = 400;
/// Leases outlast every run: a lease a killed process left never runs out during it.
const LEASE: Duration = Duration::from_secs(3600);
/// Where the queue lives on the simulated filesystem.
const DIR: &str = "/shared-queue";

/// How a run is set up; drawn from the seed ([`processes_config_from_seed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessesConfig {
    /// Handles (simulated processes) on the queue: 2 or 3.
    pub handles: u8,
    /// The sync policy of every handle.
    pub policy: Policy,
    /// Whether the simulated filesystem offers writable mappings (the real filesystem's write
    /// path: frames and head slots stored through mappings under `Never` and `Interval`).
    pub writable_mappings: bool,
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
    /// Cut the power (the crash's choices drawn from `seed`): every process dies; all open
    /// again.
    PowerLoss {
        /// Seed of the crash's choices.
        seed: u64,
    },
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
            | ProcessOp::Compact { handle }
            | ProcessOp::Sync { handle }
            | ProcessOp::Reopen { handle }
            | ProcessOp::Kill { handle } => Some(*handle),
            ProcessOp::KillDuring { op, .. } | ProcessOp::KillAtPoint { op, .. } => op.handle(),
            ProcessOp::PowerLoss { .. } => None,
        }
    }
}

/// The setup of seed `seed`'s run.
pub fn processes_config_from_seed(seed: u64) -> ProcessesConfig {
    let mut rng = SimRng::new(seed ^ 0x5EED_0F5A_A2ED);
    ProcessesConfig {
        handles: 2 + rng.below(2) as u8,
        policy: Policy::from_byte(rng.below(3) as u8),
        writable_mappings: rng.chance(3, 4),
    }
}

/// `count` operations drawn from `seed` for `config`.
pub fn processes_ops_from_seed(
    seed: u64,
    count: usize,
    config: &ProcessesConfig,
) -> Vec<ProcessOp> {
    let mut rng = SimRng::new(seed);
    let handles = u64::from(config.handles);
    (0..count)
        .map(|_| {
            let handle = rng.below(handles) as u8;
            match rng.below(100) {
                0..=2 => ProcessOp::PowerLoss {
                    seed: rng.next_u64(),
                },
                3..=7 => ProcessOp::Kill { handle },
                8..=10 => ProcessOp::Reopen { handle },
                27..=33 => ProcessOp::KillAtPoint {
                    point: CrashPoint::ALL[rng.below(CrashPoint::ALL.len() as u64) as usize],
                    op: Box::new(work_op(&mut rng, handle)),
                },
                11..=26 => ProcessOp::KillDuring {
                    // Most operations make a few calls: most kill points are early.
                    calls: match rng.below(10) {
                        0..=4 => rng.below(4),
                        5..=7 => rng.below(12),
                        _ => rng.below(40),
                    } as u16,
                    op: Box::new(work_op(&mut rng, handle)),
                },
                _ => work_op(&mut rng, handle),
            }
        })
        .collect()
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

/// What a run exercised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessesSummary {
    /// Records whose push returned.
    pub pushed: u64,
    /// Records delivered (popped, or received and acknowledged).
    pub consumed: u64,
    /// Processes killed between two operations.
    pub kills: u64,
    /// Processes killed in the middle of an operation (the kill point was reached).
    pub kills_during: u64,
    /// Power losses.
    pub power_losses: u64,
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
    summary: ProcessesSummary,
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

    /// Records about to be pushed: they may be in the queue from now on.
    fn pushing(&mut self, ids: &[u64]) {
        for &id in ids {
            self.records.insert(
                id,
                Record {
                    fate: Fate::Maybe,
                    seq: None,
                    push_unsynced: true,
                    consume_unsynced: false,
                    delivered: false,
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
        let record = self.records.get_mut(&id).ok_or("unknown record")?;
        if record.fate == Fate::Consumed {
            return Err(format!(
                "record {id} (seq {seq}) delivered again after a pop or an acknowledgement of \
                 it returned"
            ));
        }
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
        if synced {
            // Under `Always` readers read only what a sync covered.
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

    /// A consuming operation of up to `max` records was cut by a kill: the records at the front
    /// may be consumed, leased for good, or still there.
    fn consumption_cut(&mut self, max: usize) {
        // Records a cut push may have left (number unknown) may be at the front too: the cut
        // operation may have leased them, and a lease of a dead process ends (when it runs out,
        // or sooner when its death is found): they may then come after later ones.
        for record in self.records.values_mut() {
            if record.fate == Fate::Maybe {
                record.delivered = true;
            }
        }
        let front: Vec<u64> = self
            .records
            .values()
            .filter(|record| record.fate == Fate::Owed)
            .filter_map(|record| record.seq)
            .collect::<std::collections::BTreeSet<u64>>()
            .into_iter()
            .take(max)
            .collect();
        for seq in front {
            if let Some(record) = self
                .ids_by_seq
                .get(&seq)
                .and_then(|id| self.records.get_mut(id))
            {
                record.fate = Fate::Maybe;
                record.delivered = true;
            }
        }
    }

    /// A sync returned: every push before is durable (it syncs the active segment, in which
    /// every process writes; the sealed ones were synced when they were sealed), and every
    /// consumption before too if `consumer` (the handle has a consumer: a consumer call since
    /// its open), whose sync then syncs the head index and the ack log every consumer writes.
    /// A handle that never consumed syncs no consumer file (`Shared::sync_all`).
    fn synced(&mut self, consumer: bool) {
        for record in self.records.values_mut() {
            record.push_unsynced = false;
            if consumer {
                record.consume_unsynced = false;
            }
        }
    }

    /// What a power loss may undo under `policy`.
    fn power_loss(&mut self, policy: Policy) {
        self.summary.power_losses += 1;
        self.last_first = None;
        // Under `Always` only pushes cut by a kill are unsynced, and no consumption is.
        let _ = policy;
        for record in self.records.values_mut() {
            if record.push_unsynced {
                record.fate = Fate::Maybe;
                record.delivered = true;
                // Lost, its sequence number goes to the next push.
                if let Some(seq) = record.seq.take() {
                    self.ids_by_seq.remove(&seq);
                }
            } else if record.consume_unsynced {
                record.fate = Fate::Maybe;
                record.delivered = true;
            }
            record.consume_unsynced = false;
        }
    }

    /// After the final drain: every record owed was delivered.
    fn check_drained(&self) -> Result<(), String> {
        let owed: Vec<(u64, Option<u64>)> = self
            .records
            .iter()
            .filter(|(_, record)| record.fate == Fate::Owed)
            .map(|(&id, record)| (id, record.seq))
            .collect();
        if owed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "records whose push returned were never delivered (id, seq): {owed:?}"
            ))
        }
    }
}

/// What an operation on one handle did (computed on whichever thread ran it).
enum Outcome {
    Pushed(std::ops::Range<u64>),
    /// `(seq, payload, consumed)` of each record handed out.
    Delivered(Vec<(u64, Vec<u8>, bool)>),
    Done,
}

fn run_work(queue: &Queue, op: &ProcessOp, payloads: &[Vec<u8>]) -> Result<Outcome, Error> {
    match op {
        ProcessOp::Push { .. } => {
            let seq = queue.push(&payloads[0])?;
            Ok(Outcome::Pushed(seq..seq + 1))
        }
        ProcessOp::PushBatch { .. } => Ok(Outcome::Pushed(queue.push_batch(payloads)?)),
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
            let mut seen = Vec::new();
            for delivery in deliveries {
                seen.push((delivery.seq(), delivery.payload().to_vec(), false));
                delivery.nack()?;
            }
            Ok(Outcome::Delivered(seen))
        }
        ProcessOp::Compact { .. } => queue.compact().map(|_| Outcome::Done),
        ProcessOp::Sync { .. } => queue.sync().map(|_| Outcome::Done),
        ProcessOp::Reopen { .. }
        | ProcessOp::Kill { .. }
        | ProcessOp::KillDuring { .. }
        | ProcessOp::KillAtPoint { .. }
        | ProcessOp::PowerLoss { .. } => Ok(Outcome::Done),
    }
}

/// Where a kill cuts an operation.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// At the process's `n + 1`-th call.
    Calls(u16),
    /// At a crash point of the engine.
    Point(CrashPoint),
}

/// One simulated process with its handle.
struct Process {
    /// Its number on the simulated filesystem (a new one for each start).
    number: u32,
    queue: Option<Arc<Queue>>,
    /// Whether it made a consumer call (pop, receive, compaction) since it opened the queue.
    consumer: bool,
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
}

impl Run {
    fn options(&self, process: u32) -> Options {
        Options::default()
            .exclusive(false)
            .segment_size(SEGMENT_SIZE)
            .max_record_size(usize::from(PAYLOAD_MAX) + 16)
            .sync(self.config.policy.sync_policy())
            .lease(LEASE)
            .storage(Arc::new(self.sim.process(process)))
    }

    /// Starts a new process for slot `index` and opens the queue in it.
    fn start(&mut self, index: usize) -> Result<(), String> {
        self.next_process += 1;
        let number = self.next_process;
        let queue = Queue::open(DIR, self.options(number))
            .map_err(|error| format!("open in process {number} failed: {error}"))?;
        self.processes[index] = Process {
            number,
            queue: Some(Arc::new(queue)),
            consumer: false,
        };
        Ok(())
    }

    /// The process of slot `index` is dead: its handle is kept as it is, never dropped.
    fn bury(&mut self, index: usize) {
        if let Some(queue) = self.processes[index].queue.take() {
            self.dead.push(queue);
        }
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
        match op {
            ProcessOp::PowerLoss { seed } => {
                self.sim.power_loss_seeded(*seed);
                for index in 0..self.processes.len() {
                    self.bury(index);
                }
                self.model.power_loss(self.config.policy);
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
                self.start(index)
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
                self.start(index)
            }
            ProcessOp::KillDuring { calls, op } => {
                self.cut(index.unwrap_or(0), Cut::Calls(*calls), op)
            }
            ProcessOp::KillAtPoint { point, op } => {
                self.cut(index.unwrap_or(0), Cut::Point(*point), op)
            }
            work => {
                let index = index.unwrap_or(0);
                let payloads = self.prepare(work);
                let queue = self.queue(index)?;
                let outcome = run_work(&queue, work, &payloads);
                self.apply(index, work, &payloads, outcome)
            }
        }
    }

    /// The ids and payloads of what `op` pushes (known to the model from now on).
    fn prepare(&mut self, op: &ProcessOp) -> Vec<Vec<u8>> {
        let (count, len) = match op {
            ProcessOp::Push { len, .. } => (1, *len),
            ProcessOp::PushBatch { count, len, .. } => (usize::from(*count), *len),
            _ => return Vec::new(),
        };
        let ids = self.model.new_ids(count);
        self.model.pushing(&ids);
        ids.iter().map(|&id| payload(id, len)).collect()
    }

    fn apply(
        &mut self,
        index: usize,
        op: &ProcessOp,
        payloads: &[Vec<u8>],
        outcome: Result<Outcome, Error>,
    ) -> Result<(), String> {
        let always = self.config.policy == Policy::Always;
        if matches!(
            op,
            ProcessOp::Pop { .. }
                | ProcessOp::RecvAck { .. }
                | ProcessOp::RecvNack { .. }
                | ProcessOp::Compact { .. }
        ) {
            self.processes[index].consumer = true;
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
                Ok(Outcome::Done) => {}
                Err(error) => eprintln!("  failed: {error}"),
            }
        }
        match outcome.map_err(|error| format!("{op:?} on handle {index} failed: {error}"))? {
            Outcome::Pushed(seqs) => {
                let ids: Vec<u64> = payloads
                    .iter()
                    .map(|bytes| u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default()))
                    .collect();
                self.model.pushed(&ids, seqs, always)
            }
            Outcome::Delivered(records) => {
                for (seq, bytes, consumed) in records {
                    self.model.delivered(seq, &bytes, consumed, always)?;
                }
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
        let number = self.processes[index].number;
        let kills_before = self.sim.kills(number);
        let point = match cut {
            Cut::Calls(calls) => {
                self.sim.kill_at(number, u64::from(calls));
                None
            }
            Cut::Point(point) => Some(point.name()),
        };
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
                run_work(&queue, &op, &payloads)
            })
        };
        loop {
            if self.sim.kills(number) != kills_before {
                // Killed: the thread stays where the kill stopped it.
                self.stopped.push(thread);
                self.bury(index);
                self.model.summary.kills_during += 1;
                match op {
                    ProcessOp::Pop { max, .. } => self.model.consumption_cut(usize::from(*max)),
                    ProcessOp::RecvAck { count, .. } | ProcessOp::RecvNack { count, .. } => {
                        self.model.consumption_cut(usize::from(*count))
                    }
                    // What it pushed stays "maybe"; a sync that did not return promises nothing.
                    _ => {}
                }
                return self.start(index);
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
        let queue = self.queue(0)?;
        loop {
            let records = queue
                .pop_batch(64)
                .map_err(|error| format!("final drain failed: {error}"))?;
            if records.is_empty() {
                return self.model.check_drained();
            }
            for record in records {
                self.model
                    .delivered(record.seq(), record.payload(), true, false)?;
            }
        }
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
    let mut run = Run {
        sim,
        config: *config,
        processes: (0..config.handles)
            .map(|_| Process {
                number: 0,
                queue: None,
                consumer: false,
            })
            .collect(),
        next_process: 0,
        model: Model::default(),
        dead: Vec::new(),
        stopped: Vec::new(),
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
                .map_err(|violation| format!("step {step} ({op:?}): {violation}"))?;
        }
        run.drain()
    })();
    run.finish();
    result.map(|()| run.model.summary)
}
