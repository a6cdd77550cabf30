//! The last decoded form of each claim's stored entry. Reading a claim back means a
//! checksum and a JSON parse of everything its devices record (host originals, the
//! validated config): for a claim of eight devices about 30 KB and 0.2–0.35 ms, paid
//! twice on every pod start (its `Entering` and its `InPod` record) and again when the
//! pod's plans are looked up. An entry whose bytes are exactly the bytes decoded last
//! time is given back as it was decoded; any other bytes are decoded afresh. The
//! comparison is of the whole entry, so what is returned never differs from what a
//! decode would return, whoever wrote the database meanwhile.

use std::collections::HashMap;
use std::sync::Mutex;

use super::super::plan::ClaimPlans;
use super::entry::decode;
use crate::state::StateError;

/// Entries by claim UID: the stored bytes and what they decode to.
#[derive(Debug, Default)]
pub(super) struct Decoded {
    entries: Mutex<HashMap<String, (Vec<u8>, ClaimPlans)>>,
}

impl Decoded {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Vec<u8>, ClaimPlans)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `value`, claim `uid`'s stored entry, decodes to.
    pub(super) fn decode(&self, uid: &str, value: &[u8]) -> Result<ClaimPlans, StateError> {
        if let Some((bytes, plans)) = self.entries().get(uid) {
            if bytes.as_slice() == value {
                return Ok(plans.clone());
            }
        }
        let plans = decode(uid, value)?;
        self.remember(uid, value, &plans);
        Ok(plans)
    }

    /// Records that `value` decodes to `plans` (the caller encoded one from the other).
    pub(super) fn remember(&self, uid: &str, value: &[u8], plans: &ClaimPlans) {
        self.entries()
            .insert(uid.to_string(), (value.to_vec(), plans.clone()));
    }

    /// Forgets claim `uid` (its entry is gone).
    pub(super) fn forget(&self, uid: &str) {
        self.entries().remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::super::entry::encode;
    use super::super::tests::sample;
    use super::*;

    #[test]
    fn the_same_bytes_give_what_they_decoded_to_and_other_bytes_are_decoded_afresh() {
        let d = Decoded::default();
        let first = sample("uid-1");
        let first_bytes = encode(&first).expect("encode");
        assert_eq!(d.decode("uid-1", &first_bytes).expect("decode"), first);
        // Written elsewhere meanwhile: other bytes, their own content.
        let mut second = first.clone();
        second.plans[0].device = "eth-other".into();
        let second_bytes = encode(&second).expect("encode");
        assert_eq!(d.decode("uid-1", &second_bytes).expect("decode"), second);
        assert_eq!(d.decode("uid-1", &first_bytes).expect("decode"), first);
    }

    #[test]
    fn a_corrupt_entry_is_refused_even_after_a_good_one() {
        let d = Decoded::default();
        let plans = sample("uid-1");
        let mut bytes = encode(&plans).expect("encode");
        d.decode("uid-1", &bytes).expect("decode");
        let last = bytes.len() - 2;
        bytes[last] ^= 0x01;
        assert!(d.decode("uid-1", &bytes).is_err());
    }

    #[test]
    fn a_forgotten_claim_is_decoded_again() {
        let d = Decoded::default();
        let plans = sample("uid-1");
        let bytes = encode(&plans).expect("encode");
        d.remember("uid-1", &bytes, &plans);
        d.forget("uid-1");
        assert!(d.entries().is_empty());
        assert_eq!(d.decode("uid-1", &bytes).expect("decode"), plans);
    }
}
