//! Reading one attached device back from the kernel for its status entry: link state
//! and addresses inside the pod namespace (netlink on a namespace thread), counters
//! and attach facts from the data path's pins. Blocking; the writer calls it from
//! `spawn_blocking`. Reads only.

use std::path::PathBuf;

use crate::datapath::device::DatapathInfo;
use crate::datapath::{AttachedDatapath, CounterSnapshot, DatapathKey, PinLayout};
use crate::inventory::links::dump_links;
use crate::netns::netlink::NlSocket;
use crate::netns::{link, Netns};

/// Address scopes reported in `networkData.ips` (universe and site; not link/host).
const MAX_REPORTED_SCOPE: u8 = 200;

/// Where to look for one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub pod_netns: PathBuf,
    pub pod_ifname: String,
    pub datapath: Option<DatapathKey>,
}

/// The interface as the kernel reports it inside the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkView {
    pub ifname: String,
    pub mac: Option<String>,
    /// `up`, `down`, ... (operstate corrected by admin/carrier flags).
    pub state: String,
    /// Global addresses with their prefix length.
    pub ips: Vec<ipnet::IpNet>,
}

/// What one observation found. Errors are text: they end up in condition messages.
#[derive(Clone, Debug)]
pub struct Observation {
    /// `Err` when the namespace or the link could not be read (pod gone, renamed).
    pub link: Result<LinkView, String>,
    /// `None` when the device has no data path.
    pub counters: Option<Result<CounterSnapshot, String>>,
    pub info: Option<Result<DatapathInfo, String>>,
}

/// Reads `target` now.
pub fn observe(target: &Target, layout: &PinLayout) -> Observation {
    let link = read_link(target);
    let (counters, info) = match &target.datapath {
        None => (None, None),
        Some(key) => match AttachedDatapath::adopt(layout, key.clone()) {
            Ok(dp) => (
                Some(dp.counters().map_err(|e| e.to_string())),
                Some(dp.info().map_err(|e| e.to_string())),
            ),
            Err(e) => (Some(Err(e.to_string())), Some(Err(e.to_string()))),
        },
    };
    Observation {
        link,
        counters,
        info,
    }
}

fn read_link(target: &Target) -> Result<LinkView, String> {
    let ns = Netns::open(&target.pod_netns).map_err(|e| e.to_string())?;
    let name = target.pod_ifname.clone();
    let result = ns.run_async(move || async move {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let links = dump_links(&handle).await.map_err(|e| e.to_string())?;
        let Some(found) = links.into_iter().find(|l| l.ifname == name) else {
            return Err(format!("interface {name} not found in the pod namespace"));
        };
        let mut sock = NlSocket::route().map_err(|e| e.to_string())?;
        let ips = link::addresses(&mut sock, found.ifindex)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|a| a.scope < MAX_REPORTED_SCOPE)
            .map(|a| a.net)
            .collect();
        Ok(LinkView {
            ifname: found.ifname,
            mac: found.mac,
            state: found.state.unwrap_or_else(|| "unknown".into()),
            ips,
        })
    });
    match result {
        Ok(inner) => inner,
        Err(e) => Err(e.to_string()),
    }
}
