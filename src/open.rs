//! `Queue::open`: the engine's recovery, and under [`OnDamage::Quarantine`] the repair tool
//! before it.
//!
//! The engine opens a queue; the tools repair one. Imports point down only (the engine never
//! reaches the tools), so the public `open` lives here, above both: it hands the engine the
//! repair as a function (`engine::queue::Mend`), which the engine runs with the directory
//! locked before recovery reads anything. It is the very plan `spool repair` carries out, not a
//! copy.
//!
//! [`OnDamage::Quarantine`]: crate::OnDamage::Quarantine

use std::path::Path;

use crate::engine::queue::Queue;
use crate::engine::report::{RecoveryReport, RepairStep};
use crate::error::Result;
use crate::options::Options;
use crate::storage::Storage;
use crate::tools::repair;

impl Queue {
    /// Opens the queue in `dir`, creating the directory and an empty queue if needed, and
    /// recovering from a crash if the last process did not close it.
    ///
    /// Takes an exclusive lock on the directory: a second `open` of it, from this process or
    /// another, fails with [`Error::Locked`](crate::Error::Locked).
    ///
    /// Damage that no crash explains is refused with [`Error::Corrupt`](crate::Error::Corrupt)
    /// under the default [`OnDamage::Refuse`](crate::OnDamage::Refuse); under
    /// [`OnDamage::Quarantine`](crate::OnDamage::Quarantine) it is set aside in `quarantine/`
    /// and [`recovery_report`](Queue::recovery_report) says what was done.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Queue> {
        Queue::open_mending(dir.as_ref(), options, mend)
    }
}

/// Runs [`repair::repair_damage_locked`] and copies its steps into the open's report.
fn mend(storage: &dyn Storage, dir: &Path, report: &mut RecoveryReport) -> Result<()> {
    let Some(repaired) = repair::repair_damage_locked(storage, dir)? else {
        return Ok(());
    };
    report.repairs = repaired
        .actions
        .into_iter()
        .map(|action| RepairStep {
            action: action.kind.name(),
            file: action.file,
            offset: action.offset,
            seqs: action.seqs,
            records_saved: action.records,
            saved_as: action.saved_as,
            reason: action.reason,
        })
        .collect();
    report.cut_seqs = repaired.cut_seqs;
    report.quarantined_records = repaired.quarantined_records;
    Ok(())
}
