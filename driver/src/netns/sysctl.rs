//! Per-interface sysctls the claim may set (`arp_ignore`, `arp_announce`, IPv4 and
//! IPv6 `forwarding`), written and read back through `/proc/sys/net`. Their current
//! values also come with every link read (`LinkFacts::sysctls`, from `IFLA_AF_SPEC`),
//! which is how the capture and the restore see them: no files to open.
//!
//! `/proc/sys/net` shows the network namespace of the thread that *looks it up*, so
//! these functions must run on a namespace thread (see [`super::thread`]) and open
//! the files themselves, after `setns`. A netns move resets all four values to the
//! destination namespace's `conf/default` (measured on 6.18: a device with
//! `arp_ignore=2 forwarding=1` in one namespace reads `arp_ignore=<default> 0` after a
//! move and again after moving back), so the host's values are captured before the
//! move and written back when the device comes home. Owns nothing.

use std::{fs, io, path::PathBuf};

use serde::{Deserialize, Serialize};

/// The values of one interface; `None` when not set (or, when read, absent: IPv6
/// disabled has no `net.ipv6.conf.<if>`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IfSysctls {
    pub arp_ignore: Option<u8>,
    pub arp_announce: Option<u8>,
    pub forwarding_v4: Option<bool>,
    pub forwarding_v6: Option<bool>,
}

impl IfSysctls {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The entries of `self` that `current` does not already hold.
    pub fn differing_from(&self, current: &IfSysctls) -> IfSysctls {
        fn keep<T: PartialEq + Copy>(want: Option<T>, have: Option<T>) -> Option<T> {
            want.filter(|w| have != Some(*w))
        }
        IfSysctls {
            arp_ignore: keep(self.arp_ignore, current.arp_ignore),
            arp_announce: keep(self.arp_announce, current.arp_announce),
            forwarding_v4: keep(self.forwarding_v4, current.forwarding_v4),
            forwarding_v6: keep(self.forwarding_v6, current.forwarding_v6),
        }
    }
}

/// A sysctl that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct SysctlError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// The claim field each value comes from, for error messages.
pub fn field_of(key: &str) -> &'static str {
    match key {
        "arp_ignore" => "interface.arpIgnore",
        "arp_announce" => "interface.arpAnnounce",
        _ => "interface.forwarding",
    }
}

fn path(family: &str, ifname: &str, key: &str) -> Result<PathBuf, SysctlError> {
    let p = PathBuf::from(format!("/proc/sys/net/{family}/conf/{ifname}/{key}"));
    if ifname.is_empty() || ifname.contains('/') || ifname == "." || ifname == ".." {
        return Err(SysctlError {
            path: p,
            source: io::Error::new(io::ErrorKind::InvalidInput, "not an interface name"),
        });
    }
    Ok(p)
}

fn read_one(family: &str, ifname: &str, key: &str) -> Result<Option<u8>, SysctlError> {
    let p = path(family, ifname, key)?;
    match fs::read_to_string(&p) {
        Ok(s) => s.trim().parse::<u8>().map(Some).map_err(|e| SysctlError {
            path: p,
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SysctlError { path: p, source }),
    }
}

/// Reads the four values of `ifname` in the calling thread's namespace.
pub fn read(ifname: &str) -> Result<IfSysctls, SysctlError> {
    Ok(IfSysctls {
        arp_ignore: read_one("ipv4", ifname, "arp_ignore")?,
        arp_announce: read_one("ipv4", ifname, "arp_announce")?,
        forwarding_v4: read_one("ipv4", ifname, "forwarding")?.map(|v| v != 0),
        forwarding_v6: read_one("ipv6", ifname, "forwarding")?.map(|v| v != 0),
    })
}

/// Writes the values that are set, in the calling thread's namespace; returns the
/// sysctl key that failed with its error. IPv6 forwarding is skipped when the
/// interface has no IPv6 (as DraNet does).
pub fn write(ifname: &str, values: &IfSysctls) -> Result<(), (&'static str, SysctlError)> {
    let put = |family: &str, key: &'static str, v: u8| -> Result<(), (&'static str, SysctlError)> {
        let p = path(family, ifname, key).map_err(|e| (key, e))?;
        fs::write(&p, format!("{v}\n")).map_err(|source| (key, SysctlError { path: p, source }))
    };
    if let Some(v) = values.arp_ignore {
        put("ipv4", "arp_ignore", v)?;
    }
    if let Some(v) = values.arp_announce {
        put("ipv4", "arp_announce", v)?;
    }
    if let Some(v) = values.forwarding_v4 {
        put("ipv4", "forwarding", u8::from(v))?;
    }
    if let Some(v) = values.forwarding_v6 {
        let has_v6 = path("ipv6", ifname, "forwarding")
            .map(|p| p.exists())
            .unwrap_or(false);
        if has_v6 {
            put("ipv6", "forwarding", u8::from(v))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_differing_values_are_written_back() {
        let host = IfSysctls {
            arp_ignore: Some(2),
            arp_announce: Some(0),
            forwarding_v4: Some(true),
            forwarding_v6: None,
        };
        let now = IfSysctls {
            arp_ignore: Some(0),
            arp_announce: Some(0),
            forwarding_v4: Some(false),
            forwarding_v6: Some(false),
        };
        assert_eq!(
            host.differing_from(&now),
            IfSysctls {
                arp_ignore: Some(2),
                forwarding_v4: Some(true),
                ..Default::default()
            }
        );
        assert!(now.differing_from(&now).is_empty());
    }

    #[test]
    fn names_that_would_leave_the_directory_are_refused() {
        assert!(read("../all").is_err());
        assert!(read("..").is_err());
        assert_eq!(field_of("arp_announce"), "interface.arpAnnounce");
    }
}
