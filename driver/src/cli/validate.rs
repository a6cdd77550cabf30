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
    let docs = parse_documents(&text, &args.driver_name).with_context(|| format!("{shown}"))?;
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
