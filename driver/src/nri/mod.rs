//! NRI: how the container runtime tells netclaim that a pod sandbox starts, stops or
//! goes away.
//!
//! Layers, bottom up, each in one file:
//! * [`mux`] — the multiplexer that carries two logical conns over the NRI unix socket;
//! * [`ttrpc`] — the minimal ttrpc client and server that run on those conns;
//! * [`api`] — the NRI messages, generated from `proto/nri.proto`;
//! * [`plugin`] — the NRI plugin: registers with the runtime, answers Configure and
//!   Synchronize and hands pod events to a [`PodHandler`]; reconnects when the runtime
//!   restarts.
//!
//! This module moves no interfaces itself: what happens to a pod is the handler's
//! business (netns and datapath work), so this layer is testable with a fake runtime.

pub mod mux;
pub mod plugin;
pub mod ttrpc;

/// The NRI API messages (package `nri.pkg.api.v1alpha1`), the subset netclaim uses.
pub mod api {
    #![allow(clippy::all)]
    tonic::include_proto!("nri.pkg.api.v1alpha1");

    impl PodSandbox {
        /// Path of the pod's network namespace (the `network` entry of
        /// `linux.namespaces`), if the runtime sent one.
        pub fn netns_path(&self) -> Option<&str> {
            self.linux
                .as_ref()?
                .namespaces
                .iter()
                .find(|ns| ns.r#type == "network")
                .map(|ns| ns.path.as_str())
                .filter(|path| !path.is_empty())
        }

        /// The pod's cgroup as the runtime names it (`linux.cgroup_parent`), if sent.
        pub fn cgroup_parent(&self) -> Option<&str> {
            self.linux
                .as_ref()
                .map(|l| l.cgroup_parent.as_str())
                .filter(|c| !c.is_empty())
        }

        /// `namespace/name` for logs and errors.
        pub fn display_name(&self) -> String {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

pub use api::PodSandbox;
pub use plugin::{NriError, NriPlugin, PluginConfig, PodHandler};

/// Default path of the runtime's NRI socket.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/nri/nri.sock";
/// ttrpc service the runtime serves (plugin calls it on conn 2).
pub const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";
/// ttrpc service the plugin serves (runtime calls it on conn 1).
pub const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";
/// Events netclaim subscribes to: Run, Stop and Remove pod sandbox.
pub const EVENT_MASK: i32 = event_bit(api::Event::RunPodSandbox)
    | event_bit(api::Event::StopPodSandbox)
    | event_bit(api::Event::RemovePodSandbox);

/// Bit of `event` in a Configure events mask: `1 << (event - 1)`.
pub const fn event_bit(event: api::Event) -> i32 {
    1 << (event as i32 - 1)
}

#[cfg(test)]
mod tests {
    use super::api::*;
    use prost::Message;

    #[test]
    fn event_mask_is_run_stop_remove() {
        assert_eq!(super::EVENT_MASK, 0x7);
    }

    #[test]
    fn netns_path_is_the_network_namespace() {
        let pod = PodSandbox {
            linux: Some(LinuxPodSandbox {
                namespaces: vec![
                    LinuxNamespace {
                        r#type: "ipc".into(),
                        path: "/proc/1/ns/ipc".into(),
                    },
                    LinuxNamespace {
                        r#type: "network".into(),
                        path: "/var/run/netns/cni-1".into(),
                    },
                ],
                cgroup_parent: "/kubepods/besteffort/pod1".into(),
            }),
            ..Default::default()
        };
        assert_eq!(pod.netns_path(), Some("/var/run/netns/cni-1"));
        assert_eq!(pod.cgroup_parent(), Some("/kubepods/besteffort/pod1"));
        assert_eq!(PodSandbox::default().netns_path(), None);
        assert_eq!(PodSandbox::default().cgroup_parent(), None);
    }

    #[test]
    fn wire_field_numbers() {
        // linux = 8 -> namespaces = 5 -> {type = 1, path = 2}
        let pod = PodSandbox {
            linux: Some(LinuxPodSandbox {
                namespaces: vec![LinuxNamespace {
                    r#type: "n".into(),
                    path: "p".into(),
                }],
                cgroup_parent: "c".into(),
            }),
            ..Default::default()
        };
        // linux = 8 -> cgroup_parent = 3 (upstream NRI api.proto)
        assert_eq!(
            pod.encode_to_vec(),
            vec![0x42, 11, 0x1a, 1, b'c', 0x2a, 6, 0x0a, 1, b'n', 0x12, 1, b'p']
        );
        let event = StateChangeEvent {
            event: Event::StopPodSandbox as i32,
            pod: None,
            container: None,
        };
        assert_eq!(event.encode_to_vec(), vec![0x08, 2]);
        let response = ConfigureResponse { events: 7 };
        assert_eq!(response.encode_to_vec(), vec![0x10, 7]);
        let register = RegisterPluginRequest {
            plugin_name: "a".into(),
            plugin_idx: "00".into(),
            nri_version: "v".into(),
        };
        assert_eq!(
            register.encode_to_vec(),
            vec![0x0a, 1, b'a', 0x12, 2, b'0', b'0', 0x1a, 1, b'v']
        );
    }
}
