//! netclaim's CNI plugin: a head start for the hand-over.
//!
//! containerd calls NRI's RunPodSandbox only after the pod's network is set up and its
//! pause container started, so a hand-over done in that hook adds a whole namespace
//! move to every pod start. Chained last in the node's CNI configuration, `netclaim-cni`
//! learns of the pod's namespace at the CNI ADD and asks the driver over a local socket
//! to start the hand-over then ([`crate::lifecycle::ahead`]); RunPodSandbox collects the
//! result. The CNI DEL brings back what an ahead start moved for a pod whose start the
//! runtime gave up.
//!
//! The plugin never fails a pod's network for netclaim's sake: when the driver is not
//! there, declines or is slow, it passes the previous result on and the hook does the
//! whole hand-over, as without the plugin.
//!
//! * [`wire`]: the request and reply lines on the socket;
//! * [`plugin`]: the CNI side (environment, network configuration, result);
//! * [`server`]: the driver's side of the socket.

pub mod plugin;
pub mod server;
pub mod wire;
