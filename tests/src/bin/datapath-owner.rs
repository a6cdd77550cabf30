//! A short-lived process that attaches a data path and exits without detaching, so
//! tests can check that programs keep working with no owner and that another process
//! adopts them from the pins.
//!
//! Usage: `datapath-owner <bpf-root> <netns-path> <ifname> <claim-ns> <claim> <device> <policy-json>`

use anyhow::{bail, Context, Result};
use netclaim::datapath::{
    device::AttachOptions, AttachedDatapath, DatapathKey, DatapathPolicy, PinLayout,
};
use netclaim::netns::Netns;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, netns, ifname, ns, claim, device, policy] = args.as_slice() else {
        bail!("usage: datapath-owner <bpf-root> <netns-path> <ifname> <claim-ns> <claim> <device> <policy-json>");
    };
    let policy: DatapathPolicy = serde_json::from_str(policy).context("policy JSON")?;
    let layout = PinLayout::new(root);
    let key = DatapathKey::new(ns.as_str(), claim.as_str(), device.as_str())?;
    let netns = Netns::open(netns)?;
    let dp = AttachedDatapath::attach(
        &layout,
        key,
        &netns,
        ifname,
        &policy,
        AttachOptions::default(),
    )?;
    println!("{}", serde_json::to_string(&dp.info()?)?);
    // Exit without detaching: the pins own everything now.
    Ok(())
}
