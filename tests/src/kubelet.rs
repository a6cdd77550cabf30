//! A fake kubelet for tests: the plugin-manager half (watch `plugins_registry`, call
//! `GetInfo`, answer `NotifyRegistrationStatus` with success or a chosen error) and the
//! DRA client half (`NodePrepareResources` / `NodeUnprepareResources` over v1 or
//! v1beta1, and the `v1alpha1` health watch), speaking the real gRPC protocols over
//! the sockets the driver created.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper_util::rt::TokioIo;
use netclaim::kubelet::proto::{dra_v1, dra_v1beta1, health_v1alpha1, pluginregistration};
use netclaim::kubelet::ClaimRef;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The two DRA service versions kubelet may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DraVersion {
    V1,
    V1beta1,
}

impl DraVersion {
    /// What kubelet 1.34+ does: v1 if advertised, else v1beta1.
    pub fn preferred(info: &pluginregistration::PluginInfo) -> Option<Self> {
        let has = |v: &str| info.supported_versions.iter().any(|s| s == v);
        if has("v1.DRAPlugin") {
            Some(Self::V1)
        } else if has("v1beta1.DRAPlugin") {
            Some(Self::V1beta1)
        } else {
            None
        }
    }
}

/// Identity of one socket file: a re-created socket may reuse the inode number but
/// not its change time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketId {
    inode: u64,
    ctime: (i64, i64),
}

/// How the fake kubelet answers a registration.
#[derive(Clone, Debug)]
pub enum Verdict {
    Accept,
    Refuse(String),
}

/// One device of a prepared claim, version-independent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Device {
    pub request_names: Vec<String>,
    pub pool: String,
    pub device: String,
    pub cdi_device_ids: Vec<String>,
    pub share_id: Option<String>,
}

/// A claim's answer to a prepare call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrepareAnswer {
    pub devices: Vec<Device>,
    pub error: String,
}

/// A plugin the fake kubelet registered.
#[derive(Clone, Debug)]
pub struct Registered {
    pub info: pluginregistration::PluginInfo,
    pub registration_socket: PathBuf,
}

/// The fake kubelet of one kubelet directory.
#[derive(Clone, Debug)]
pub struct FakeKubelet {
    dir: PathBuf,
}

impl FakeKubelet {
    pub fn new(kubelet_dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: kubelet_dir.into(),
        }
    }

    pub fn registry_dir(&self) -> PathBuf {
        self.dir.join("plugins_registry")
    }

    /// Waits until `<driver>-reg.sock` exists and is a different file than `not`
    /// (to see a re-created socket). Returns its path and identity.
    pub async fn wait_for_socket(
        &self,
        driver: &str,
        not: Option<SocketId>,
        timeout: Duration,
    ) -> anyhow::Result<(PathBuf, SocketId)> {
        let path = self.registry_dir().join(format!("{driver}-reg.sock"));
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                let id = SocketId {
                    inode: meta.ino(),
                    ctime: (meta.ctime(), meta.ctime_nsec()),
                };
                if Some(id) != not {
                    return Ok((path, id));
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no (new) registration socket {} after {timeout:?}",
                    path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What kubelet's plugin manager does with a new socket: `GetInfo`, check it is a
    /// DRA plugin, then `NotifyRegistrationStatus`.
    pub async fn register(&self, socket: &Path, verdict: Verdict) -> anyhow::Result<Registered> {
        let channel = unix_channel(socket).await?;
        let mut client = pluginregistration::registration_client::RegistrationClient::new(channel);
        let info = client
            .get_info(pluginregistration::InfoRequest {})
            .await
            .context("GetInfo")?
            .into_inner();
        let status = match (&verdict, info.r#type.as_str()) {
            (Verdict::Accept, "DRAPlugin") => pluginregistration::RegistrationStatus {
                plugin_registered: true,
                error: String::new(),
            },
            (Verdict::Accept, other) => pluginregistration::RegistrationStatus {
                plugin_registered: false,
                error: format!("plugin type {other:?} is not DRAPlugin"),
            },
            (Verdict::Refuse(error), _) => pluginregistration::RegistrationStatus {
                plugin_registered: false,
                error: error.clone(),
            },
        };
        client
            .notify_registration_status(status)
            .await
            .context("NotifyRegistrationStatus")?;
        Ok(Registered {
            info,
            registration_socket: socket.to_owned(),
        })
    }

    /// [`FakeKubelet::wait_for_socket`] then [`FakeKubelet::register`].
    pub async fn wait_and_register(
        &self,
        driver: &str,
        verdict: Verdict,
        timeout: Duration,
    ) -> anyhow::Result<Registered> {
        let (socket, _) = self.wait_for_socket(driver, None, timeout).await?;
        self.register(&socket, verdict).await
    }
}

impl Registered {
    /// A DRA client on the advertised endpoint.
    pub async fn dra(&self, version: DraVersion) -> anyhow::Result<DraClient> {
        Ok(DraClient {
            version,
            channel: unix_channel(Path::new(&self.info.endpoint)).await?,
        })
    }

    /// The health watch on the advertised endpoint.
    pub async fn health(&self) -> anyhow::Result<HealthWatch> {
        let channel = unix_channel(Path::new(&self.info.endpoint)).await?;
        let mut client =
            health_v1alpha1::dra_resource_health_client::DraResourceHealthClient::new(channel);
        let stream = client
            .node_watch_resources(health_v1alpha1::NodeWatchResourcesRequest {})
            .await
            .context("NodeWatchResources")?
            .into_inner();
        Ok(HealthWatch { stream })
    }
}

/// `NodePrepareResources` / `NodeUnprepareResources` over one version.
pub struct DraClient {
    version: DraVersion,
    channel: Channel,
}

impl DraClient {
    pub fn version(&self) -> DraVersion {
        self.version
    }

    pub async fn prepare(
        &self,
        claims: &[ClaimRef],
    ) -> anyhow::Result<BTreeMap<String, PrepareAnswer>> {
        Ok(match self.version {
            DraVersion::V1 => {
                let mut client =
                    dra_v1::dra_plugin_client::DraPluginClient::new(self.channel.clone());
                let request = dra_v1::NodePrepareResourcesRequest {
                    claims: claims
                        .iter()
                        .map(|c| dra_v1::Claim {
                            namespace: c.namespace.clone(),
                            uid: c.uid.clone(),
                            name: c.name.clone(),
                        })
                        .collect(),
                };
                let response = client.node_prepare_resources(request).await?.into_inner();
                response
                    .claims
                    .into_iter()
                    .map(|(uid, r)| {
                        let devices = r
                            .devices
                            .into_iter()
                            .map(|d| Device {
                                request_names: d.request_names,
                                pool: d.pool_name,
                                device: d.device_name,
                                cdi_device_ids: d.cdi_device_ids,
                                share_id: d.share_id,
                            })
                            .collect();
                        (
                            uid,
                            PrepareAnswer {
                                devices,
                                error: r.error,
                            },
                        )
                    })
                    .collect()
            }
            DraVersion::V1beta1 => {
                let mut client =
                    dra_v1beta1::dra_plugin_client::DraPluginClient::new(self.channel.clone());
                let request = dra_v1beta1::NodePrepareResourcesRequest {
                    claims: claims
                        .iter()
                        .map(|c| dra_v1beta1::Claim {
                            namespace: c.namespace.clone(),
                            uid: c.uid.clone(),
                            name: c.name.clone(),
                        })
                        .collect(),
                };
                let response = client.node_prepare_resources(request).await?.into_inner();
                response
                    .claims
                    .into_iter()
                    .map(|(uid, r)| {
                        let devices = r
                            .devices
                            .into_iter()
                            .map(|d| Device {
                                request_names: d.request_names,
                                pool: d.pool_name,
                                device: d.device_name,
                                cdi_device_ids: d.cdi_device_ids,
                                share_id: None,
                            })
                            .collect();
                        (
                            uid,
                            PrepareAnswer {
                                devices,
                                error: r.error,
                            },
                        )
                    })
                    .collect()
            }
        })
    }

    /// Per-claim error strings (empty = success).
    pub async fn unprepare(&self, claims: &[ClaimRef]) -> anyhow::Result<BTreeMap<String, String>> {
        Ok(match self.version {
            DraVersion::V1 => {
                let mut client =
                    dra_v1::dra_plugin_client::DraPluginClient::new(self.channel.clone());
                let request = dra_v1::NodeUnprepareResourcesRequest {
                    claims: claims
                        .iter()
                        .map(|c| dra_v1::Claim {
                            namespace: c.namespace.clone(),
                            uid: c.uid.clone(),
                            name: c.name.clone(),
                        })
                        .collect(),
                };
                let response = client.node_unprepare_resources(request).await?.into_inner();
                response
                    .claims
                    .into_iter()
                    .map(|(uid, r)| (uid, r.error))
                    .collect()
            }
            DraVersion::V1beta1 => {
                let mut client =
                    dra_v1beta1::dra_plugin_client::DraPluginClient::new(self.channel.clone());
                let request = dra_v1beta1::NodeUnprepareResourcesRequest {
                    claims: claims
                        .iter()
                        .map(|c| dra_v1beta1::Claim {
                            namespace: c.namespace.clone(),
                            uid: c.uid.clone(),
                            name: c.name.clone(),
                        })
                        .collect(),
                };
                let response = client.node_unprepare_resources(request).await?.into_inner();
                response
                    .claims
                    .into_iter()
                    .map(|(uid, r)| (uid, r.error))
                    .collect()
            }
        })
    }
}

/// One device's health as kubelet sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    pub pool: String,
    pub device: String,
    pub status: health_v1alpha1::HealthStatus,
}

/// A running `NodeWatchResources` stream.
pub struct HealthWatch {
    stream: tonic::Streaming<health_v1alpha1::NodeWatchResourcesResponse>,
}

impl HealthWatch {
    /// The next full list; `None` when the driver ended the stream.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<Vec<HealthReport>>> {
        let message = tokio::time::timeout(timeout, self.stream.message())
            .await
            .context("no health update in time")??;
        Ok(message.map(|m| {
            m.devices
                .into_iter()
                .map(|d| {
                    let id = d.device.unwrap_or_default();
                    HealthReport {
                        pool: id.pool_name,
                        device: id.device_name,
                        status: health_v1alpha1::HealthStatus::try_from(d.health)
                            .unwrap_or(health_v1alpha1::HealthStatus::Unknown),
                    }
                })
                .collect()
        }))
    }
}

/// A gRPC channel over a unix socket.
pub async fn unix_channel(path: &Path) -> anyhow::Result<Channel> {
    let path = path.to_owned();
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .context("connect")?;
    Ok(channel)
}
