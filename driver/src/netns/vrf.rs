//! VRF devices for `interface.vrf`, over rtnetlink in the calling thread's namespace:
//! create one (`ip link add NAME type vrf table T`), enslave a link to it, and remove
//! it when netclaim created it and nothing else is enslaved.
//!
//! Kernels built without `CONFIG_NET_VRF` (these test machines) answer the create with
//! `EOPNOTSUPP`; [`VrfError::Unsupported`] says so in words the claim's author can act
//! on. Owns the VRF devices it reports as created, nothing else.

use netlink_packet_route::{
    link::{InfoData, InfoKind, InfoVrf, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    RouteNetlinkMessage,
};

use super::{
    link,
    netlink::{NlError, NlSocket, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL},
};

/// Why a VRF could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VrfError {
    #[error("this kernel has no VRF support (CONFIG_NET_VRF is not set): creating VRF device {name:?} with table {table} was refused: {source}")]
    Unsupported {
        name: String,
        table: u32,
        #[source]
        source: NlError,
    },
    #[error("{name:?} exists in the pod and is not a VRF (it is {kind})")]
    NotAVrf { name: String, kind: String },
    #[error("VRF {name:?}: {source}")]
    Netlink {
        name: String,
        #[source]
        source: NlError,
    },
}

/// Makes sure VRF `name` with `table` exists and is up; `Ok(true)` when it was
/// created here.
pub fn ensure(sock: &mut NlSocket, name: &str, table: u32) -> Result<bool, VrfError> {
    let nl = |source| VrfError::Netlink {
        name: name.to_string(),
        source,
    };
    if let Some(existing) = link::link_by_name(sock, name).map_err(nl)? {
        let kind = existing.kind.clone().unwrap_or_else(|| "a device".into());
        if kind != "vrf" {
            return Err(VrfError::NotAVrf {
                name: name.to_string(),
                kind,
            });
        }
        set_up(sock, existing.ifindex).map_err(nl)?;
        return Ok(false);
    }
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Vrf),
        LinkInfo::Data(InfoData::Vrf(vec![InfoVrf::TableId(table)])),
    ]));
    match sock.route_request(
        RouteNetlinkMessage::NewLink(m),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Ok(_) => {}
        Err(source) if source.errno() == Some(libc::EOPNOTSUPP) => {
            return Err(VrfError::Unsupported {
                name: name.to_string(),
                table,
                source,
            })
        }
        Err(source) => return Err(nl(source)),
    }
    let created = link::link_by_name(sock, name)
        .map_err(nl)?
        .ok_or_else(|| nl(NlError::Decode(format!("{name} vanished after creation"))))?;
    if let Err(e) = set_up(sock, created.ifindex) {
        let _ = delete(sock, created.ifindex);
        return Err(nl(e));
    }
    Ok(true)
}

fn set_up(sock: &mut NlSocket, ifindex: u32) -> Result<(), NlError> {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    sock.route_request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK)?;
    Ok(())
}

/// Enslaves link `ifindex` to the link `master` (`ip link set dev X master M`).
pub fn enslave(sock: &mut NlSocket, ifindex: u32, master: u32) -> Result<(), NlError> {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    m.attributes.push(LinkAttribute::Controller(master));
    sock.route_request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK)?;
    Ok(())
}

/// Deletes link `ifindex`.
pub fn delete(sock: &mut NlSocket, ifindex: u32) -> Result<(), NlError> {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    sock.route_request(RouteNetlinkMessage::DelLink(m), NLM_F_ACK)?;
    Ok(())
}

/// Ifindexes of the links enslaved to `master`.
pub fn slaves(sock: &mut NlSocket, master: u32) -> Result<Vec<u32>, NlError> {
    let replies = sock.route_request(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        NLM_F_DUMP,
    )?;
    Ok(replies
        .into_iter()
        .filter_map(|r| match r {
            RouteNetlinkMessage::NewLink(l)
                if l.attributes.contains(&LinkAttribute::Controller(master)) =>
            {
                Some(l.header.index)
            }
            _ => None,
        })
        .collect())
}

/// Removes VRF `name` if it exists and nothing but `leaving` is enslaved to it.
pub fn remove_if_unused(
    sock: &mut NlSocket,
    name: &str,
    leaving: Option<u32>,
) -> Result<(), NlError> {
    let Some(vrf) = link::link_by_name(sock, name)? else {
        return Ok(());
    };
    if vrf.kind.as_deref() != Some("vrf") {
        return Ok(());
    }
    if slaves(sock, vrf.ifindex)?
        .into_iter()
        .any(|i| Some(i) != leaving)
    {
        return Ok(());
    }
    delete(sock, vrf.ifindex)
}
