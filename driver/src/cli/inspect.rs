//! `netclaim inspect`: every attached data path, read from the pins under `--bpf-root`
//! and from the kernel — never from the daemon's memory, so it works while the daemon
//! is down. Namespace inodes are resolved to names under `/var/run/netns`.

use std::{os::unix::fs::MetadataExt, path::PathBuf};

use clap::Args;
use serde::Serialize;

use crate::datapath::{
    device::DatapathInfo, AttachedDatapath, CounterSnapshot, DatapathKey, Enforcement, PinLayout,
};

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Root of the driver's pins on bpffs.
    #[arg(long, default_value = crate::DEFAULT_BPF_ROOT)]
    pub bpf_root: PathBuf,
    /// Only this claim (NAMESPACE/NAME).
    #[arg(long)]
    pub claim: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: InspectOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InspectOutput {
    Table,
    Json,
}

/// One device as `inspect` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InspectedDevice {
    pub claim: String,
    pub device: String,
    /// `/var/run/netns/<name>` when the namespace is bind-mounted there.
    pub netns: Option<String>,
    pub interface: Option<String>,
    #[serde(flatten)]
    pub datapath: DatapathInfo,
    pub counters: CounterSnapshot,
}

/// Reads every device under the layout (optionally one claim's).
pub fn inspect(layout: &PinLayout, claim: Option<&str>) -> Vec<Result<InspectedDevice, String>> {
    let keys: Vec<DatapathKey> = layout
        .devices()
        .into_iter()
        .filter(|k| claim.is_none_or(|c| format!("{}/{}", k.claim_namespace, k.claim_name) == c))
        .collect();
    keys.into_iter()
        .map(|key| {
            let dp = AttachedDatapath::adopt(layout, key.clone()).map_err(|e| e.to_string())?;
            let info = dp.info().map_err(|e| e.to_string())?;
            let counters = dp.counters().map_err(|e| e.to_string())?;
            let netns = netns_name(info.netns_inode);
            let interface = netns
                .as_deref()
                .and_then(|ns| interface_name(ns, info.ifindex));
            Ok(InspectedDevice {
                claim: format!("{}/{}", key.claim_namespace, key.claim_name),
                device: key.device,
                netns,
                interface,
                datapath: info,
                counters,
            })
        })
        .collect()
}

fn netns_name(inode: u64) -> Option<String> {
    if inode == 0 {
        return None;
    }
    let entries = std::fs::read_dir("/var/run/netns").ok()?;
    entries
        .filter_map(Result::ok)
        .find(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == inode))
        .map(|e| e.path().display().to_string())
}

fn interface_name(netns: &str, ifindex: u32) -> Option<String> {
    let ns = crate::netns::Netns::open(netns).ok()?;
    ns.run(move || crate::netns::ifname_of(ifindex))
        .ok()
        .flatten()
}

pub fn run(args: InspectArgs) -> anyhow::Result<i32> {
    let layout = PinLayout::new(&args.bpf_root);
    if !args.bpf_root.exists() {
        anyhow::bail!(
            "{} does not exist: no data path has been attached with this --bpf-root",
            args.bpf_root.display()
        );
    }
    let results = inspect(&layout, args.claim.as_deref());
    let mut failed = false;
    match args.output {
        InspectOutput::Json => {
            let ok: Vec<&InspectedDevice> =
                results.iter().filter_map(|r| r.as_ref().ok()).collect();
            println!("{}", serde_json::to_string_pretty(&ok)?);
            for e in results.iter().filter_map(|r| r.as_ref().err()) {
                eprintln!("netclaim inspect: {e}");
                failed = true;
            }
        }
        InspectOutput::Table => {
            if results.is_empty() {
                println!("no data paths under {}", args.bpf_root.display());
            }
            for r in &results {
                match r {
                    Ok(d) => print_device(d),
                    Err(e) => {
                        eprintln!("netclaim inspect: {e}");
                        failed = true;
                    }
                }
            }
        }
    }
    Ok(i32::from(failed))
}

fn print_device(d: &InspectedDevice) {
    let i = &d.datapath;
    println!("claim {}  device {}", d.claim, d.device);
    println!(
        "  netns      {}  interface {} (ifindex {})",
        d.netns.as_deref().unwrap_or("?"),
        d.interface.as_deref().unwrap_or("?"),
        i.ifindex
    );
    println!(
        "  egress     {} prog {} link {}",
        mode(&i.egress_mode),
        opt(i.egress_program_id),
        opt(i.egress_link_id)
    );
    println!(
        "  ingress    {} prog {} link {}",
        mode(&i.ingress_mode),
        opt(i.ingress_program_id),
        opt(i.ingress_link_id)
    );
    match &i.enforcement {
        Enforcement::Enforcing => println!(
            "  policy     enforcing (flags {:#x}: {}; generation {})",
            i.flags,
            checks(i.flags),
            i.generation
        ),
        Enforcement::CountOnly { reason } => println!("  policy     counting only: {reason}"),
    }
    println!(
        "  source     mac {}   socket guard {}",
        i.mac,
        if i.socket_guard {
            "yes"
        } else {
            "no (raw sockets may bypass tc egress)"
        }
    );
    let addrs: Vec<String> = i.local_addresses.iter().map(ToString::to_string).collect();
    println!("  addresses  {}", addrs.join(", "));
    for p in &i.prefixes {
        println!(
            "  allow      {:<24} {:<9}  hits {}",
            p.prefix.to_string(),
            mode(&Some(p.origin)),
            d.counters
                .route_hits
                .get(&p.prefix.to_string())
                .copied()
                .unwrap_or(0)
        );
    }
    let c = &d.counters;
    println!(
        "  rx         {} packets {} bytes   tx {} packets {} bytes",
        c.rx_packets, c.rx_bytes, c.tx_packets, c.tx_bytes
    );
    let drops: Vec<String> = c.drops.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("  drops      {}", drops.join(" "));
    println!("  pins       {}", i.pin_dir.display());
}

/// The policy flags in words, relaxations included.
fn checks(flags: u32) -> String {
    use netclaim_common::flags as f;
    let mut on: Vec<&str> = [
        (f::ENFORCE_ROUTES, "routes"),
        (f::ANTI_SPOOFING, "anti-spoofing"),
        (f::INGRESS_FILTER, "ingress filter"),
    ]
    .iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| *name)
    .collect();
    on.push(if flags & f::ALLOW_MULTICAST != 0 {
        "multicast allowed (allowMulticast)"
    } else {
        "multicast only by route"
    });
    on.join(", ")
}

fn mode<T: Serialize>(m: &Option<T>) -> String {
    m.as_ref()
        .and_then(|m| serde_json::to_value(m).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

fn opt(v: Option<u32>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}
