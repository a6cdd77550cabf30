//! One checkpoint value: `sha256(json) ‖ json` of a [`ClaimPlans`], so a flipped bit
//! is caught even where redb itself does not notice, and a value filed under another
//! claim's UID is refused.

use sha2::{Digest, Sha256};

use super::super::plan::ClaimPlans;
use super::StateError;

pub(super) const DIGEST_LEN: usize = 32;

/// The value the store writes for `plans`: `sha256(json) ‖ json`.
pub fn encode_entry(plans: &ClaimPlans) -> Result<Vec<u8>, StateError> {
    encode(plans)
}

/// What the store does with every value it reads under claim UID `uid`: checks the
/// digest, parses the JSON and the UID it names. Public for the hostile-input tests
/// (tests/tests/hostile_input.rs), which feed it corrupt values directly.
pub fn decode_entry(uid: &str, value: &[u8]) -> Result<ClaimPlans, StateError> {
    decode(uid, value)
}

/// `sha256(json) ‖ json` of `plans`.
pub(super) fn encode(plans: &ClaimPlans) -> Result<Vec<u8>, StateError> {
    let json = serde_json::to_vec(plans).map_err(|err| StateError::Entry {
        uid: plans.claim.uid.clone(),
        message: err.to_string(),
    })?;
    let mut value = Vec::with_capacity(DIGEST_LEN + json.len());
    value.extend_from_slice(&Sha256::digest(&json));
    value.extend_from_slice(&json);
    Ok(value)
}

pub(super) fn decode(uid: &str, value: &[u8]) -> Result<ClaimPlans, StateError> {
    let entry_err = |message: String| StateError::Entry {
        uid: uid.to_owned(),
        message,
    };
    if value.len() < DIGEST_LEN {
        return Err(entry_err(format!(
            "value of {} bytes is too short",
            value.len()
        )));
    }
    let (digest, json) = value.split_at(DIGEST_LEN);
    if Sha256::digest(json).as_slice() != digest {
        return Err(entry_err("checksum mismatch".into()));
    }
    let plans: ClaimPlans =
        serde_json::from_slice(json).map_err(|err| entry_err(format!("bad JSON: {err}")))?;
    if plans.claim.uid != uid {
        return Err(entry_err(format!(
            "entry is for claim UID {}",
            plans.claim.uid
        )));
    }
    Ok(plans)
}
