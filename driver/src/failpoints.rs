//! Fail points: named places where a test build of the driver can be told to fail the
//! Nth call, so crash-safety tests (`cargo xtask chaos`) can see what a failed netlink
//! request or bpf operation leaves behind.
//!
//! Compiled in only with the cargo feature `failpoints` (which the tests crate turns on
//! for the binary it runs); without it [`fires`] is a constant `None`, the `fail` crate
//! is not linked and no environment variable or file is read. The image is built
//! without it.
//!
//! Four fail points exist:
//! * [`NETLINK`] (`netlink-request`): every request through
//!   [`crate::netns::netlink::NlSocket::request_raw`], the one choke point of the
//!   driver's own netlink traffic (moves, configuration, restore, ethtool);
//! * [`BPF`] (`bpf-op`): every program attach, link creation, map update and pin of
//!   the data path (`datapath::attach`, `datapath::maps`, `datapath::pins`,
//!   `datapath::device`);
//! * [`JOURNAL`] (`journal-write`): every record of the checkpoint's write-ahead
//!   journal (`state::store::journal`), so a test can see what happens when only the
//!   slow path (both checkpoint copies) is left;
//! * [`SETTLE`] (`checkpoint-settle`): the flusher writing the journal records that
//!   settled placements (`InPod`, `Home`) owe; when it fires they stay owed, so a test
//!   can kill the driver after a hook answered and before its settling record is
//!   durable.
//!
//! They are configured with the `fail` crate's action syntax: `FAILPOINTS` in the
//! environment at start (`netlink-request=5*off->1*return->off` fails the 6th request),
//! and, when `NETCLAIM_FAILPOINTS_FILE` names a file, again each time that file's
//! content changes (polled every 10 ms), so a test can arm a fail point once the driver
//! is up and count calls from that moment. After applying a file the driver writes
//! `<file>.applied` (the applied text) and then, while calls happen, `<file>.hits`
//! (`netlink-request=N bpf-op=M`, calls counted since the last apply).
//!
//! This module owns the fail point names, their counters and the control file; the
//! call sites own what an injected failure looks like (an error of their own type that
//! carries the text [`fires`] returns).

/// The fail point in front of every netlink request.
pub const NETLINK: &str = "netlink-request";
/// The fail point in front of every bpf attach, link, map update and pin.
pub const BPF: &str = "bpf-op";
/// The fail point in front of every record of the checkpoint's journal.
pub const JOURNAL: &str = "journal-write";
/// The fail point in front of the flusher's write of owed settling records.
pub const SETTLE: &str = "checkpoint-settle";

/// Whether fail point `name` fails this call; `Some(text)` names the fail point, for
/// the caller's error. Counts the call (test builds only).
#[inline]
pub fn fires(name: &'static str) -> Option<String> {
    #[cfg(feature = "failpoints")]
    {
        imp::fires(name)
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        None
    }
}

/// Whether this build has fail points.
pub const fn compiled_in() -> bool {
    cfg!(feature = "failpoints")
}

/// Applies `FAILPOINTS` and starts watching `NETCLAIM_FAILPOINTS_FILE` (test builds
/// only; a no-op otherwise). Call once at start, before any work.
pub fn setup() {
    #[cfg(feature = "failpoints")]
    imp::setup();
}

/// Replaces every fail point of this process with `spec` (`name=actions;…`), for
/// tests that call the library directly; `Err` without the feature or on a bad spec.
pub fn configure(spec: &str) -> Result<(), String> {
    #[cfg(feature = "failpoints")]
    {
        imp::apply(spec)
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = spec;
        Err("built without the failpoints feature".into())
    }
}

/// Parses `name=actions;name=actions` into pairs; `Err` names the bad entry.
pub fn parse_spec(spec: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, entry) in spec.split(';').map(str::trim).enumerate() {
        if entry.is_empty() {
            continue;
        }
        let Some((name, actions)) = entry.split_once('=') else {
            return Err(format!("entry {i} {entry:?}: expected name=actions"));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("entry {i} {entry:?}: empty fail point name"));
        }
        out.push((name.to_string(), actions.trim().to_string()));
    }
    Ok(out)
}

#[cfg(feature = "failpoints")]
mod imp {
    use std::{
        path::{Path, PathBuf},
        sync::atomic::{AtomicU64, Ordering},
        time::Duration,
    };

    static NETLINK_HITS: AtomicU64 = AtomicU64::new(0);
    static BPF_HITS: AtomicU64 = AtomicU64::new(0);

    fn counter(name: &str) -> Option<&'static AtomicU64> {
        match name {
            super::NETLINK => Some(&NETLINK_HITS),
            super::BPF => Some(&BPF_HITS),
            _ => None,
        }
    }

    pub(super) fn fires(name: &'static str) -> Option<String> {
        if let Some(c) = counter(name) {
            c.fetch_add(1, Ordering::AcqRel);
        }
        eval(name)
    }

    fn eval(name: &'static str) -> Option<String> {
        fail::fail_point!(name, |arg: Option<String>| {
            let n = counter(name)
                .map(|c| c.load(Ordering::Acquire))
                .unwrap_or(0);
            tracing::warn!(failpoint = name, call = n, "fail point fired");
            Some(match arg {
                Some(a) if !a.is_empty() => format!("injected by fail point {name} ({a})"),
                _ => format!("injected by fail point {name} at call {n}"),
            })
        });
        None
    }

    /// Replaces every configured fail point with `spec`.
    pub(super) fn apply(spec: &str) -> Result<(), String> {
        let pairs = super::parse_spec(spec)?;
        for (name, _) in fail::list() {
            fail::remove(name);
        }
        for c in [&NETLINK_HITS, &BPF_HITS] {
            c.store(0, Ordering::Release);
        }
        for (name, actions) in pairs {
            fail::cfg(name.clone(), &actions).map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(())
    }

    pub(super) fn setup() {
        if let Ok(spec) = std::env::var("FAILPOINTS") {
            match apply(&spec) {
                Ok(()) => tracing::warn!(spec, "fail points armed from FAILPOINTS"),
                Err(e) => tracing::error!(spec, "FAILPOINTS ignored: {e}"),
            }
        }
        let Some(file) = std::env::var_os("NETCLAIM_FAILPOINTS_FILE").map(PathBuf::from) else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("failpoints".into())
            .spawn(move || watch(&file));
        if let Err(e) = spawned {
            tracing::error!("fail point control file not watched: {e}");
        }
    }

    fn sibling(file: &Path, suffix: &str) -> PathBuf {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    }

    fn watch(file: &Path) {
        let (applied, hits) = (sibling(file, ".applied"), sibling(file, ".hits"));
        let mut current: Option<String> = None;
        let mut reported = (u64::MAX, u64::MAX);
        loop {
            if let Ok(spec) = std::fs::read_to_string(file) {
                if current.as_deref() != Some(spec.as_str()) {
                    match apply(&spec) {
                        Ok(()) => {
                            tracing::warn!(
                                spec = spec.trim(),
                                "fail points armed from the control file"
                            );
                            reported = (u64::MAX, u64::MAX);
                            if let Err(e) = std::fs::write(&applied, &spec) {
                                tracing::error!(path = %applied.display(), "{e}");
                            }
                        }
                        Err(e) => tracing::error!(spec, "fail point control file ignored: {e}"),
                    }
                    current = Some(spec);
                }
            }
            let now = (
                NETLINK_HITS.load(Ordering::Acquire),
                BPF_HITS.load(Ordering::Acquire),
            );
            if now != reported && current.is_some() {
                let text = format!("{}={} {}={}\n", super::NETLINK, now.0, super::BPF, now.1);
                if std::fs::write(&hits, text).is_ok() {
                    reported = now;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_is_split_into_names_and_actions_and_bad_entries_are_named() {
        assert_eq!(
            parse_spec(" netlink-request=3*off->1*return->off ; bpf-op=off;").unwrap(),
            vec![
                (NETLINK.to_string(), "3*off->1*return->off".to_string()),
                (BPF.to_string(), "off".to_string())
            ]
        );
        assert!(parse_spec("").unwrap().is_empty());
        let err = parse_spec("bpf-op=off;oops").unwrap_err();
        assert!(err.contains("entry 1") && err.contains("oops"), "{err}");
        assert!(parse_spec("=return").unwrap_err().contains("empty"));
    }

    /// The Nth call fails once, the others pass, and the failure names the point.
    #[cfg(feature = "failpoints")]
    #[test]
    fn the_nth_call_fires_once() {
        fail::cfg(NETLINK, "2*off->1*return->off").unwrap();
        let fired: Vec<Option<String>> = (0..5).map(|_| fires(NETLINK)).collect();
        fail::remove(NETLINK);
        assert_eq!(fired.iter().filter(|f| f.is_some()).count(), 1, "{fired:?}");
        let text = fired[2].as_deref().expect("the third call fires");
        assert!(text.contains(NETLINK), "{text}");
    }
}
