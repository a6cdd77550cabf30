//! Network namespaces, links and bpffs directories for tests, each removed by `Drop`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call, e.g. `nc3a1f02`. Interface names
/// must stay within 15 bytes, so callers add at most a few characters.
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{:x}{n:x}", std::process::id() & 0xffff)
}

/// Fails the test early with a clear message when not running as root.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "kernel tests need root (run them through `cargo xtask test`)"
    );
}

/// Runs a command and fails with its stderr when it does not succeed.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// A network namespace created with `ip netns add`, deleted on drop.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
    path: PathBuf,
}

impl TestNetns {
    pub fn new(tag: &str) -> Result<Self> {
        require_root();
        let name = format!("nct-{}", unique(tag));
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self {
            path: PathBuf::from("/var/run/netns").join(&name),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the namespace as the driver does.
    pub fn open(&self) -> netclaim::netns::Netns {
        netclaim::netns::Netns::open(&self.path).expect("open test netns")
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs a program inside the namespace (network namespace only, so bpffs and
    /// the rest of the mount tree stay shared).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        run(Command::new("nsenter")
            .arg(format!("--net={}", self.path.display()))
            .arg(program)
            .args(args))
    }

    /// A `Command` that will run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path.display())).arg(program);
        c
    }

    /// ifindex of a link inside the namespace.
    pub fn ifindex(&self, link: &str) -> Result<u32> {
        let out = self.ip(&["-o", "link", "show", "dev", link])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let idx = text
            .split(':')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .with_context(|| format!("no ifindex in {text:?}"))?;
        Ok(idx)
    }

    /// MAC address of a link inside the namespace.
    pub fn mac(&self, link: &str) -> Result<String> {
        let out = self.ip(&["-o", "link", "show", "dev", link])?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_string)
            .with_context(|| format!("no MAC in {text:?}"))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Creates a veth pair with one end in each namespace, both up.
pub fn veth(a: &TestNetns, a_name: &str, b: &TestNetns, b_name: &str) -> Result<()> {
    a.ip(&[
        "link",
        "add",
        a_name,
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_name, "up"])?;
    b.ip(&["link", "set", b_name, "up"])?;
    Ok(())
}

/// Every file (not directory) below `dir`, recursively; nothing if it is missing.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_below(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A directory on bpffs for one test's pins, removed recursively on drop.
#[derive(Debug)]
pub struct TestBpfRoot {
    path: PathBuf,
}

impl TestBpfRoot {
    pub fn new(tag: &str) -> Result<Self> {
        require_root();
        let path = PathBuf::from("/sys/fs/bpf").join(format!("nct-{}", unique(tag)));
        std::fs::create_dir_all(&path).with_context(|| {
            format!(
                "creating {} (is bpffs mounted? `cargo xtask setup` mounts it)",
                path.display()
            )
        })?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every file below the root (pins left behind).
    pub fn leftovers(&self) -> Vec<PathBuf> {
        files_below(&self.path)
    }
}

impl Drop for TestBpfRoot {
    fn drop(&mut self) {
        fn remove(dir: &Path) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        remove(&p);
                    } else {
                        let _ = std::fs::remove_file(&p);
                    }
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        remove(&self.path);
    }
}

/// A cgroup v2 directory standing in for a pod's cgroup, removed on drop (processes
/// put in it must have exited by then).
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    pub fn new(tag: &str) -> Result<Self> {
        require_root();
        let root = netclaim::datapath::guard::cgroup2_mount()?;
        let path = root.join(format!("nct-{}", unique(tag)));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name a runtime gives this cgroup as a pod's cgroup parent: the path below the
    /// cgroup v2 root, as cgroupfs names it (`/nct-…`).
    pub fn runtime_name(&self) -> Result<String> {
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .context("cgroup name")?;
        Ok(format!("/{name}"))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}
