//! Device names: every published device needs a DNS label (lowercase, at most 63
//! characters, `[a-z0-9-]`, starting and ending with a letter or digit) that stays the
//! same from scan to scan.
//!
//! * PCI-backed links are named after their PCI address: `0000:3b:00.0` →
//!   `pci-0000-3b-00-0`. The name survives renames of the interface.
//! * Every other link is named after its interface name: lowercased, every other
//!   character replaced by `-`, leading/trailing `-` trimmed; an empty result becomes
//!   `if-<hash>`; a result longer than 63 characters is cut to 56 and gets `-<hash>`.
//! * Collisions (`eth_0` and `eth.0` both give `eth-0`) are resolved without looking at
//!   scan order: PCI names win, then a link whose interface name *is* the label, then
//!   the smallest interface name; every other claimant gets `-<hash>` of its own
//!   interface name appended, so its name does not depend on which other links exist.
//!
//! `<hash>` is 6 hex digits of FNV-1a over the interface name (or PCI address).
//! Pure functions only; nothing here reads the kernel.

use std::collections::BTreeMap;

/// Longest DNS label.
pub const MAX_LABEL: usize = 63;
const HASH_LEN: usize = 6;

/// Whether `s` is a valid DNS label (RFC 1123, as Kubernetes checks device names).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// 32-bit FNV-1a, rendered as 6 lowercase hex digits.
pub fn short_hash(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{:06x}", h & 0x00ff_ffff)
}

/// `0000:3b:00.0` → `pci-0000-3b-00-0`.
pub fn pci_device_name(pci_address: &str) -> String {
    normalise(&format!("pci-{pci_address}"), pci_address)
}

/// The label for a link without a PCI address, before collision handling.
pub fn ifname_device_name(ifname: &str) -> String {
    normalise(ifname, ifname)
}

fn normalise(raw: &str, hash_input: &str) -> String {
    let mapped: String = raw
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() {
        return format!("if-{}", short_hash(hash_input));
    }
    if trimmed.len() <= MAX_LABEL {
        return trimmed.to_string();
    }
    with_suffix(trimmed, hash_input)
}

/// `base` cut so that `-<hash>` fits, then the suffix appended.
fn with_suffix(base: &str, hash_input: &str) -> String {
    let keep = MAX_LABEL - HASH_LEN - 1;
    let cut = if base.len() > keep {
        &base[..keep]
    } else {
        base
    };
    format!("{}-{}", cut.trim_end_matches('-'), short_hash(hash_input))
}

/// Who wants a name: the link's interface name and, when PCI-backed, its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameRequest {
    pub ifname: String,
    pub pci_address: Option<String>,
}

/// Assigns a unique DNS label to every request; the result is indexed like the input.
pub fn assign_names(requests: &[NameRequest]) -> Vec<String> {
    let wanted: Vec<String> = requests
        .iter()
        .map(|r| match &r.pci_address {
            Some(pci) => pci_device_name(pci),
            None => ifname_device_name(&r.ifname),
        })
        .collect();
    // label → claimants (indices), each with its priority key.
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, w) in wanted.iter().enumerate() {
        groups.entry(w.as_str()).or_default().push(i);
    }
    let mut out = wanted.clone();
    let mut taken: std::collections::BTreeSet<String> =
        groups.keys().map(|label| (*label).to_string()).collect();
    for (label, mut claimants) in groups {
        if claimants.len() < 2 {
            continue;
        }
        claimants.sort_by(|&a, &b| {
            let key = |i: usize| {
                let r = &requests[i];
                (
                    r.pci_address.is_none(),
                    r.ifname != label,
                    r.pci_address.clone().unwrap_or_default(),
                    r.ifname.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        for &i in &claimants[1..] {
            let r = &requests[i];
            let seed = match &r.pci_address {
                Some(pci) => format!("{pci}/{}", r.ifname),
                None => r.ifname.clone(),
            };
            let mut candidate = with_suffix(label, &seed);
            let mut n = 1u32;
            while taken.contains(&candidate) {
                candidate = with_suffix(label, &format!("{seed}#{n}"));
                n += 1;
            }
            taken.insert(candidate.clone());
            out[i] = candidate;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ifname: &str, pci: Option<&str>) -> NameRequest {
        NameRequest {
            ifname: ifname.into(),
            pci_address: pci.map(str::to_string),
        }
    }

    #[test]
    fn pci_names() {
        assert_eq!(pci_device_name("0000:3b:00.0"), "pci-0000-3b-00-0");
        assert!(is_dns_label(&pci_device_name("0000:3B:00.7")));
    }

    #[test]
    fn ifname_normalisation() {
        assert_eq!(ifname_device_name("eth0"), "eth0");
        assert_eq!(ifname_device_name("Eth_0.100"), "eth-0-100");
        assert_eq!(ifname_device_name("-veth-"), "veth");
        let empty = ifname_device_name("__");
        assert!(empty.starts_with("if-") && is_dns_label(&empty), "{empty}");
        let long = "a".repeat(80);
        let n = ifname_device_name(&long);
        assert_eq!(n.len(), MAX_LABEL);
        assert!(is_dns_label(&n));
        assert_eq!(n, ifname_device_name(&long), "deterministic");
    }

    #[test]
    fn collisions_are_order_independent() {
        let a = [req("eth_0", None), req("eth-0", None), req("ETH.0", None)];
        let b = [req("ETH.0", None), req("eth_0", None), req("eth-0", None)];
        let na = assign_names(&a);
        let nb = assign_names(&b);
        // eth-0 owns the plain label; the others get hashed suffixes, same in both orders.
        assert_eq!(na[1], "eth-0");
        assert_eq!(nb[2], "eth-0");
        assert_eq!(na[0], nb[1]);
        assert_eq!(na[2], nb[0]);
        let mut all = na.clone();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 3);
        assert!(na.iter().all(|n| is_dns_label(n)));
    }

    #[test]
    fn pci_wins_over_ifname() {
        let names = assign_names(&[
            req("pci-0000-3b-00-0", None),
            req("ens1f0", Some("0000:3b:00.0")),
        ]);
        assert_eq!(names[1], "pci-0000-3b-00-0");
        assert_ne!(names[0], names[1]);
        assert!(is_dns_label(&names[0]));
    }
}
