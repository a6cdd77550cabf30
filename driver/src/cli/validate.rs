//! `netclaim validate -f FILE`: checks the claim configs in a file the way the driver
//! will when a pod is prepared, and prints every problem with its field path.
//!
//! Reads a ResourceClaim, a ResourceClaimTemplate, a `List` of them or a bare
//! NetworkConfig (YAML with `---` separated documents, or JSON; `-` reads stdin), and
//! exits 0 when everything is valid, 1 when anything is not. All the checking lives
//! in [`crate::config::document`]; this file only reads the file and prints.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::config::document::{parse_documents, DocumentReport};

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// File to check (`-` for stdin): ResourceClaim, ResourceClaimTemplate or a bare
    /// NetworkConfig, YAML (several documents allowed) or JSON.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Only opaque configs whose `driver` is this name are checked.
    #[arg(long, default_value = crate::DEFAULT_DRIVER_NAME)]
    pub driver_name: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: ValidateOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ValidateOutput {
    Text,
    Json,
}

/// The `-o json` document.
#[derive(Serialize)]
struct JsonReport<'a> {
    file: String,
    driver: &'a str,
    valid: bool,
    problems: usize,
    documents: &'a [DocumentReport],
}

pub fn run(args: ValidateArgs) -> anyhow::Result<i32> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run_to(&args, &mut out)
}

/// [`run`], writing to `out`; returns the exit code.
pub fn run_to(args: &ValidateArgs, out: &mut impl Write) -> anyhow::Result<i32> {
    let shown = args.file.display().to_string();
    let text = if shown == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        s
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {shown}"))?
    };
    let docs = parse_documents(&text, &args.driver_name).with_context(|| shown.clone())?;
    let problems: usize = docs.iter().map(|d| d.problems().count()).sum();
    let valid = problems == 0 && !docs.is_empty();

    match args.output {
        ValidateOutput::Json => {
            let report = JsonReport {
                file: shown,
                driver: &args.driver_name,
                valid,
                problems,
                documents: &docs,
            };
            serde_json::to_writer_pretty(&mut *out, &report)?;
            writeln!(out)?;
        }
        ValidateOutput::Text => write_text(out, &shown, &args.driver_name, &docs, problems)?,
    }
    Ok(if valid { 0 } else { 1 })
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn write_text(
    out: &mut impl Write,
    file: &str,
    driver: &str,
    docs: &[DocumentReport],
    problems: usize,
) -> std::io::Result<()> {
    if docs.is_empty() {
        return writeln!(out, "{file}: no documents");
    }
    let mut configs = 0;
    for d in docs {
        let title = format!("{} (document {})", d.title(), d.document);
        if let Some(why) = &d.skipped {
            writeln!(out, "{title}: skipped, {why}")?;
            continue;
        }
        let n = d.problems().count();
        if n == 0 {
            writeln!(out, "{title}")?;
        } else {
            writeln!(out, "{title}: {}", plural(n, "problem", "problems"))?;
        }
        for e in &d.errors {
            writeln!(out, "  {e}")?;
        }
        for c in &d.configs {
            configs += 1;
            let at = if c.path.is_empty() {
                "config"
            } else {
                c.path.as_str()
            };
            let requests = if c.requests.is_empty() {
                String::new()
            } else {
                format!(" (requests: {})", c.requests.join(", "))
            };
            if c.is_valid() {
                writeln!(out, "  {at}{requests}: valid")?;
            } else {
                for e in &c.errors {
                    writeln!(out, "  {e}")?;
                }
            }
        }
        if d.configs.is_empty() && d.errors.is_empty() {
            writeln!(out, "  no configs for driver {driver}")?;
        }
        if d.other_drivers > 0 {
            writeln!(
                out,
                "  ignored {} for other drivers",
                plural(d.other_drivers, "config", "configs")
            )?;
        }
    }
    if problems == 0 {
        writeln!(
            out,
            "{file}: valid ({} in {})",
            plural(configs, "config", "configs"),
            plural(docs.len(), "document", "documents")
        )
    } else {
        writeln!(out, "{file}: {}", plural(problems, "problem", "problems"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_on(text: &str, output: ValidateOutput, driver: &str) -> (i32, String) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("claim.yaml");
        std::fs::write(&file, text).unwrap();
        let args = ValidateArgs {
            file,
            driver_name: driver.to_string(),
            output,
        };
        let mut out = Vec::new();
        let code = run_to(&args, &mut out).unwrap();
        (code, String::from_utf8(out).unwrap())
    }

    const CLAIM: &str = "kind: ResourceClaim
metadata: {name: c, namespace: ns}
spec:
  devices:
    requests: [{name: nic}]
    config:
    - requests: [nic]
      opaque:
        driver: netclaim.dev
        parameters:
          interface: {addresses: [192.0.2.10/24]}
          routes: [{destination: 198.51.100.0/24, gateway: 192.0.2.1}]
";

    #[test]
    fn valid_file_exits_zero_with_valid_lines() {
        let (code, out) = run_on(CLAIM, ValidateOutput::Text, "netclaim.dev");
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("ResourceClaim ns/c (document 1)\n"), "{out}");
        assert!(
            out.contains("  spec.devices.config[0] (requests: nic): valid\n"),
            "{out}"
        );
        assert!(out.ends_with(": valid (1 config in 1 document)\n"), "{out}");
    }

    #[test]
    fn problems_exit_one_with_every_path() {
        let bad = CLAIM.replace("gateway: 192.0.2.1", "scope: 9");
        let (code, out) = run_on(
            &format!("{bad}---\ninterface: {{mtu: 1}}\n"),
            ValidateOutput::Text,
            "netclaim.dev",
        );
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("ResourceClaim ns/c (document 1): 1 problem\n"),
            "{out}"
        );
        assert!(
            out.contains("  spec.devices.config[0].opaque.parameters.routes[0].scope: must be 0"),
            "{out}"
        );
        assert!(out.contains("NetworkConfig (document 2): 1 problem\n  interface.mtu: must be between 68 and 65535"), "{out}");
        assert!(out.ends_with(": 2 problems\n"), "{out}");
    }

    #[test]
    fn json_output_carries_paths_and_parsed_configs() {
        let (code, out) = run_on(CLAIM, ValidateOutput::Json, "netclaim.dev");
        assert_eq!(code, 0);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["valid"], true);
        assert_eq!(
            v["documents"][0]["configs"][0]["config"]["interface"]["addresses"][0],
            "192.0.2.10/24"
        );

        let (code, out) = run_on(
            &CLAIM.replace("192.0.2.1}", "10.0.0.1}"),
            ValidateOutput::Json,
            "netclaim.dev",
        );
        assert_eq!(code, 1);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["problems"], 1);
        assert_eq!(
            v["documents"][0]["configs"][0]["errors"][0]["path"],
            "spec.devices.config[0].opaque.parameters.routes[0].gateway"
        );
    }

    #[test]
    fn other_driver_names_are_reported_as_ignored() {
        let (code, out) = run_on(CLAIM, ValidateOutput::Text, "other.dev");
        assert_eq!(code, 0);
        assert!(out.contains("no configs for driver other.dev"), "{out}");
        assert!(out.contains("ignored 1 config for other drivers"), "{out}");
    }

    #[test]
    fn empty_and_unreadable_files_fail() {
        let (code, out) = run_on("", ValidateOutput::Text, "netclaim.dev");
        assert_eq!(code, 1);
        assert!(out.contains("no documents"));
        let args = ValidateArgs {
            file: "/nonexistent/claim.yaml".into(),
            driver_name: "netclaim.dev".into(),
            output: ValidateOutput::Text,
        };
        assert!(run_to(&args, &mut Vec::new()).is_err());
    }
}
