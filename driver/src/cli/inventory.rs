//! `netclaim inventory`: scans the node's namespace (or `--netns PATH`) once and shows
//! the devices the driver would publish, with their attributes. Read-only.

use clap::Args;

use super::Output;
use crate::{
    inventory::{device::attr, DeviceFilter, Inventory, InventoryOptions},
    netns::Netns,
};

#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
    /// DRA driver name; also the domain of the attributes.
    #[arg(long, default_value = crate::DEFAULT_DRIVER_NAME)]
    pub driver_name: String,
    /// CEL expression selecting devices, as in a DeviceClass selector, e.g.
    /// `device.attributes["netclaim.dev"].kind == "veth"`. Default: every device
    /// that is not excluded (loopback and the default-route uplinks' stack).
    #[arg(long)]
    pub filter: Option<String>,
    /// Network namespace to scan (bind mount or /proc/<pid>/ns/net). Default: this
    /// process's namespace.
    #[arg(long)]
    pub netns: Option<std::path::PathBuf>,
}

pub fn run(args: InventoryArgs) -> anyhow::Result<i32> {
    let netns = match &args.netns {
        Some(p) => Netns::open(p)?,
        None => Netns::current()?,
    };
    let filter = args.filter.as_deref().map(DeviceFilter::new).transpose()?;
    let opts = InventoryOptions {
        driver_name: args.driver_name.clone(),
        filter,
        ..Default::default()
    };
    let scan = Inventory::scan_detailed(&netns, &opts)?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&scan.devices)?),
        // Through JSON so attribute values read `string: eth0` as in a ResourceSlice,
        // not as YAML enum tags.
        Output::Yaml => print!(
            "{}",
            serde_yaml::to_string(&serde_json::to_value(&scan.devices)?)?
        ),
        Output::Table => {
            let d = &args.driver_name;
            let get = |dev: &crate::inventory::Device, n: &str| {
                dev.attribute(d, n)
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into())
            };
            let header = [
                "NAME", "IFNAME", "KIND", "STATE", "MTU", "MAC", "DRIVER", "IPV4", "IPV6", "EBPF",
            ];
            let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
            for dev in &scan.devices {
                let ebpf = match get(dev, attr::EBPF_PROGRAMS) {
                    p if p != "-" => p,
                    _ => get(dev, attr::EBPF),
                };
                rows.push(vec![
                    dev.name.clone(),
                    dev.ifname.clone(),
                    get(dev, attr::KIND),
                    get(dev, attr::STATE),
                    get(dev, attr::MTU),
                    get(dev, attr::MAC),
                    get(dev, attr::DRIVER),
                    get(dev, attr::IPV4),
                    get(dev, attr::IPV6),
                    ebpf,
                ]);
            }
            let widths: Vec<usize> = (0..header.len())
                .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
                .collect();
            for r in &rows {
                let line: Vec<String> = r
                    .iter()
                    .zip(&widths)
                    .map(|(v, w)| format!("{v:<w$}"))
                    .collect();
                println!("{}", line.join("  ").trim_end());
            }
            for (name, reason) in &scan.filtered_out {
                match reason {
                    Some(r) => eprintln!("filtered out: {name}: {r}"),
                    None => eprintln!("filtered out: {name}"),
                }
            }
        }
    }
    Ok(0)
}
