//! `netclaim-testbed`: the test stand-ins as processes, for trying the driver by hand
//! or from scripts without a cluster.
//!
//! * `netclaim-testbed apiserver --kubeconfig /tmp/kc [--load claims.yaml]...` runs the
//!   fake API server until interrupted; point the driver at the kubeconfig.
//! * `netclaim-testbed kubelet --dir /tmp/kubelet --driver netclaim.dev
//!   [--refuse "message"] [--version v1|v1beta1] [--prepare ns/name/uid]...
//!   [--unprepare ns/name/uid]... [--watch-health]` plays kubelet: waits for the
//!   registration socket, registers (or refuses), runs the calls and prints the answers
//!   as JSON lines.
//! * `netclaim-testbed runtime --socket /tmp/nri.sock [--mode current|legacy]
//!   [--sync-pod id,ns/name,uid,netns]...` plays the runtime's NRI side; see
//!   `netclaim_tests::runtime::serve_cli`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use netclaim::kubelet::ClaimRef;
use netclaim_tests::apiserver::FakeApiServer;
use netclaim_tests::kubelet::{DraVersion, FakeKubelet, Verdict};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "netclaim-testbed",
    about = "Fake API server and fake kubelet for netclaim"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the fake Kubernetes API server.
    Apiserver {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Where to write the kubeconfig.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// YAML files of objects to load at start (multi-document).
        #[arg(long)]
        load: Vec<PathBuf>,
    },
    /// Play kubelet against a driver.
    Kubelet {
        /// Kubelet root directory (holds plugins_registry/).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = netclaim::DEFAULT_DRIVER_NAME)]
        driver: String,
        /// Refuse the registration with this error.
        #[arg(long)]
        refuse: Option<String>,
        /// DRA version to call: v1 or v1beta1 (default: what kubelet 1.34 picks).
        #[arg(long)]
        version: Option<String>,
        /// Claims to prepare, as namespace/name/uid.
        #[arg(long)]
        prepare: Vec<String>,
        /// Claims to unprepare, as namespace/name/uid.
        #[arg(long)]
        unprepare: Vec<String>,
        /// Print health updates until interrupted.
        #[arg(long)]
        watch_health: bool,
        /// Seconds to wait for the registration socket.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Play the container runtime's NRI side; pod events come from stdin
    /// (`run|stop|remove id,namespace/name,uid,netns`), outcomes go to stdout as JSON.
    Runtime(netclaim_tests::runtime::RuntimeArgs),
}

fn claim_ref(text: &str) -> anyhow::Result<ClaimRef> {
    let parts: Vec<&str> = text.split('/').collect();
    match parts.as_slice() {
        [namespace, name, uid] => Ok(ClaimRef {
            namespace: (*namespace).into(),
            name: (*name).into(),
            uid: (*uid).into(),
        }),
        _ => bail!("claim {text:?}: expected namespace/name/uid"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Runtime(args) => netclaim_tests::runtime::serve_cli(args).await,
        Command::Apiserver {
            listen,
            kubeconfig,
            load,
        } => {
            let server = FakeApiServer::start_on(listen, Some(kubeconfig.clone())).await?;
            for file in &load {
                let objects = server.load_yaml_file(file)?;
                eprintln!("loaded {} objects from {}", objects.len(), file.display());
            }
            println!("{}", json!({"url": server.url(), "kubeconfig": kubeconfig}));
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
        Command::Kubelet {
            dir,
            driver,
            refuse,
            version,
            prepare,
            unprepare,
            watch_health,
            timeout,
        } => {
            let kubelet = FakeKubelet::new(dir);
            let verdict = match refuse {
                Some(message) => Verdict::Refuse(message),
                None => Verdict::Accept,
            };
            let refused = matches!(verdict, Verdict::Refuse(_));
            let registered = kubelet
                .wait_and_register(&driver, verdict, Duration::from_secs(timeout))
                .await?;
            println!(
                "{}",
                json!({
                    "type": registered.info.r#type,
                    "name": registered.info.name,
                    "endpoint": registered.info.endpoint,
                    "supportedVersions": registered.info.supported_versions,
                })
            );
            if refused {
                return Ok(());
            }
            let version = match version.as_deref() {
                Some("v1") => DraVersion::V1,
                Some("v1beta1") => DraVersion::V1beta1,
                Some(other) => bail!("unknown DRA version {other:?}"),
                None => DraVersion::preferred(&registered.info)
                    .context("the plugin advertises no DRA version")?,
            };
            let dra = registered.dra(version).await?;
            if !prepare.is_empty() {
                let claims = prepare
                    .iter()
                    .map(|c| claim_ref(c))
                    .collect::<Result<Vec<_>, _>>()?;
                for (uid, answer) in dra.prepare(&claims).await? {
                    let devices: Vec<_> = answer
                        .devices
                        .iter()
                        .map(|d| json!({"requests": d.request_names, "pool": d.pool, "device": d.device}))
                        .collect();
                    println!(
                        "{}",
                        json!({"prepare": uid, "devices": devices, "error": answer.error})
                    );
                }
            }
            if !unprepare.is_empty() {
                let claims = unprepare
                    .iter()
                    .map(|c| claim_ref(c))
                    .collect::<Result<Vec<_>, _>>()?;
                for (uid, error) in dra.unprepare(&claims).await? {
                    println!("{}", json!({"unprepare": uid, "error": error}));
                }
            }
            if watch_health {
                let mut watch = registered.health().await?;
                while let Some(list) = watch.next(Duration::from_secs(24 * 3600)).await? {
                    let devices: Vec<_> = list
                        .iter()
                        .map(|d| json!({"pool": d.pool, "device": d.device, "health": d.status.as_str_name()}))
                        .collect();
                    println!("{}", json!({"health": devices}));
                }
            }
            Ok(())
        }
    }
}
