//! kafka-python and confluent-kafka against the real `runnel` binary, through
//! `tests/python/clients.py` run with the repository's `.venv` (made by `.ci/run`).

mod common;

use common::TestBroker;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole script may take this long before the test fails.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(300);

/// The Python clients' own checks (topics via both admin clients, kafka-python with gzip/lz4/zstd
/// and seek_to_beginning, confluent-kafka's idempotent producer and offsets_for_times) all pass.
/// Without `.venv/bin/python` the test is skipped, unless `CI` is set.
#[test]
fn python_clients() {
    // The checkout running the test, as cargo tells it at run time: a test binary reused from a
    // shared target directory was compiled in another checkout, whose path env! would bake in.
    let root = std::env::var("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf());
    let root = root.as_path();
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        assert!(std::env::var_os("CI").is_none(), "{} is missing and CI is set: run `bash .ci/run` (it creates the venv)", python.display());
        // Straight to the stderr handle, not eprintln!: the harness would capture (hide) that.
        let _ = writeln!(
            std::io::stderr(),
            "SKIP python_clients: {} is missing (create it with `bash .ci/run`, or python3 -m venv .venv && .venv/bin/pip install kafka-python confluent-kafka lz4 zstandard)",
            python.display()
        );
        return;
    }
    let broker = TestBroker::start();
    let started = Instant::now();
    let mut child = Command::new(&python)
        .arg(root.join("tests/python/clients.py"))
        .arg("--bootstrap")
        .arg(broker.bootstrap())
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start clients.py");
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped")));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for clients.py") {
            break status;
        }
        if started.elapsed() > SCRIPT_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("clients.py did not finish within {SCRIPT_DEADLINE:?}:\n{}", stdout.join().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    println!("{stdout}");
    eprintln!("clients.py took {:?}", started.elapsed());
    assert!(status.success(), "clients.py failed ({status}):\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains(", 0 failed"), "no summary line:\n{stdout}");
}
