//! kcat (Debian's 1.7.1, linking librdkafka 2.0.2 — an old client that parses ApiVersions
//! strictly) produces in every codec and consumes everything back from the real binary.

mod common;

use common::TestBroker;
use std::io::Write;
use std::process::{Command, Stdio};

fn kcat_available() -> bool {
    let found = Command::new("kcat").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !found {
        assert!(std::env::var_os("CI").is_none(), "kcat is not installed (.ci/run installs it with apt-get)");
        println!("SKIP: kcat is not installed (apt-get install kcat)");
    }
    found
}

fn kcat(args: &[&str], stdin: &[u8]) -> (bool, String) {
    let mut child = Command::new("timeout")
        .arg("60")
        .arg("kcat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kcat");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
    let out = child.wait_with_output().expect("kcat output");
    if !out.status.success() {
        eprintln!("kcat {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
}

/// Every codec kcat offers round-trips through the broker, in order, and metadata lists the topic.
#[test]
fn kcat_produces_and_consumes_every_codec() {
    if !kcat_available() {
        return;
    }
    let broker = TestBroker::start();
    let b = broker.bootstrap();
    let mut expected = Vec::new();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let lines: Vec<String> = (0..500).map(|i| format!("{codec}-{i}")).collect();
        let (ok, _) = kcat(&["-P", "-b", &b, "-t", "kcat", "-p", "0", "-z", codec], (lines.join("\n") + "\n").as_bytes());
        assert!(ok, "kcat produce with {codec}");
        expected.extend(lines);
    }
    let (ok, out) = kcat(&["-C", "-b", &b, "-t", "kcat", "-p", "0", "-o", "beginning", "-e", "-q"], b"");
    assert!(ok, "kcat consume");
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), expected.len(), "records read back");
    assert!(got.iter().zip(&expected).all(|(a, b)| a == b), "records differ or are out of order");
    let (ok, meta) = kcat(&["-L", "-b", &b, "-t", "kcat"], b"");
    assert!(ok && meta.contains("topic \"kcat\" with 1 partitions"), "metadata: {meta}");
}
