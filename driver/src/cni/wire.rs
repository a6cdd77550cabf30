//! What `netclaim-cni` and the driver say on the driver's CNI socket: one JSON
//! [`Request`] line, one JSON [`Reply`] line, then the connection closes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the driver listens unless the CNI configuration's `socket` says otherwise
/// (inside the DaemonSet's state directory, `/var/run/netclaim`).
pub const DEFAULT_SOCKET: &str = "/var/run/netclaim/cni.sock";

/// The longest line either side reads.
pub const MAX_LINE: usize = 16 * 1024;

/// Longest pod UID, name, namespace or sandbox ID accepted (Kubernetes names are at
/// most 253 characters).
const MAX_FIELD: usize = 253;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    #[serde(rename = "ADD")]
    Add,
    #[serde(rename = "DEL")]
    Del,
}

/// One CNI call, as the plugin saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Request {
    pub command: Command,
    /// `CNI_CONTAINERID`: the pod sandbox's ID.
    pub sandbox: String,
    /// `CNI_NETNS`: the pod's network namespace (empty on a DEL of a closed one).
    pub netns: PathBuf,
    /// `K8S_POD_UID`, `K8S_POD_NAME`, `K8S_POD_NAMESPACE` of `CNI_ARGS`.
    pub pod_uid: String,
    pub pod_name: String,
    pub pod_namespace: String,
    /// `runtimeConfig.cgroupPath` (the pod's cgroup parent), when the configuration
    /// asks for the `cgroupPath` capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_path: Option<String>,
}

/// A request field the driver refuses.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("CNI request: {0}")]
    Json(#[source] serde_json::Error),
    #[error("CNI request field {field}: {problem}")]
    Field {
        field: &'static str,
        problem: &'static str,
    },
}

impl Request {
    /// Parses and checks one request line.
    pub fn parse(line: &str) -> Result<Self, WireError> {
        let req: Request = serde_json::from_str(line).map_err(WireError::Json)?;
        req.check()?;
        Ok(req)
    }

    fn check(&self) -> Result<(), WireError> {
        let bad = |field, problem| Err(WireError::Field { field, problem });
        for (field, value, required) in [
            ("sandbox", self.sandbox.as_str(), true),
            ("podUid", self.pod_uid.as_str(), true),
            ("podName", self.pod_name.as_str(), false),
            ("podNamespace", self.pod_namespace.as_str(), false),
        ] {
            if required && value.is_empty() {
                return bad(field, "is empty");
            }
            if value.len() > MAX_FIELD {
                return bad(field, "is longer than 253 bytes");
            }
            if value.chars().any(char::is_control) {
                return bad(field, "contains control characters");
            }
        }
        let netns = self.netns.as_os_str();
        if self.command == Command::Add && netns.is_empty() {
            return bad("netns", "is empty on an ADD");
        }
        if !netns.is_empty() && !self.netns.is_absolute() {
            return bad("netns", "is not an absolute path");
        }
        if netns.len() > 4096 {
            return bad("netns", "is longer than a path can be");
        }
        if let Some(c) = &self.cgroup_path {
            if c.len() > 4096 || c.chars().any(char::is_control) {
                return bad("cgroupPath", "is too long or contains control characters");
            }
        }
        Ok(())
    }

    /// `namespace/name` of the pod, or its UID when the runtime named it not.
    pub fn pod_label(&self) -> String {
        if self.pod_name.is_empty() {
            self.pod_uid.clone()
        } else {
            format!("{}/{}", self.pod_namespace, self.pod_name)
        }
    }
}

/// The driver's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum Reply {
    /// ADD: the hand-over of this many devices started.
    Started { devices: usize },
    /// ADD or DEL: nothing of this pod for the driver to do.
    Nothing,
    /// ADD: not started ahead; RunPodSandbox does the hand-over.
    Declined { reason: String },
    /// DEL: the devices in that namespace are on their way home.
    GivingBack,
    /// The request was refused or failed.
    Error { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add() -> serde_json::Value {
        serde_json::json!({"command": "ADD", "sandbox": "abc", "netns": "/var/run/netns/cni-1",
            "podUid": "u-1", "podName": "p", "podNamespace": "ns", "cgroupPath": "/kubepods/pod-u-1"})
    }

    #[test]
    fn a_request_round_trips() {
        let req = Request::parse(&add().to_string()).expect("valid");
        assert_eq!(req.command, Command::Add);
        assert_eq!(req.pod_label(), "ns/p");
        let again = Request::parse(&serde_json::to_string(&req).unwrap()).unwrap();
        assert_eq!(again, req);
    }

    #[test]
    fn bad_requests_name_their_field() {
        let cases: &[(&str, serde_json::Value, &str)] = &[
            ("podUid", serde_json::json!(""), "podUid"),
            ("sandbox", serde_json::json!(""), "sandbox"),
            ("netns", serde_json::json!("relative/path"), "netns"),
            ("netns", serde_json::json!(""), "netns"),
            ("podName", serde_json::json!("a\nb"), "podName"),
            ("podUid", serde_json::json!("x".repeat(300)), "podUid"),
            ("command", serde_json::json!("CHECK"), "unknown variant"),
            ("extra", serde_json::json!(1), "unknown field"),
        ];
        for (field, value, expect) in cases {
            let mut v = add();
            v[*field] = value.clone();
            let err = Request::parse(&v.to_string()).expect_err(field).to_string();
            assert!(err.contains(expect), "{field}: {err}");
        }
        assert!(Request::parse("{").is_err());
        // A DEL of a namespace containerd already found closed is fine.
        let mut del = add();
        del["command"] = "DEL".into();
        del["netns"] = "".into();
        assert!(Request::parse(&del.to_string()).is_ok());
    }
}
