//! `--queue NAME` addresses one queue of a spool directory.

use diskspool::{Options, Spool, SyncPolicy};
use predicates::prelude::*;

use crate::util::{arg, spool};

#[test]
fn queue_flag_reads_and_writes_one_queue_of_a_spool() {
    let temp = tempfile::tempdir().unwrap();
    {
        let spool_dir =
            Spool::open(temp.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
        spool_dir
            .fanout(b"order 7 shipped", &["billing", "email"])
            .unwrap();
    }
    spool(&["pop", arg(temp.path()), "--queue", "billing"])
        .assert()
        .success()
        .stdout("order 7 shipped\n");
    spool(&["--queue", "email", "stat", "--json", arg(temp.path())])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"len\":1"));
    spool(&["push", arg(temp.path()), "--queue", "audit", "first"])
        .assert()
        .success();
    let audit = Spool::open(temp.path(), Options::default()).unwrap();
    assert_eq!(
        audit
            .queue("audit")
            .unwrap()
            .pop()
            .unwrap()
            .unwrap()
            .payload(),
        b"first"
    );
    assert_eq!(audit.queue_names().unwrap(), ["audit", "billing", "email"]);
}

#[test]
fn queue_flag_refuses_a_name_that_leaves_the_directory() {
    let temp = tempfile::tempdir().unwrap();
    spool(&["push", arg(temp.path()), "--queue", "../elsewhere", "x"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("queue name"));
    assert!(!temp.path().join("../elsewhere").exists());
}
