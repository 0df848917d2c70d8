//! `buggify!` and planted bugs: two ways the simulator steers actors off the happy path.
//!
//! - **buggify**: at a `buggify!(cx)` point an actor takes a rare-but-legal path (answer with a
//!   retriable error, roll a segment early, return a short read) with a small probability drawn
//!   from its own seeded RNG. Only the simulator switches it on (per thread); elsewhere the macro
//!   is `false` and draws nothing, so real runs are unaffected.
//! - **planted bugs**: deliberate defects behind the cargo feature `planted-bugs` (which release
//!   builds never enable), activated by name at run time. They measure how quickly the
//!   simulator's checkers find real classes of bugs. Without the feature, `planted!("name")` is
//!   the constant `false`.

use std::cell::Cell;

/// The planted bugs: name and what goes wrong.
pub const PLANTED_BUGS: &[(&str, &str)] = &[
    ("ack-before-fsync", "acks=all is answered as soon as the batch is appended, before it is durable"),
    ("recovery-skips-crc", "log recovery trusts batches after the recovery point without checking their CRC"),
    ("offset-index-off-by-one", "an offset-index lookup starts the read one index entry too far"),
    ("fetch-above-high-watermark", "Fetch returns records at or above the high watermark"),
    ("idempotent-accepts-duplicate", "a retried idempotent batch is appended again instead of being recognised"),
    ("hw-before-isr-ack", "a partition leader advances the high watermark before the ISR followers have the records"),
    ("skip-truncation", "a follower keeps its divergent log suffix when a new leader tells it to truncate"),
    ("stale-controller-epoch-accepted", "a voter accepts log entries from a leader of an older Raft term"),
    ("isr-shrink-not-persisted", "a leader shrinks its ISR locally without committing the change through the controller"),
    ("stale-generation-commit", "OffsetCommit is accepted without checking that the member is in the group's current generation"),
    ("assignment-misrouted", "the group leader's range assignor also hands the first member's partitions to the second"),
    ("kip848-answer-before-durable", "a KIP-848 heartbeat is answered before the group state it was taken from is committed"),
    (
        "delete-records-before-replicas",
        "DeleteRecords is answered once the leader moved its log start in memory, before it is on disk and before the followers have it",
    ),
    ("cleaner-drops-latest", "the log cleaner's supersede check is off by one (>= for >), so the latest record of a key goes too"),
    ("time-index-one-late", "a time-index lookup starts a timestamp search at the first entry at or after the target instead of the last one before it"),
    ("quorum-reports-uncommitted", "DescribeQuorum reports the metadata leader's log end as its high watermark, uncommitted entries included"),
];

thread_local! {
    static BUGGIFY: Cell<bool> = const { Cell::new(false) };
    static BUGGIFY_FIRED: Cell<u64> = const { Cell::new(0) };
    #[cfg(feature = "planted-bugs")]
    static ACTIVE: std::cell::RefCell<Vec<&'static str>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Switch buggify points on or off for actors driven on this thread (simulator only).
pub fn set_buggify(enabled: bool) {
    BUGGIFY.with(|b| b.set(enabled));
}

/// Count one buggify point taking its rare path (called by `buggify!`).
pub fn note_buggify() {
    BUGGIFY_FIRED.with(|b| b.set(b.get() + 1));
}

/// How many buggify points fired on this thread, resetting the count.
pub fn take_buggify_count() -> u64 {
    BUGGIFY_FIRED.with(|b| b.replace(0))
}

/// Whether buggify points may fire on this thread.
pub fn buggify_enabled() -> bool {
    BUGGIFY.with(|b| b.get())
}

/// Activate the named planted bugs on this thread; unknown names are an error.
#[cfg(feature = "planted-bugs")]
pub fn set_planted(names: &[String]) -> Result<(), String> {
    let mut active = Vec::new();
    for n in names {
        let known = PLANTED_BUGS.iter().find(|(b, _)| b == n).ok_or_else(|| format!("unknown planted bug {n}"))?;
        active.push(known.0);
    }
    ACTIVE.with(|a| *a.borrow_mut() = active);
    Ok(())
}

/// Whether the named planted bug is active on this thread.
#[cfg(feature = "planted-bugs")]
pub fn planted_active(name: &str) -> bool {
    ACTIVE.with(|a| a.borrow().contains(&name))
}

/// Whether this build carries planted bugs at all.
pub const fn planted_bugs_compiled() -> bool {
    cfg!(feature = "planted-bugs")
}

/// `buggify!(cx)`: true with probability 1/20 when the simulator enabled buggify on this thread.
#[macro_export]
macro_rules! buggify {
    ($cx:expr) => {{
        let fire = $crate::core::bugs::buggify_enabled() && $cx.rng().below(20) == 0;
        if fire {
            $crate::core::bugs::note_buggify();
        }
        fire
    }};
}

/// `planted!("name")`: whether the named planted bug is active (always false without the
/// `planted-bugs` feature).
#[macro_export]
#[cfg(feature = "planted-bugs")]
macro_rules! planted {
    ($name:literal) => {
        $crate::core::bugs::planted_active($name)
    };
}

/// `planted!("name")`: whether the named planted bug is active (always false without the
/// `planted-bugs` feature).
#[macro_export]
#[cfg(not(feature = "planted-bugs"))]
macro_rules! planted {
    ($name:literal) => {
        false
    };
}
