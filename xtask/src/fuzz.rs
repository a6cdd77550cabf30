//! `cargo xtask fuzz [--inputs N]`: the hostile-input targets
//! (tests/tests/hostile_input.rs) in release mode with N inputs each (default
//! 1,000,000), one target at a time. Their output is shown as it comes; each target's
//! closing line
//!
//! ```text
//! fuzz: target=checkpoint-entry inputs=1000000 panics=0 peak_rss_mib=9.1 secs=41.0
//! ```
//!
//! becomes one entry of `bench/results/fuzz.json`:
//! `{"checkpoint-entry": {"inputs": 1000000, "panics": 0, "peak_rss_mib": 9.1, "secs": 41.0}, ...}`.
//! The file is written only when every target ran and passed.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{Map, Number, Value};

/// The targets hostile_input.rs runs; each must report.
pub const TARGETS: &[&str] = &[
    "config",
    "ttrpc-reader",
    "nri-mux-ttrpc-server",
    "checkpoint-entry",
    "checkpoint-journal",
    "checkpoint-file",
];

/// Parses one `fuzz: target=NAME key=value ...` line into the target's name and its
/// figures (numbers where they parse as numbers).
pub fn parse_line(line: &str) -> Option<(String, Map<String, Value>)> {
    let rest = line.trim().strip_prefix("fuzz:")?;
    let mut target = None;
    let mut figures = Map::new();
    for pair in rest.split_whitespace() {
        let (key, value) = pair.split_once('=')?;
        if key == "target" {
            target = Some(value.to_string());
            continue;
        }
        let value = if let Ok(n) = value.parse::<u64>() {
            Value::Number(n.into())
        } else if let Some(n) = value.parse::<f64>().ok().and_then(Number::from_f64) {
            Value::Number(n)
        } else {
            Value::String(value.to_string())
        };
        figures.insert(key.to_string(), value);
    }
    Some((target?, figures))
}

/// The results file's content from a run's output; an error names what is missing
/// or wrong (a target that did not report, a panic).
pub fn results(output: &str) -> Result<Value> {
    let mut all = Map::new();
    for (target, figures) in output.lines().filter_map(parse_line) {
        all.insert(target, Value::Object(figures));
    }
    for target in TARGETS {
        let Some(figures) = all.get(*target) else {
            bail!("target {target} did not report a `fuzz:` line");
        };
        for key in ["inputs", "panics", "peak_rss_mib", "secs"] {
            if !figures.get(key).is_some_and(Value::is_number) {
                bail!("target {target}: no number for {key} in {figures}");
            }
        }
        if figures["panics"].as_u64() != Some(0) {
            bail!("target {target}: {} panics", figures["panics"]);
        }
    }
    Ok(Value::Object(all))
}

/// Runs the targets and writes `bench/results/fuzz.json` under `root`.
pub fn run(root: &Path, cargo: &OsStr, inputs: u64) -> Result<()> {
    println!("[fuzz] {inputs} inputs per target, release build (cargo test --release --test hostile_input)");
    let mut child = Command::new(cargo)
        .current_dir(root)
        .env("NETCLAIM_FUZZ_INPUTS", inputs.to_string())
        .args([
            "test",
            "--release",
            "--locked",
            "-p",
            "netclaim-tests",
            "--test",
            "hostile_input",
            "--",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let mut output = String::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading the test output")?;
            println!("{line}");
            output.push_str(&line);
            output.push('\n');
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!(
            "the hostile-input targets failed ({status}); bench/results/fuzz.json left as it was"
        );
    }
    let results = results(&output)?;
    let dir = root.join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("fuzz.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("[fuzz] wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_line_becomes_its_figures() {
        let (target, figures) = parse_line(
            "fuzz: target=checkpoint-file inputs=10000 panics=0 peak_rss_mib=12.6 secs=13.2 caught_panics=124",
        )
        .expect("parsed");
        assert_eq!(target, "checkpoint-file");
        assert_eq!(
            Value::Object(figures),
            serde_json::json!({"inputs": 10000, "panics": 0, "peak_rss_mib": 12.6,
                               "secs": 13.2, "caught_panics": 124})
        );
        assert!(parse_line("config parser: 100 inputs").is_none());
        assert!(parse_line("fuzz: inputs=1").is_none(), "no target");
        assert!(
            parse_line("fuzz: target=x inputs").is_none(),
            "not key=value"
        );
    }

    fn line(target: &str, panics: u64) -> String {
        format!("fuzz: target={target} inputs=1000000 panics={panics} peak_rss_mib=9.5 secs=4.0\n")
    }

    #[test]
    fn every_target_must_report_without_panics() {
        let all: String = TARGETS.iter().map(|t| line(t, 0)).collect();
        let value = results(&format!("noise\n{all}test result: ok.\n")).expect("complete");
        assert_eq!(value.as_object().map(Map::len), Some(TARGETS.len()));
        assert_eq!(value["checkpoint-entry"]["inputs"], 1_000_000);

        let missing: String = TARGETS[1..].iter().map(|t| line(t, 0)).collect();
        let err = results(&missing).unwrap_err().to_string();
        assert!(err.contains("target config did not report"), "{err}");

        let panicked = all.replace(&line("ttrpc-reader", 0), &line("ttrpc-reader", 2));
        let err = results(&panicked).unwrap_err().to_string();
        assert!(err.contains("ttrpc-reader: 2 panics"), "{err}");
    }
}
