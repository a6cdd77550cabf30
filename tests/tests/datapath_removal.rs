//! A device's data path whose removal (or attach) a killed driver cut short is removed
//! by the next attempt, and leaves nothing on the device, under the pin root or in the
//! kernel.
//!
//! Found by the real-containerd chaos campaign (seed 1796177661): the driver was killed
//! while unprepare unpinned a staged data path; the directory kept four of its maps,
//! among them the marker map `NC_COUNTERS`, so every later unprepare tried to open the
//! data path, failed on the missing `NC_HITS` ("`BPF_OBJ_GET` failed") and was refused
//! for good, and the next pod start found "already holds a data path".
//!
//! Each case attaches the project's programs (native XDP and TCX on a veth), then does
//! by hand what a removal does up to a random cut — in a random order, as an older
//! removal walked the directory, each link either unpinned only or detached first
//! with bpftool and then left pinned or unpinned — and then calls
//! [`AttachedDatapath::remove`] as unprepare, a stop and a rollback do.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use netclaim::datapath::{
    device::{AttachOptions, EgressMode, IngressMode},
    AttachedDatapath, DatapathKey, DatapathPolicy, PinLayout,
};
use netclaim_tests::{
    netenv::{veth, TestBpfRoot, TestNetns},
    traffic::kernel_bpf_ids,
};

const IF: &str = "rm0";

/// What a removal may do to one pin before the kill.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Unpinned (for a link: without detaching it first, so the kernel releases it).
    Unlinked,
    /// A link detached from its hook (bpftool) and left pinned: killed between the
    /// two steps of a removal.
    DetachedOnly,
    /// A link detached and then unpinned, as a removal does.
    DetachedAndUnlinked,
}

fn files_of(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn is_link(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("link_"))
}

fn cut(pin: &Path, how: Cut) {
    let detach = || {
        let out = std::process::Command::new("bpftool")
            .args(["link", "detach", "pinned"])
            .arg(pin)
            .output()
            .unwrap();
        assert!(out.status.success(), "bpftool link detach: {out:?}");
    };
    match how {
        Cut::Unlinked => std::fs::remove_file(pin).unwrap(),
        Cut::DetachedOnly if is_link(pin) => detach(),
        Cut::DetachedOnly | Cut::DetachedAndUnlinked => {
            if is_link(pin) {
                detach();
            }
            std::fs::remove_file(pin).unwrap();
        }
    }
}

/// Programs of ours on `IF` in `ns`: (XDP shown by `ip -d link`, TCX egress, TCX
/// ingress), as the kernel lists them.
fn on_device(ns: &TestNetns) -> (bool, usize, usize) {
    let shown = String::from_utf8_lossy(&ns.ip(&["-d", "link", "show", "dev", IF]).unwrap().stdout)
        .into_owned();
    let (e, i) = ns
        .open()
        .run(|| {
            use aya::programs::{tc::TcAttachType, SchedClassifier};
            let n = |t| SchedClassifier::query_tcx(IF, t).map_or(0, |(_, p)| p.len());
            (n(TcAttachType::Egress), n(TcAttachType::Ingress))
        })
        .unwrap();
    (shown.contains("prog/xdp"), e, i)
}

/// Waits until none of `ids` is loaded any more (the kernel frees programs, maps and
/// links a grace period or a workqueue after their last reference).
fn gone(ids: &[u32], which: fn() -> Vec<u32>, what: &str, case: &str) {
    let t = Instant::now();
    loop {
        let loaded = which();
        let left: Vec<u32> = ids.iter().copied().filter(|i| loaded.contains(i)).collect();
        if left.is_empty() {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{case}: {what} {left:?} still loaded 10 s after the removal"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Ids {
    progs: Vec<u32>,
    links: Vec<u32>,
}

fn attach(layout: &PinLayout, key: &DatapathKey, ns: &TestNetns) -> Ids {
    let dp = AttachedDatapath::attach(
        layout,
        key.clone(),
        &ns.open(),
        IF,
        &DatapathPolicy::default(),
        AttachOptions::default(),
    )
    .unwrap();
    let info = dp.info().unwrap();
    assert_eq!(info.ingress_mode, Some(IngressMode::XdpNative), "{info:?}");
    assert_eq!(info.egress_mode, Some(EgressMode::Tcx), "{info:?}");
    Ids {
        progs: [info.egress_program_id, info.ingress_program_id]
            .into_iter()
            .flatten()
            .collect(),
        links: [info.egress_link_id, info.ingress_link_id]
            .into_iter()
            .flatten()
            .collect(),
    }
}

/// One kill: pins cut in `order` up to `k`, then the next removal; checks that nothing
/// is left and that the same device takes a data path again.
fn kill_then_remove(
    layout: &PinLayout,
    bpf: &TestBpfRoot,
    ns: &TestNetns,
    case: &str,
    plan: impl FnOnce(Vec<PathBuf>) -> Vec<(PathBuf, Cut)>,
) {
    let key = DatapathKey::new("default", "cut-short", IF).unwrap();
    let ids = attach(layout, &key, ns);
    let dir = layout.device_dir(&key);
    for (pin, how) in plan(files_of(&dir)) {
        cut(&pin, how);
    }
    AttachedDatapath::remove(layout, &key, Some(&ns.open()))
        .unwrap_or_else(|e| panic!("{case}: the removal after the kill: {e}"));
    assert!(!dir.exists(), "{case}: {} still there", dir.display());
    assert!(
        bpf.leftovers().is_empty(),
        "{case}: pins left: {:?}",
        bpf.leftovers()
    );
    assert_eq!(
        on_device(ns),
        (false, 0, 0),
        "{case}: programs left on {IF}"
    );
    gone(&ids.links, || kernel_bpf_ids().2, "links", case);
    gone(&ids.progs, || kernel_bpf_ids().0, "programs", case);
    // Removing it again is not an error, and the device takes a data path again.
    AttachedDatapath::remove(layout, &key, Some(&ns.open())).unwrap();
    let again = attach(layout, &key, ns);
    AttachedDatapath::remove(layout, &key, Some(&ns.open())).unwrap();
    gone(&again.links, || kernel_bpf_ids().2, "links", case);
    assert!(bpf.leftovers().is_empty());
}

fn stage(tag: &str) -> (TestNetns, TestNetns) {
    let a = TestNetns::new(&format!("{tag}a")).unwrap();
    let w = TestNetns::new(&format!("{tag}w")).unwrap();
    veth(&a, IF, &w, "rmw").unwrap();
    a.ip(&["link", "set", IF, "up"]).unwrap();
    (a, w)
}

#[test]
fn the_kill_the_chaos_campaign_found_is_finished_by_the_next_removal() {
    let (a, _w) = stage("rmc");
    let bpf = TestBpfRoot::new("rmc").unwrap();
    let layout = PinLayout::new(bpf.path());
    // What the campaign's driver left: these four maps, nothing else.
    let kept = ["NC_RT6_A", "NC_COUNTERS", "NC_LOC6_B", "NC_SLOTS"];
    kill_then_remove(&layout, &bpf, &a, "the campaign's cut", |files| {
        files
            .into_iter()
            .filter(|f| !kept.iter().any(|k| f.ends_with(k)))
            .map(|f| (f, Cut::Unlinked))
            .collect()
    });
}

#[test]
fn a_removal_cut_short_anywhere_is_finished_by_the_next() {
    let (a, _w) = stage("rma");
    let bpf = TestBpfRoot::new("rma").unwrap();
    let layout = PinLayout::new(bpf.path());
    let seed = std::env::var("NETCLAIM_CUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut cases = 0;
    // Every cut point of the removal's own order (links, other pins, marker), then
    // random orders and cut points.
    for k in 0..=40 {
        let case = format!("seed {seed}, in order, {k} pins cut");
        let mut seen = None;
        kill_then_remove(&layout, &bpf, &a, &case, |mut files| {
            files.sort_by_key(|f| (!is_link(f), f.ends_with("NC_COUNTERS")));
            seen = Some(files.len());
            files
                .into_iter()
                .take(k)
                .map(|f| (f, Cut::DetachedAndUnlinked))
                .collect()
        });
        cases += 1;
        if seen.is_some_and(|n| k >= n) {
            break;
        }
    }
    for i in 0..12 {
        let case = format!("seed {seed}, random order {i}");
        kill_then_remove(&layout, &bpf, &a, &case, |mut files| {
            rng.shuffle(&mut files);
            let k = rng.usize(0..=files.len());
            files
                .into_iter()
                .take(k)
                .map(|f| {
                    let how = [Cut::Unlinked, Cut::DetachedOnly, Cut::DetachedAndUnlinked]
                        [rng.usize(0..3)];
                    (f, how)
                })
                .collect()
        });
        cases += 1;
    }
    println!("seed {seed}: {cases} cut-short removals finished");
}

/// An attach cut short leaves maps pinned without the marker: the next attach of the
/// same device clears them instead of colliding with them.
#[test]
fn an_attach_over_the_leftovers_of_a_cut_short_one_succeeds() {
    let (a, _w) = stage("rmp");
    let bpf = TestBpfRoot::new("rmp").unwrap();
    let layout = PinLayout::new(bpf.path());
    let key = DatapathKey::new("default", "cut-short", IF).unwrap();
    let first = attach(&layout, &key, &a);
    let dir = layout.device_dir(&key);
    // Killed after some maps were pinned and before the marker and the links were.
    for f in files_of(&dir) {
        let keep = ["NC_SLOTS", "NC_META", "NC_RT4_A"]
            .iter()
            .any(|k| f.ends_with(k));
        if !keep {
            cut(&f, Cut::Unlinked);
        }
    }
    gone(
        &first.links,
        || kernel_bpf_ids().2,
        "links",
        "cut-short attach",
    );
    let second = attach(&layout, &key, &a);
    assert_eq!(on_device(&a), (true, 1, 0), "the second attach is on {IF}");
    AttachedDatapath::remove(&layout, &key, Some(&a.open())).unwrap();
    gone(
        &second.links,
        || kernel_bpf_ids().2,
        "links",
        "second attach",
    );
    assert!(bpf.leftovers().is_empty(), "{:?}", bpf.leftovers());
    assert_eq!(on_device(&a), (false, 0, 0));
}
