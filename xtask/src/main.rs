//! Project tasks, run as `cargo xtask <task>`:
//!
//! * `setup` — installs what the build and tests need (idempotent, seconds when done);
//! * `build-ebpf [--debug]` — builds `ebpf/` with Debian's rustc and bpf-linker and
//!   leaves the object at `target/ebpf/netclaim.bpf.o`, where the driver embeds it;
//! * `test` — setup, build-ebpf, then every unit and integration test, as root;
//! * `bench <datapath|netns|control-plane|pod-start|move-gaps>` — one benchmark, printed and
//!   written to `bench/results/<name>.json`;
//! * `demo` — the end-to-end walkthrough;
//! * `chaos [--faults N] [--seed S] [--pods P] [--mix M]` — fault injection against the
//!   real binary (kill -9, fail points, full disk, corrupt checkpoint);
//! * `fuzz [--inputs N]` — the hostile-input targets in release mode (default
//!   1,000,000 inputs each), written to `bench/results/fuzz.json`;
//! * `image [--out PATH] [--tag NAME]` — the driver's OCI image archive (no engine,
//!   no base image), by default `target/image/netclaim-oci.tar`.
//!
//! The machine recipe (why Debian's compiler, why bpf-linker with LLVM 22) is in
//! ../shared/TOOLCHAIN.md; this file is its executable form.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod fuzz;
mod image;
mod oci;
mod peers;

/// Debian packages the project needs (compiler for eBPF, its std sources, LLVM for
/// bpf-linker, and the tools tests and benchmarks call).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "bpftool",
    "iproute2",
    "iputils-ping",
    "iperf3",
    "ethtool",
    "util-linux",
    "nftables",
    // A real DHCP server for the DHCP kernel tests (tests/src/dhcp_server.rs).
    "dnsmasq-base",
    // The real-runtime tier: containerd's runtime and the pods' network.
    "runc",
    "containernetworking-plugins",
    // The sandbox image's pause program is compiled static.
    "gcc",
    "libc6-dev",
    // The manifest validator's virtual environment (VALIDATOR_VENV).
    "python3-venv",
    // A grpcio client for the kubelet test of non-grpc-go :authority (tests/grpcio).
    "python3-grpcio",
    // The CA bundle the driver's image carries (xtask/src/image.rs).
    "ca-certificates",
];
/// `kubernetes-validate` (the Kubernetes OpenAPI schemas of 1.34–1.37) for the manifest
/// tests, in its own venv of Debian's Python (not whatever `python3` is first on PATH).
const VALIDATOR_VENV: &str = "/opt/netclaim/venv";
const VALIDATOR_PACKAGE: &str = "kubernetes-validate";
const VALIDATOR_VERSION: &str = "1.37.0";
const DEBIAN_PYTHON: &str = "/usr/bin/python3";
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_ROOT: &str = "/opt/netclaim/bpf-linker";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library/core";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces and mount bpffs (idempotent).
    Setup,
    /// Build the eBPF programs.
    BuildEbpf {
        /// Build the dev profile instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// Setup, build the eBPF object, run all tests (needs root).
    Test {
        /// Extra arguments passed to `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run one benchmark.
    Bench {
        /// datapath, netns, control-plane or pod-start.
        name: String,
    },
    /// Run the end-to-end demo.
    Demo,
    /// Seeded fault injection (kill -9) against the real binary; ends with
    /// `chaos: seed=S faults=N lost=L leaked=K mismatched=M`.
    Chaos {
        /// Faults to inject (at least 200 for the full campaign).
        #[arg(long, default_value_t = 200)]
        faults: usize,
        /// Seed of the schedule (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
        /// Pods, each with a claim of two devices (1–3 take their steps at once).
        #[arg(long, default_value_t = 4)]
        pods: usize,
        /// Weights of the fault kinds (default
        /// `kill=50,failpoint=30,full-disk=10,corrupt=10`; `corrupt-both=N` adds rounds
        /// that damage both copies of the checkpoint).
        #[arg(long)]
        mix: Option<String>,
    },
    /// Hostile-input targets in release mode; ends with bench/results/fuzz.json.
    Fuzz {
        /// Inputs per target (the checkpoint-file target takes one file per 100).
        #[arg(long, default_value_t = 1_000_000)]
        inputs: u64,
    },
    /// Build the driver's OCI image archive (no container engine, no base image).
    Image {
        /// Where the archive goes (default target/image/netclaim-oci.tar).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Image name `repo:tag`, or only a tag for ghcr.io/netclaim/netclaim
        /// (default: the workspace version).
        #[arg(long)]
        tag: Option<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::BuildEbpf { debug } => build_ebpf(debug),
        Task::Test { args } => test(&args),
        Task::Bench { name } => bench(&name),
        Task::Demo => demo(),
        Task::Chaos {
            faults,
            seed,
            pods,
            mix,
        } => chaos(faults, seed, pods, mix),
        Task::Fuzz { inputs } => {
            // The driver embeds the eBPF object.
            build_ebpf(false)?;
            fuzz::run(&root(), &host_cargo(), inputs)
        }
        Task::Image { out, tag } => image::build(&root(), out, tag.as_deref()),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo that runs xtask (rustup's stable); used for everything but the eBPF crate.
fn host_cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn apt_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn bpf_linker() -> PathBuf {
    Path::new(BPF_LINKER_ROOT).join("bin/bpf-linker")
}

fn bpf_linker_ok() -> bool {
    Command::new(bpf_linker())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
        })
        .unwrap_or(false)
}

fn validator_ok(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == VALIDATOR_VERSION)
        .unwrap_or(false)
}

fn setup() -> Result<()> {
    let started = Instant::now();
    if !is_root() {
        bail!("cargo xtask setup installs packages and mounts bpffs: run it as root");
    }
    let mut present = Vec::new();
    let mut installed = Vec::new();

    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let ok = apt_installed(p);
            if ok {
                present.push(format!("apt {p}"));
            }
            !ok
        })
        .collect();
    if !missing.is_empty() {
        println!("[setup] installing Debian packages: {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing))?;
        installed.extend(missing.iter().map(|p| format!("apt {p}")));
    }

    if bpf_linker_ok() {
        present.push(format!(
            "bpf-linker {BPF_LINKER_VERSION} ({})",
            bpf_linker().display()
        ));
    } else {
        println!(
            "[setup] building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 into {BPF_LINKER_ROOT} (about a minute)"
        );
        run(Command::new(host_cargo())
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env_remove("RUSTUP_TOOLCHAIN")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
                "--root",
                BPF_LINKER_ROOT,
            ]))?;
        installed.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
    }

    if bpffs_mounted() {
        present.push("bpffs on /sys/fs/bpf".into());
    } else {
        std::fs::create_dir_all("/sys/fs/bpf").ok();
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
        installed.push("bpffs mounted on /sys/fs/bpf".into());
    }
    std::fs::create_dir_all("/var/run/netns").ok();
    let validator = Path::new(VALIDATOR_VENV).join("bin/kubernetes-validate");
    if validator_ok(&validator) {
        present.push(format!(
            "{VALIDATOR_PACKAGE} {VALIDATOR_VERSION} ({VALIDATOR_VENV})"
        ));
    } else {
        println!(
            "[setup] installing {VALIDATOR_PACKAGE}=={VALIDATOR_VERSION} into {VALIDATOR_VENV}"
        );
        run(Command::new(DEBIAN_PYTHON).args(["-m", "venv", VALIDATOR_VENV]))?;
        run(
            Command::new(Path::new(VALIDATOR_VENV).join("bin/pip")).args([
                "install",
                "-q",
                &format!("{VALIDATOR_PACKAGE}=={VALIDATOR_VERSION}"),
            ]),
        )?;
        if !validator_ok(&validator) {
            bail!(
                "{} does not report {VALIDATOR_VERSION} after installing it",
                validator.display()
            );
        }
        installed.push(format!("{VALIDATOR_PACKAGE} {VALIDATOR_VERSION}"));
    }
    for line in [
        peers::install_containerd(&root())?,
        peers::build_pause_image(&root())?,
    ] {
        match line.split_once(' ') {
            Some(("present:", what)) => present.push(what.trim().to_string()),
            Some((_, what)) => installed.push(what.trim().to_string()),
            None => installed.push(line),
        }
    }

    for p in &present {
        println!("[setup] present:   {p}");
    }
    for p in &installed {
        println!("[setup] installed: {p}");
    }
    println!("[setup] done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn build_ebpf(debug: bool) -> Result<()> {
    let started = Instant::now();
    for (path, what) in [
        (DEBIAN_RUSTC, "Debian's rustc (package rustc-web)"),
        (DEBIAN_CARGO, "Debian's cargo (package cargo-web)"),
        (
            DEBIAN_RUST_SRC,
            "Debian's Rust std sources (package rust-web-src)",
        ),
    ] {
        if !Path::new(path).exists() {
            bail!("{what} is missing ({path}); install it with: cargo xtask setup");
        }
    }
    if !bpf_linker_ok() {
        bail!(
            "bpf-linker {BPF_LINKER_VERSION} is missing ({}); install it with: cargo xtask setup",
            bpf_linker().display()
        );
    }
    let root = root();
    let ebpf_dir = root.join("ebpf");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![Path::new(BPF_LINKER_ROOT).join("bin")];
    paths.extend(std::env::split_paths(&path));
    let mut cmd = Command::new(DEBIAN_CARGO);
    cmd.current_dir(&ebpf_dir)
        .env("PATH", std::env::join_paths(paths)?)
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1");
    // The outer (rustup) cargo exports its own settings; none may leak into this build.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || k.starts_with("RUSTUP_")
            || k == "RUSTFLAGS"
            || k == "RUSTDOC"
            || k == "CARGO"
        {
            cmd.env_remove(&k);
        }
    }
    cmd.args(["build", "--locked"]);
    if !debug {
        cmd.arg("--release");
    }
    println!(
        "[build-ebpf] building ebpf/ ({} profile) with {DEBIAN_RUSTC}",
        if debug { "dev" } else { "release" }
    );
    run(&mut cmd)?;
    let profile = if debug { "debug" } else { "release" };
    let built = ebpf_dir
        .join("target/bpfel-unknown-none")
        .join(profile)
        .join("netclaim");
    let dest_dir = root.join("target/ebpf");
    std::fs::create_dir_all(&dest_dir)?;
    let dest = dest_dir.join("netclaim.bpf.o");
    let new = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    // Only rewrite when changed, so the driver is not rebuilt for nothing.
    if std::fs::read(&dest).ok().as_deref() != Some(new.as_slice()) {
        std::fs::write(&dest, &new)?;
    }
    println!(
        "[build-ebpf] {} ({} bytes) in {:.1}s",
        dest.display(),
        new.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the test suite creates network namespaces and loads eBPF programs: run it as root");
    }
    let started = Instant::now();
    setup()?;
    build_ebpf(false)?;
    // The end-to-end tests start the real `netclaim` binary.
    // With the fail points the chaos test arms (the tests crate turns them on too, so
    // the workspace test build makes the same binary; the image has none).
    println!("[test] cargo build -p netclaim --bins --features failpoints");
    run(Command::new(host_cargo()).current_dir(root()).args([
        "build",
        "--locked",
        "-p",
        "netclaim",
        "--bins",
        "--features",
        "failpoints",
    ]))?;
    // The DaemonSet test (tests/tests/daemonset.rs) runs the driver's image.
    image::build(&root(), None, None)?;
    // --no-fail-fast: every test binary runs even when an earlier one fails, so one
    // run reports every failure.
    println!("[test] cargo test --workspace --no-fail-fast");
    let mut cmd = Command::new(host_cargo());
    cmd.current_dir(root())
        .args(["test", "--workspace", "--locked", "--no-fail-fast"]);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    run(&mut cmd)?;
    println!(
        "[test] all tests passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn bench(name: &str) -> Result<()> {
    const KNOWN: &[&str] = &[
        "datapath",
        "netns",
        "control-plane",
        "pod-start",
        "move-gaps",
    ];
    if !KNOWN.contains(&name) {
        bail!("unknown benchmark {name:?}; one of: {}", KNOWN.join(", "));
    }
    if !is_root() {
        bail!("benchmarks use network namespaces and eBPF: run them as root");
    }
    setup()?;
    build_ebpf(false)?;
    let bin = format!("bench-{name}");
    let tests_dir = root().join("tests");
    let has_bin = tests_dir.join("src/bin").join(format!("{bin}.rs")).exists();
    if !has_bin {
        bail!("benchmark {name:?} has no binary (tests/src/bin/{bin}.rs is missing)");
    }
    std::fs::create_dir_all(root().join("bench/results"))?;
    if name == "pod-start" {
        // This bench drives the real binaries, found next to the bench (target/release):
        // the driver, and the CNI plugin its real-containerd part chains.
        run(Command::new(host_cargo()).current_dir(root()).args([
            "build",
            "--release",
            "--locked",
            "-p",
            "netclaim",
            "--bins",
        ]))?;
    }
    // Same allocator setting as the DaemonSet (deploy/netclaim.yaml).
    run(Command::new(host_cargo())
        .current_dir(root())
        .env("MALLOC_ARENA_MAX", "2")
        .args([
            "run",
            "--release",
            "--locked",
            "-p",
            "netclaim-tests",
            "--bin",
            &bin,
            "--",
            "--out",
            &root()
                .join("bench/results")
                .join(format!("{name}.json"))
                .to_string_lossy(),
        ]))
}

fn chaos(faults: usize, seed: Option<u64>, pods: usize, mix: Option<String>) -> Result<()> {
    if !is_root() {
        bail!("chaos kills and restarts the driver in network namespaces: run it as root");
    }
    setup()?;
    build_ebpf(false)?;
    // Fail points compiled in: chaos arms them (driver/src/failpoints.rs).
    run(Command::new(host_cargo()).current_dir(root()).args([
        "build",
        "--locked",
        "-p",
        "netclaim",
        "--bin",
        "netclaim",
        "--features",
        "failpoints",
    ]))?;
    let mut cmd = Command::new(host_cargo());
    cmd.current_dir(root())
        .env("NETCLAIM_BIN", root().join("target/debug/netclaim"))
        .args([
            "run",
            "--locked",
            "-q",
            "-p",
            "netclaim-tests",
            "--bin",
            "chaos",
            "--",
        ])
        .args(["--faults", &faults.to_string(), "--pods", &pods.to_string()]);
    if let Some(seed) = seed {
        cmd.args(["--seed", &seed.to_string()]);
    }
    if let Some(mix) = mix {
        cmd.args(["--mix", &mix]);
    }
    run(&mut cmd)
}

fn demo() -> Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root");
    }
    let started = Instant::now();
    setup()?;
    build_ebpf(false)?;
    println!("[demo] building netclaim and the demo (stand-ins included)");
    run(Command::new(host_cargo()).current_dir(root()).args([
        "build",
        "--locked",
        "-p",
        "netclaim",
        "-p",
        "netclaim-tests",
        "--bin",
        "netclaim",
        "--bin",
        "demo",
    ]))?;
    println!("[demo] ready in {:.1}s", started.elapsed().as_secs_f64());
    let demo = root().join("target/debug/demo");
    run(Command::new(demo).env("NETCLAIM_BIN", root().join("target/debug/netclaim")))
}
