//! Links whose names netclaim cannot publish.
//!
//! The kernel accepts any bytes in an interface name except `/`, `:`, whitespace and
//! NUL; netlink libraries decode names as UTF-8 and drop the whole link message when a
//! name is not. Such a link is therefore never published. This module finds those
//! links itself (`if_nameindex` in the calling thread's namespace, which sees raw
//! bytes) and says so once per link, instead of the decoder's error on every scan.

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

/// A link whose name is not UTF-8: its index and its name with the bytes escaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UndecodableName {
    pub ifindex: u32,
    pub escaped: String,
}

/// The links in `links` (index, raw name) whose names are not UTF-8.
pub fn undecodable<'a>(links: impl IntoIterator<Item = (u32, &'a [u8])>) -> Vec<UndecodableName> {
    links
        .into_iter()
        .filter(|(_, name)| std::str::from_utf8(name).is_err())
        .map(|(ifindex, name)| UndecodableName {
            ifindex,
            escaped: name.escape_ascii().to_string(),
        })
        .collect()
}

/// Remembers which links were already reported, so each is reported once.
#[derive(Debug, Default)]
pub struct Reported(BTreeSet<(u32, String)>);

impl Reported {
    /// Whether `link` is reported for the first time (and records it).
    pub fn first_time(&mut self, link: &UndecodableName) -> bool {
        self.0.insert((link.ifindex, link.escaped.clone()))
    }
}

/// Finds the links of the calling thread's namespace whose names are not UTF-8 and
/// logs one warning for each link not reported before in this process. Returns them.
pub fn report_undecodable() -> Vec<UndecodableName> {
    let Ok(interfaces) = nix::net::if_::if_nameindex() else {
        return Vec::new();
    };
    let found = undecodable(interfaces.iter().map(|i| (i.index(), i.name().to_bytes())));
    static REPORTED: OnceLock<Mutex<Reported>> = OnceLock::new();
    let mut reported = REPORTED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    for link in &found {
        if reported.first_time(link) {
            tracing::warn!(
                ifindex = link.ifindex,
                name = %link.escaped,
                "link name is not UTF-8; the link is not published (rename it to publish it)"
            );
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_that_are_not_utf8_and_each_once() {
        let links: [(u32, &[u8]); 3] = [(2, b"eth0"), (3, b"ab\xffc"), (4, "n\u{e9}t".as_bytes())];
        let found = undecodable(links);
        assert_eq!(
            found,
            vec![UndecodableName {
                ifindex: 3,
                escaped: "ab\\xffc".into()
            }]
        );
        let mut reported = Reported::default();
        assert!(reported.first_time(&found[0]));
        assert!(!reported.first_time(&found[0]), "reported once");
    }
}
