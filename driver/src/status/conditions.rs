//! The conditions of one device's status entry and their transitions (pure).
//!
//! `lastTransitionTime` changes only when a condition's `status` changes; a new
//! reason or message with the same status keeps the time. Times are RFC 3339 in UTC
//! with second precision, as `metav1.Time` serialises.

use serde::{Deserialize, Serialize};

/// `Ready`: the device is in the pod and usable.
pub const READY: &str = "Ready";
/// `NetworkReady`: addresses and routes applied.
pub const NETWORK_READY: &str = "NetworkReady";
/// `DataPathReady`: programs attached, policy loaded.
pub const DATAPATH_READY: &str = "DataPathReady";

/// One `metav1.Condition`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
}

/// What a condition should say now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl Desired {
    pub fn ok(type_: &'static str, reason: &str) -> Self {
        Self {
            type_,
            ok: true,
            reason: reason.into(),
            message: String::new(),
        }
    }

    pub fn failed(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            ok: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The new condition list: `desired` in order, each keeping the transition time of
/// the same type in `previous` when its status did not change.
pub fn transition(previous: &[Condition], desired: &[Desired], now: &str) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = if d.ok { "True" } else { "False" };
            let time = previous
                .iter()
                .find(|p| p.type_ == d.type_ && p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.to_string());
            Condition {
                type_: d.type_.to_string(),
                status: status.to_string(),
                reason: d.reason.clone(),
                message: d.message.clone(),
                last_transition_time: time,
            }
        })
        .collect()
}

/// The current time as `metav1.Time` text.
pub fn now_rfc3339() -> String {
    rfc3339(crate::unix_now())
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_748_082_351), "2025-05-24T10:25:51Z");
    }

    #[test]
    fn time_changes_only_on_transition() {
        let first = transition(&[], &[Desired::ok(READY, "NetworkDeviceReady")], "t1");
        assert_eq!(first[0].last_transition_time, "t1");
        let same = transition(&first, &[Desired::ok(READY, "Other")], "t2");
        assert_eq!(same[0].last_transition_time, "t1");
        assert_eq!(same[0].reason, "Other");
        let flipped = transition(&same, &[Desired::failed(READY, "LinkDown", "x")], "t3");
        assert_eq!(flipped[0].last_transition_time, "t3");
        assert_eq!(flipped[0].status, "False");
    }
}
