//! Runs the crate's examples (built by `cargo test` alongside the tests) on the CPU and
//! checks their verdicts; each example checks its own results and exits 1 on a mismatch.

use std::path::PathBuf;
use std::process::Command;

/// target/<profile>/examples/<name>, next to this test's target/<profile>/deps/.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let path = profile_dir.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is not built: run `cargo test` (it builds the examples) or `cargo build --examples`",
        path.display()
    );
    path
}

fn run(name: &str, args: &[&str]) -> String {
    let output = Command::new(example(name)).args(args).output().expect("the example runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{name} {args:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn write_gather_bf16() {
    let out = run("write_gather", &["--cpu"]);
    assert!(out.contains("on cpu: bf16 cache"), "{out}");
    assert!(out.contains("round trip: exact, max abs error 0.000: ok"), "{out}");
}

#[test]
fn write_gather_fp8() {
    let out = run("write_gather", &["--cpu", "--fp8"]);
    assert!(out.contains("fp8_e4m3 (per-tensor scale 0.01)"), "{out}");
    assert!(out.contains("round trip: within fp8 tolerance"), "{out}");
    assert!(out.ends_with(": ok\n"), "{out}");
}

#[test]
fn serving_loop() {
    let out = run("serving_loop", &["--cpu"]);
    for line in [
        "prefill 3 requests (7, 5, 10 tokens), 5 decode steps (last batch 4)",
        "fork 1 -> 4: 3 blocks shared, 2 after copy-on-write of the partial block",
        "request 3: 3 draft tokens, 1 accepted (truncated to 16 tokens)",
        "request 2: 3 blocks offloaded to the host tier and onboarded back",
        "checked 50 tokens of 4 requests on 2 layers through the mirror: ok",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

#[test]
fn bad_arguments_exit_2() {
    let status = Command::new(example("write_gather")).arg("--nope").status().unwrap();
    assert_eq!(status.code(), Some(2));
}
