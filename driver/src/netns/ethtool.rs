//! ethtool over generic netlink: read and set a device's features (`ethtool -k/-K`)
//! and private flags (`--show-priv-flags/--set-priv-flags`).
//!
//! The `ethtool` crate only reads, so the few messages needed are written by hand
//! here: family lookup (`CTRL_CMD_GETFAMILY "ethtool"`), the global feature-name
//! string set (`ETHTOOL_MSG_STRSET_GET` for `ETH_SS_FEATURES`), `FEATURES_GET/SET`
//! and `PRIVFLAGS_GET/SET`, all with *verbose* (name-based) bitsets so no bit
//! numbering is ever assumed. Runs in the calling thread's namespace; the device is
//! addressed by ifindex. Owns no kernel objects.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::OnceLock,
};

use super::netlink::{cstr, AttrWriter, Attrs, NlError, NlSocket, NLM_F_ACK};

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const ETHTOOL_GENL_VERSION: u8 = 1;
const ETHTOOL_MSG_STRSET_GET: u8 = 1;
const ETHTOOL_MSG_FEATURES_GET: u8 = 11;
const ETHTOOL_MSG_FEATURES_SET: u8 = 12;
const ETHTOOL_MSG_PRIVFLAGS_GET: u8 = 13;
const ETHTOOL_MSG_PRIVFLAGS_SET: u8 = 14;

const ETHTOOL_A_HEADER_DEV_INDEX: u16 = 1;

const ETHTOOL_A_BITSET_NOMASK: u16 = 1;
const ETHTOOL_A_BITSET_BITS: u16 = 3;
const ETHTOOL_A_BITSET_BITS_BIT: u16 = 1;
const ETHTOOL_A_BITSET_BIT_NAME: u16 = 2;
const ETHTOOL_A_BITSET_BIT_VALUE: u16 = 3;

const ETHTOOL_A_STRSET_STRINGSETS: u16 = 2;
const ETHTOOL_A_STRINGSETS_STRINGSET: u16 = 1;
const ETHTOOL_A_STRINGSET_ID: u16 = 1;
const ETHTOOL_A_STRINGSET_STRINGS: u16 = 3;
const ETHTOOL_A_STRINGS_STRING: u16 = 1;
const ETHTOOL_A_STRING_VALUE: u16 = 2;
const ETH_SS_FEATURES: u32 = 4;

/// `ETHTOOL_A_FEATURES_*` and `ETHTOOL_A_PRIVFLAGS_*`: the header is always 1.
const A_HEADER: u16 = 1;
const ETHTOOL_A_FEATURES_HW: u16 = 2;
const ETHTOOL_A_FEATURES_WANTED: u16 = 3;
const ETHTOOL_A_FEATURES_ACTIVE: u16 = 4;
const ETHTOOL_A_FEATURES_NOCHANGE: u16 = 5;
const ETHTOOL_A_PRIVFLAGS_FLAGS: u16 = 2;

/// Why an ethtool exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum EthtoolError {
    #[error("generic netlink family \"ethtool\" not found")]
    NoFamily,
    #[error(transparent)]
    Netlink(#[from] NlError),
}

/// Feature state of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFeatures {
    /// Every feature name the kernel knows, with its active state on this device.
    pub active: BTreeMap<String, bool>,
    /// Features the device lets us toggle (`hw` minus `nochange`); the others are
    /// shown as `[fixed]` by `ethtool -k`.
    pub changeable: BTreeSet<String>,
}

/// A generic netlink socket talking to the ethtool family.
#[derive(Debug)]
pub struct Ethtool {
    sock: NlSocket,
    family: u16,
}

static FAMILY: OnceLock<u16> = OnceLock::new();
static FEATURE_NAMES: OnceLock<Vec<String>> = OnceLock::new();

impl Ethtool {
    /// Opens a socket in the calling thread's namespace. The family id and the
    /// feature names are kernel-global, so they are looked up once per process.
    pub fn open() -> Result<Self, EthtoolError> {
        let mut sock = NlSocket::generic()?;
        let family = match FAMILY.get() {
            Some(f) => *f,
            None => {
                let f = resolve_family(&mut sock, "ethtool")?;
                *FAMILY.get_or_init(|| f)
            }
        };
        Ok(Self { sock, family })
    }

    fn call(&mut self, cmd: u8, attrs: &AttrWriter) -> Result<Vec<Vec<u8>>, EthtoolError> {
        let payload = genl_payload(cmd, ETHTOOL_GENL_VERSION, attrs);
        let replies = self.sock.request_raw(self.family, NLM_F_ACK, &payload)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| r.payload.get(4..).map(<[u8]>::to_vec))
            .collect())
    }

    /// Every feature name the kernel knows (`ETH_SS_FEATURES`), in bit order.
    pub fn feature_names(&mut self) -> Result<Vec<String>, EthtoolError> {
        if let Some(n) = FEATURE_NAMES.get() {
            return Ok(n.clone());
        }
        let mut w = AttrWriter::new();
        // Newer kernels require the header even for global string sets; an empty
        // one means "no device".
        w.nested(A_HEADER, |_| {});
        w.nested(ETHTOOL_A_STRSET_STRINGSETS, |s| {
            s.nested(ETHTOOL_A_STRINGSETS_STRINGSET, |set| {
                set.u32(ETHTOOL_A_STRINGSET_ID, ETH_SS_FEATURES);
            });
        });
        let mut names = Vec::new();
        for reply in self.call(ETHTOOL_MSG_STRSET_GET, &w)? {
            // Unassigned feature bits have empty names.
            names.extend(parse_strset(&reply).into_iter().filter(|n| !n.is_empty()));
        }
        Ok(FEATURE_NAMES.get_or_init(|| names).clone())
    }

    /// Reads the features of device `ifindex`.
    pub fn features(&mut self, ifindex: u32) -> Result<DeviceFeatures, EthtoolError> {
        let names = self.feature_names()?;
        let mut w = AttrWriter::new();
        header(&mut w, ifindex);
        let mut hw = BTreeSet::new();
        let mut nochange = BTreeSet::new();
        let mut active = BTreeSet::new();
        for reply in self.call(ETHTOOL_MSG_FEATURES_GET, &w)? {
            for (kind, value) in Attrs::new(&reply) {
                let set: BTreeSet<String> = parse_bitset(value)
                    .into_iter()
                    .filter_map(|(n, on)| on.then_some(n))
                    .collect();
                match kind {
                    ETHTOOL_A_FEATURES_HW => hw = set,
                    ETHTOOL_A_FEATURES_ACTIVE => active = set,
                    ETHTOOL_A_FEATURES_NOCHANGE => nochange = set,
                    _ => {}
                }
            }
        }
        Ok(DeviceFeatures {
            active: names
                .iter()
                .map(|n| (n.clone(), active.contains(n)))
                .collect(),
            changeable: hw.difference(&nochange).cloned().collect(),
        })
    }

    /// Requests the given feature states (`ethtool -K`). Callers check the result by
    /// reading the features back: the kernel may refuse a change silently when a
    /// feature depends on another.
    pub fn set_features(
        &mut self,
        ifindex: u32,
        wanted: &BTreeMap<String, bool>,
    ) -> Result<(), EthtoolError> {
        if wanted.is_empty() {
            return Ok(());
        }
        self.call(
            ETHTOOL_MSG_FEATURES_SET,
            &features_set_attrs(ifindex, wanted),
        )?;
        Ok(())
    }

    /// The device's private flags and their states; empty when the driver has none.
    pub fn private_flags(&mut self, ifindex: u32) -> Result<BTreeMap<String, bool>, EthtoolError> {
        let mut w = AttrWriter::new();
        header(&mut w, ifindex);
        let replies = match self.call(ETHTOOL_MSG_PRIVFLAGS_GET, &w) {
            Ok(r) => r,
            Err(EthtoolError::Netlink(e)) if e.errno() == Some(libc::EOPNOTSUPP) => {
                return Ok(BTreeMap::new())
            }
            Err(e) => return Err(e),
        };
        let mut out = BTreeMap::new();
        for reply in replies {
            for (kind, value) in Attrs::new(&reply) {
                if kind == ETHTOOL_A_PRIVFLAGS_FLAGS {
                    out.extend(parse_bitset(value));
                }
            }
        }
        Ok(out)
    }

    /// Sets private flags (`ethtool --set-priv-flags`).
    pub fn set_private_flags(
        &mut self,
        ifindex: u32,
        wanted: &BTreeMap<String, bool>,
    ) -> Result<(), EthtoolError> {
        if wanted.is_empty() {
            return Ok(());
        }
        let mut w = AttrWriter::new();
        header(&mut w, ifindex);
        verbose_bitset(&mut w, ETHTOOL_A_PRIVFLAGS_FLAGS, wanted);
        self.call(ETHTOOL_MSG_PRIVFLAGS_SET, &w)?;
        Ok(())
    }
}

fn genl_payload(cmd: u8, version: u8, attrs: &AttrWriter) -> Vec<u8> {
    let mut p = vec![cmd, version, 0, 0];
    p.extend_from_slice(&attrs.buf);
    p
}

fn header(w: &mut AttrWriter, ifindex: u32) {
    w.nested(A_HEADER, |h| {
        h.u32(ETHTOOL_A_HEADER_DEV_INDEX, ifindex);
    });
}

/// A verbose bitset with a mask: exactly the named bits change, each to its value.
fn verbose_bitset(w: &mut AttrWriter, kind: u16, bits: &BTreeMap<String, bool>) {
    w.nested(kind, |set| {
        set.nested(ETHTOOL_A_BITSET_BITS, |list| {
            for (name, on) in bits {
                list.nested(ETHTOOL_A_BITSET_BITS_BIT, |bit| {
                    bit.string(ETHTOOL_A_BITSET_BIT_NAME, name);
                    if *on {
                        bit.flag(ETHTOOL_A_BITSET_BIT_VALUE);
                    }
                });
            }
        });
    });
}

/// Attributes of `ETHTOOL_MSG_FEATURES_SET`.
fn features_set_attrs(ifindex: u32, wanted: &BTreeMap<String, bool>) -> AttrWriter {
    let mut w = AttrWriter::new();
    header(&mut w, ifindex);
    verbose_bitset(&mut w, ETHTOOL_A_FEATURES_WANTED, wanted);
    w
}

/// Parses a verbose bitset into `(name, value)` pairs. In list form (`NOMASK`) every
/// listed bit is set; in mask form a bit is set when it carries `VALUE`.
fn parse_bitset(buf: &[u8]) -> Vec<(String, bool)> {
    let nomask = Attrs::new(buf).any(|(k, _)| k == ETHTOOL_A_BITSET_NOMASK);
    let mut out = Vec::new();
    for (kind, bits) in Attrs::new(buf) {
        if kind != ETHTOOL_A_BITSET_BITS {
            continue;
        }
        for (bk, bit) in Attrs::new(bits) {
            if bk != ETHTOOL_A_BITSET_BITS_BIT {
                continue;
            }
            let mut name = None;
            let mut value = nomask;
            for (k, v) in Attrs::new(bit) {
                match k {
                    ETHTOOL_A_BITSET_BIT_NAME => name = Some(cstr(v)),
                    ETHTOOL_A_BITSET_BIT_VALUE => value = true,
                    _ => {}
                }
            }
            if let Some(n) = name {
                out.push((n, value));
            }
        }
    }
    out
}

fn parse_strset(reply: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for (k, sets) in Attrs::new(reply) {
        if k != ETHTOOL_A_STRSET_STRINGSETS {
            continue;
        }
        for (k, set) in Attrs::new(sets) {
            if k != ETHTOOL_A_STRINGSETS_STRINGSET {
                continue;
            }
            for (k, strings) in Attrs::new(set) {
                if k != ETHTOOL_A_STRINGSET_STRINGS {
                    continue;
                }
                for (k, string) in Attrs::new(strings) {
                    if k != ETHTOOL_A_STRINGS_STRING {
                        continue;
                    }
                    for (k, v) in Attrs::new(string) {
                        if k == ETHTOOL_A_STRING_VALUE {
                            out.push(cstr(v));
                        }
                    }
                }
            }
        }
    }
    out
}

fn resolve_family(sock: &mut NlSocket, name: &str) -> Result<u16, EthtoolError> {
    let mut w = AttrWriter::new();
    w.string(CTRL_ATTR_FAMILY_NAME, name);
    let payload = genl_payload(CTRL_CMD_GETFAMILY, 1, &w);
    let replies = sock
        .request_raw(GENL_ID_CTRL, NLM_F_ACK, &payload)
        .map_err(|e| match e.errno() {
            Some(libc::ENOENT) => EthtoolError::NoFamily,
            _ => EthtoolError::Netlink(e),
        })?;
    for r in replies {
        for (k, v) in Attrs::new(r.payload.get(4..).unwrap_or(&[])) {
            if k == CTRL_ATTR_FAMILY_ID && v.len() >= 2 {
                return Ok(u16::from_ne_bytes([v[0], v[1]]));
            }
        }
    }
    Err(EthtoolError::NoFamily)
}

/// Index of a device in a parsed header (used by tests of the encoding).
#[cfg(test)]
fn header_ifindex(buf: &[u8]) -> Option<u32> {
    Attrs::new(buf)
        .find(|(k, _)| *k == A_HEADER)
        .and_then(|(_, h)| Attrs::new(h).find(|(k, _)| *k == ETHTOOL_A_HEADER_DEV_INDEX))
        .and_then(|(_, v)| super::netlink::attr_u32(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_set_encodes_header_and_masked_verbose_bitset() {
        let wanted = BTreeMap::from([
            ("rx-checksum".to_string(), false),
            ("rx-gro".to_string(), true),
        ]);
        let w = features_set_attrs(7, &wanted);
        assert_eq!(header_ifindex(&w.buf), Some(7));
        let (_, bitset) = Attrs::new(&w.buf)
            .find(|(k, _)| *k == ETHTOOL_A_FEATURES_WANTED)
            .expect("wanted bitset");
        // No NOMASK: the kernel changes only the listed bits.
        assert!(!Attrs::new(bitset).any(|(k, _)| k == ETHTOOL_A_BITSET_NOMASK));
        assert_eq!(
            parse_bitset(bitset),
            vec![("rx-checksum".into(), false), ("rx-gro".into(), true)]
        );
        // Nested attributes carry NLA_F_NESTED on the wire.
        let raw_type = u16::from_ne_bytes([w.buf[2], w.buf[3]]);
        assert_eq!(raw_type, 0x8000 | A_HEADER);
    }

    #[test]
    fn genl_header_precedes_attributes() {
        let mut w = AttrWriter::new();
        w.u32(9, 1);
        let p = genl_payload(ETHTOOL_MSG_FEATURES_SET, 1, &w);
        assert_eq!(&p[..4], &[12, 1, 0, 0]);
        assert_eq!(p.len(), 4 + 8);
    }

    #[test]
    fn nomask_bitset_lists_set_bits() {
        let mut w = AttrWriter::new();
        w.flag(ETHTOOL_A_BITSET_NOMASK).u32(2, 64);
        w.nested(ETHTOOL_A_BITSET_BITS, |l| {
            l.nested(ETHTOOL_A_BITSET_BITS_BIT, |b| {
                b.u32(1, 3)
                    .string(ETHTOOL_A_BITSET_BIT_NAME, "tx-checksum-ip-generic");
            });
        });
        assert_eq!(
            parse_bitset(&w.buf),
            vec![("tx-checksum-ip-generic".into(), true)]
        );
    }

    #[test]
    fn strset_reply_parses_names_in_order() {
        let mut w = AttrWriter::new();
        w.nested(ETHTOOL_A_STRSET_STRINGSETS, |s| {
            s.nested(ETHTOOL_A_STRINGSETS_STRINGSET, |set| {
                set.u32(ETHTOOL_A_STRINGSET_ID, ETH_SS_FEATURES).u32(2, 2);
                set.nested(ETHTOOL_A_STRINGSET_STRINGS, |strings| {
                    for (i, n) in ["tx-scatter-gather", "tx-checksum-ipv4"].iter().enumerate() {
                        strings.nested(ETHTOOL_A_STRINGS_STRING, |st| {
                            st.u32(1, i as u32).string(ETHTOOL_A_STRING_VALUE, n);
                        });
                    }
                });
            });
        });
        assert_eq!(
            parse_strset(&w.buf),
            vec!["tx-scatter-gather".to_string(), "tx-checksum-ipv4".into()]
        );
    }
}

/// The names `ethtool -k` prints (and `ethtool -K` accepts) for groups of kernel
/// features, e.g. `generic-receive-offload` for `rx-gro`. Claims written for the
/// `ethtool` command use them; the kernel only knows the right-hand names.
const LEGACY_NAMES: &[(&str, &[&str])] = &[
    ("rx-checksumming", &["rx-checksum"]),
    ("rx", &["rx-checksum"]),
    (
        "tx-checksumming",
        &[
            "tx-checksum-ipv4",
            "tx-checksum-ip-generic",
            "tx-checksum-ipv6",
            "tx-checksum-fcoe-crc",
            "tx-checksum-sctp",
        ],
    ),
    (
        "tx",
        &[
            "tx-checksum-ipv4",
            "tx-checksum-ip-generic",
            "tx-checksum-ipv6",
            "tx-checksum-fcoe-crc",
            "tx-checksum-sctp",
        ],
    ),
    (
        "scatter-gather",
        &["tx-scatter-gather", "tx-scatter-gather-fraglist"],
    ),
    ("sg", &["tx-scatter-gather", "tx-scatter-gather-fraglist"]),
    (
        "tcp-segmentation-offload",
        &[
            "tx-tcp-segmentation",
            "tx-tcp-ecn-segmentation",
            "tx-tcp-mangleid-segmentation",
            "tx-tcp6-segmentation",
        ],
    ),
    (
        "tso",
        &[
            "tx-tcp-segmentation",
            "tx-tcp-ecn-segmentation",
            "tx-tcp-mangleid-segmentation",
            "tx-tcp6-segmentation",
        ],
    ),
    ("udp-fragmentation-offload", &["tx-udp-fragmentation"]),
    ("ufo", &["tx-udp-fragmentation"]),
    ("generic-segmentation-offload", &["tx-generic-segmentation"]),
    ("gso", &["tx-generic-segmentation"]),
    ("generic-receive-offload", &["rx-gro"]),
    ("gro", &["rx-gro"]),
    ("large-receive-offload", &["rx-lro"]),
    ("lro", &["rx-lro"]),
    ("rx-vlan-offload", &["rx-vlan-hw-parse"]),
    ("rxvlan", &["rx-vlan-hw-parse"]),
    ("tx-vlan-offload", &["tx-vlan-hw-insert"]),
    ("txvlan", &["tx-vlan-hw-insert"]),
    ("ntuple-filters", &["rx-ntuple-filter"]),
    ("ntuple", &["rx-ntuple-filter"]),
    ("receive-hashing", &["rx-hashing"]),
    ("rxhash", &["rx-hashing"]),
];

/// Legacy groups whose members `ethtool -K` (6.1) finds by pattern rather than by a
/// fixed list, so a kernel that adds a member (6.18: `tx-tcp-accecn-segmentation`)
/// has it switched with the group: `ethtool -K dev tso off` turns every
/// `tx-tcp*-segmentation` off, and `ethtool -k` shows the group on while any is on.
const LEGACY_PATTERNS: &[(&str, &str, &str)] = &[
    ("tcp-segmentation-offload", "tx-tcp", "-segmentation"),
    ("tso", "tx-tcp", "-segmentation"),
    ("tx-checksumming", "tx-checksum-", ""),
    ("tx", "tx-checksum-", ""),
    ("scatter-gather", "tx-scatter-gather", ""),
    ("sg", "tx-scatter-gather", ""),
];

/// The members of legacy group `name` on a device whose features are `active`: the
/// listed ones it has plus every feature matching the group's pattern.
fn legacy_members<'a>(
    name: &str,
    group: &[&'a str],
    active: &'a BTreeMap<String, bool>,
) -> Vec<&'a str> {
    let mut members: Vec<&str> = group
        .iter()
        .copied()
        .filter(|m| active.contains_key(*m))
        .collect();
    for (_, prefix, suffix) in LEGACY_PATTERNS.iter().filter(|(l, _, _)| *l == name) {
        for feature in active.keys() {
            let f = feature.as_str();
            if f.len() >= prefix.len() + suffix.len()
                && f.starts_with(prefix)
                && f.ends_with(suffix)
                && !members.contains(&f)
            {
                members.push(f);
            }
        }
    }
    members
}

/// Why a requested feature cannot be applied to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureProblem {
    Unknown,
    /// Not changeable and currently in the other state.
    Fixed {
        active: bool,
    },
}

/// Resolves requested feature names (kernel or legacy `ethtool -k` names) against a
/// device's features (`active` and `changeable`, as [`DeviceFeatures`] reads them):
/// returns kernel feature → (state, the requested key it came from). Legacy group
/// names change the members the device lets us change, as `ethtool -K` does.
pub fn resolve_features(
    requested: &BTreeMap<String, bool>,
    active: &BTreeMap<String, bool>,
    changeable: &BTreeSet<String>,
) -> Result<BTreeMap<String, (bool, String)>, (String, FeatureProblem)> {
    let mut out = BTreeMap::new();
    for (name, on) in requested {
        let members: Vec<&str> = if active.contains_key(name) {
            vec![name.as_str()]
        } else if let Some((_, group)) = LEGACY_NAMES.iter().find(|(l, _)| l == name) {
            legacy_members(name, group, active)
        } else {
            Vec::new()
        };
        if members.is_empty() {
            return Err((name.clone(), FeatureProblem::Unknown));
        }
        let changeable: Vec<&str> = members
            .iter()
            .copied()
            .filter(|m| changeable.contains(*m))
            .collect();
        if changeable.is_empty() {
            // Nothing to change; fine only if already in the wanted state.
            if let Some(m) = members.iter().find(|m| active.get(**m) != Some(on)) {
                let is_on = active.get(*m).copied().unwrap_or(false);
                return Err((name.clone(), FeatureProblem::Fixed { active: is_on }));
            }
            continue;
        }
        for m in changeable {
            out.insert(m.to_string(), (*on, name.clone()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod resolve_tests {
    use super::*;

    fn device() -> DeviceFeatures {
        DeviceFeatures {
            active: BTreeMap::from([
                ("rx-gro".into(), true),
                ("rx-checksum".into(), true),
                ("tx-tcp-segmentation".into(), true),
                ("tx-tcp6-segmentation".into(), true),
                ("tx-tcp-ecn-segmentation".into(), false),
                ("rx-lro".into(), false),
            ]),
            changeable: BTreeSet::from([
                "rx-gro".into(),
                "rx-checksum".into(),
                "tx-tcp-segmentation".into(),
                "tx-tcp6-segmentation".into(),
            ]),
        }
    }

    #[test]
    fn legacy_group_names_expand_to_changeable_members() {
        let req = BTreeMap::from([("tso".to_string(), false), ("gro".to_string(), false)]);
        let got = resolve_features(&req, &device().active, &device().changeable).unwrap();
        assert_eq!(got.get("rx-gro"), Some(&(false, "gro".to_string())));
        assert_eq!(
            got.get("tx-tcp-segmentation"),
            Some(&(false, "tso".to_string()))
        );
        assert_eq!(
            got.get("tx-tcp6-segmentation"),
            Some(&(false, "tso".to_string()))
        );
        assert!(!got.contains_key("tx-tcp-ecn-segmentation"));
    }

    /// Kernel 6.18 has `tx-tcp-accecn-segmentation`, which no list names: `tso off`
    /// must switch it too (as `ethtool -K tso off` does), or `ethtool -k` still shows
    /// TSO on. Found by `cargo xtask chaos` (seed 11) on a veth.
    #[test]
    fn legacy_groups_take_members_by_pattern_like_ethtool() {
        let mut d = device();
        for f in [
            "tx-tcp-accecn-segmentation",
            "tx-checksum-sctp",
            "tx-udp-segmentation",
        ] {
            d.active.insert(f.into(), true);
            d.changeable.insert(f.into());
        }
        let req = BTreeMap::from([("tcp-segmentation-offload".to_string(), false)]);
        let got = resolve_features(&req, &d.active, &d.changeable).unwrap();
        let names: Vec<&str> = got.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "tx-tcp-accecn-segmentation",
                "tx-tcp-segmentation",
                "tx-tcp6-segmentation"
            ]
        );
        let req = BTreeMap::from([("tx".to_string(), false)]);
        let got = resolve_features(&req, &d.active, &d.changeable).unwrap();
        assert!(got.contains_key("tx-checksum-sctp"));
        assert!(!got.contains_key("tx-udp-segmentation"));
    }

    #[test]
    fn unknown_and_fixed_features_are_refused() {
        let req = BTreeMap::from([("foo".to_string(), true)]);
        assert_eq!(
            resolve_features(&req, &device().active, &device().changeable),
            Err(("foo".into(), FeatureProblem::Unknown))
        );
        let req = BTreeMap::from([("rx-lro".to_string(), true)]);
        assert_eq!(
            resolve_features(&req, &device().active, &device().changeable),
            Err(("rx-lro".into(), FeatureProblem::Fixed { active: false }))
        );
        // Asking a fixed feature for the state it already has is fine.
        let req = BTreeMap::from([("rx-lro".to_string(), false)]);
        assert_eq!(
            resolve_features(&req, &device().active, &device().changeable),
            Ok(BTreeMap::new())
        );
    }
}
