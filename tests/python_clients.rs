//! kafka-python and confluent-kafka against the real `runnel` binary, through
//! `tests/python/clients.py` run with the repository's `.venv` (made by `.ci/run`).

mod common;

use common::TestBroker;
use std::time::Duration;

/// The whole script may take this long before the test fails.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(300);

/// The Python clients' own checks (topics via both admin clients, kafka-python with gzip/lz4/zstd
/// and seek_to_beginning, confluent-kafka's idempotent producer and offsets_for_times) all pass.
/// Without `.venv/bin/python` the test is skipped, unless `CI` is set.
#[test]
fn python_clients() {
    let Some(python) = common::python("python_clients") else { return };
    let broker = TestBroker::start();
    common::run_python_script(&python, "clients.py", &["--bootstrap".to_string(), broker.bootstrap()], SCRIPT_DEADLINE);
}
