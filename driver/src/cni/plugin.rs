//! The CNI side of `netclaim-cni` (CNI spec 1.1, and the 0.3/0.4/1.0 results a chain
//! passes on): read the call from the environment and the network configuration on
//! stdin, tell the driver ([`ask`]), print what the runtime expects.
//!
//! [`invoke`] decides everything from its inputs and takes the socket exchange as a
//! function, so every command and every failure of the driver is unit-tested; `main`
//! only wires the process's environment, stdin and stdout to it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::wire::{Command, Reply, Request, DEFAULT_SOCKET, MAX_LINE};

/// The versions whose configuration and result this plugin reads and passes on.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// How long an ADD waits for the driver: it only has to take the pod's turn.
pub const ADD_WAIT: Duration = Duration::from_secs(1);
/// How long a DEL waits: until a running hand-over of the pod is over.
pub const DEL_WAIT: Duration = Duration::from_secs(10);

/// CNI error codes (spec, "Error codes").
const CODE_INCOMPATIBLE_VERSION: u32 = 1;
const CODE_INVALID_ENV: u32 = 4;
const CODE_DECODE: u32 = 6;
const CODE_INVALID_CONFIG: u32 = 7;

/// What the process prints and how it exits.
#[derive(Debug, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Output {
    fn ok(stdout: String, stderr: String) -> Self {
        Self {
            stdout,
            stderr,
            code: 0,
        }
    }

    fn error(version: &str, code: u32, msg: &str, details: String) -> Self {
        let body = json!({"cniVersion": version, "code": code, "msg": msg, "details": details});
        Self {
            stdout: body.to_string(),
            stderr: String::new(),
            code: 1,
        }
    }
}

/// `CNI_ARGS` (`K=V;K=V`) as a map; malformed pairs are left out.
pub fn parse_args(args: &str) -> BTreeMap<String, String> {
    args.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .collect()
}

/// Runs one CNI call. `env` reads an environment variable; `ask` sends a request to
/// the driver's socket within a time limit.
pub fn invoke(
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
    ask: &mut dyn FnMut(&Path, &Request, Duration) -> std::io::Result<Reply>,
) -> Output {
    let Some(command) = env("CNI_COMMAND") else {
        return Output::error(
            "1.1.0",
            CODE_INVALID_ENV,
            "CNI_COMMAND is not set",
            String::new(),
        );
    };
    let conf: Value = if stdin.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(stdin) {
            Ok(v) => v,
            Err(e) => {
                return Output::error(
                    "1.1.0",
                    CODE_DECODE,
                    "the network configuration on stdin is not JSON",
                    e.to_string(),
                )
            }
        }
    };
    let version = conf
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("1.1.0")
        .to_string();
    if command == "VERSION" {
        return Output::ok(
            json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS}).to_string(),
            String::new(),
        );
    }
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Output::error(
            &version,
            CODE_INCOMPATIBLE_VERSION,
            "unsupported cniVersion",
            format!("netclaim-cni supports {}", SUPPORTED_VERSIONS.join(", ")),
        );
    }
    let command = match command.as_str() {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        // Nothing of netclaim's is part of the pod's network to check or collect.
        "CHECK" | "STATUS" | "GC" => return Output::ok(String::new(), String::new()),
        other => {
            return Output::error(
                &version,
                CODE_INVALID_ENV,
                "unknown CNI_COMMAND",
                format!("{other:?}"),
            )
        }
    };
    let result = match command {
        Command::Add => match conf.get("prevResult") {
            Some(Value::Object(prev)) => {
                let mut out = prev.clone();
                out.insert("cniVersion".into(), Value::String(version.clone()));
                Value::Object(out).to_string()
            }
            _ => {
                return Output::error(
                    &version,
                    CODE_INVALID_CONFIG,
                    "netclaim-cni has no prevResult",
                    "chain it after the plugin that sets up the pod's network (last in the plugins list)".into(),
                )
            }
        },
        Command::Del => String::new(),
    };
    let socket = match conf.get("socket") {
        None => PathBuf::from(DEFAULT_SOCKET),
        Some(Value::String(s)) if Path::new(s).is_absolute() => PathBuf::from(s),
        Some(other) => {
            return Output::error(
                &version,
                CODE_INVALID_CONFIG,
                "netclaim-cni configuration field socket must be an absolute path",
                other.to_string(),
            )
        }
    };
    let args = parse_args(&env("CNI_ARGS").unwrap_or_default());
    let Some(pod_uid) = args.get("K8S_POD_UID").filter(|u| !u.is_empty()) else {
        // Not a Kubernetes pod: nothing of netclaim's can be claimed for it.
        return Output::ok(result, String::new());
    };
    let request = Request {
        command,
        sandbox: env("CNI_CONTAINERID").unwrap_or_default(),
        netns: PathBuf::from(env("CNI_NETNS").unwrap_or_default()),
        pod_uid: pod_uid.clone(),
        pod_name: args.get("K8S_POD_NAME").cloned().unwrap_or_default(),
        pod_namespace: args.get("K8S_POD_NAMESPACE").cloned().unwrap_or_default(),
        cgroup_path: conf
            .pointer("/runtimeConfig/cgroupPath")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    let wait = match command {
        Command::Add => ADD_WAIT,
        Command::Del => DEL_WAIT,
    };
    // Whatever the driver answers, the pod's network stands: RunPodSandbox does the
    // hand-over when it was not started here, and the keeper returns what a DEL missed.
    let note = match ask(&socket, &request, wait) {
        Ok(Reply::Started { devices }) => format!("hand-over of {devices} device(s) started"),
        Ok(Reply::Nothing) => String::new(),
        Ok(Reply::GivingBack) => "devices are on their way home".into(),
        Ok(Reply::Declined { reason }) => format!("not started ahead: {reason}"),
        Ok(Reply::Error { message }) => format!("the driver refused: {message}"),
        Err(e) => format!("driver at {} not reached: {e}", socket.display()),
    };
    Output::ok(result, note)
}

/// Sends `req` to the driver at `socket` and reads its reply, all within `wait`.
pub fn ask(socket: &Path, req: &Request, wait: Duration) -> std::io::Result<Reply> {
    let deadline = std::time::Instant::now() + wait;
    let left = || {
        deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))
    };
    let mut stream = UnixStream::connect(socket)?;
    stream.set_write_timeout(Some(left()?))?;
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    stream.set_read_timeout(Some(left()?))?;
    let mut reply = String::new();
    BufReader::new(stream.take(MAX_LINE as u64)).read_line(&mut reply)?;
    serde_json::from_str(&reply)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The process: environment, stdin, the driver's socket, stdout, exit code.
pub fn main() -> i32 {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().take(1 << 20).read_to_end(&mut stdin) {
        let out = Output::error("1.1.0", CODE_DECODE, "reading stdin", e.to_string());
        print!("{}", out.stdout);
        return out.code;
    }
    let out = invoke(&|k| std::env::var(k).ok(), &stdin, &mut ask);
    if !out.stderr.is_empty() {
        eprintln!("netclaim-cni: {}", out.stderr);
    }
    print!("{}", out.stdout);
    let _ = std::io::stdout().flush();
    out.code
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREV: &str = r#"{"cniVersion":"1.0.0","name":"pods","type":"netclaim","socket":"/run/nc/cni.sock",
        "runtimeConfig":{"cgroupPath":"/kubepods/podu1"},
        "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/cni-1"}],
            "ips":[{"address":"203.0.113.130/25","interface":0}]}}"#;

    fn env_of<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn k8s(command: &'static str) -> Vec<(&'static str, &'static str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "sb-1"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=sb-1;K8S_POD_UID=u1",
            ),
        ]
    }

    #[test]
    fn add_passes_the_previous_result_on_and_tells_the_driver() {
        let vars = k8s("ADD");
        let mut asked = Vec::new();
        let out = invoke(&env_of(&vars), PREV.as_bytes(), &mut |s, r, w| {
            asked.push((s.to_path_buf(), r.clone(), w));
            Ok(Reply::Started { devices: 2 })
        });
        assert_eq!(out.code, 0, "{out:?}");
        let printed: Value = serde_json::from_str(&out.stdout).unwrap();
        let prev: Value = serde_json::from_str(PREV).unwrap();
        assert_eq!(printed, prev["prevResult"]);
        assert_eq!(asked.len(), 1);
        let (socket, req, wait) = &asked[0];
        assert_eq!(socket, Path::new("/run/nc/cni.sock"));
        assert_eq!(*wait, ADD_WAIT);
        assert_eq!(
            req,
            &Request {
                command: Command::Add,
                sandbox: "sb-1".into(),
                netns: "/var/run/netns/cni-1".into(),
                pod_uid: "u1".into(),
                pod_name: "p".into(),
                pod_namespace: "ns".into(),
                cgroup_path: Some("/kubepods/podu1".into()),
            }
        );
        assert!(out.stderr.contains("2 device"), "{}", out.stderr);
    }

    #[test]
    fn the_pod_network_stands_whatever_the_driver_does() {
        let vars = k8s("ADD");
        for reply in [
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            Err(std::io::Error::from(std::io::ErrorKind::TimedOut)),
            Ok(Reply::Error {
                message: "bad".into(),
            }),
            Ok(Reply::Declined {
                reason: "no cgroup".into(),
            }),
            Ok(Reply::Nothing),
        ] {
            let mut reply = Some(reply);
            let out = invoke(&env_of(&vars), PREV.as_bytes(), &mut |_, _, _| {
                reply.take().expect("asked once")
            });
            assert_eq!(out.code, 0, "{out:?}");
            let printed: Value = serde_json::from_str(&out.stdout).unwrap();
            assert_eq!(printed["ips"][0]["address"], "203.0.113.130/25");
        }
    }

    #[test]
    fn del_asks_with_the_long_wait_and_prints_nothing() {
        let vars = k8s("DEL");
        let mut waits = Vec::new();
        let out = invoke(&env_of(&vars), PREV.as_bytes(), &mut |_, r, w| {
            assert_eq!(r.command, Command::Del);
            waits.push(w);
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        });
        assert_eq!((out.code, out.stdout.as_str()), (0, ""));
        assert_eq!(waits, vec![DEL_WAIT]);
    }

    #[test]
    fn version_check_and_non_kubernetes_calls_do_not_reach_the_driver() {
        let mut never = |_: &Path, _: &Request, _: Duration| -> std::io::Result<Reply> {
            panic!("must not ask the driver")
        };
        let out = invoke(
            &env_of(&[("CNI_COMMAND", "VERSION")]),
            br#"{"cniVersion":"1.0.0"}"#,
            &mut never,
        );
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert!(v["supportedVersions"].as_array().unwrap().len() >= 4);
        for cmd in ["CHECK", "STATUS", "GC"] {
            let out = invoke(
                &env_of(&[("CNI_COMMAND", cmd)]),
                PREV.as_bytes(),
                &mut never,
            );
            assert_eq!(out.code, 0, "{cmd}");
        }
        let plain = [("CNI_COMMAND", "ADD"), ("CNI_NETNS", "/var/run/netns/x")];
        let out = invoke(&env_of(&plain), PREV.as_bytes(), &mut never);
        assert_eq!(out.code, 0);
        assert!(out.stdout.contains("203.0.113.130"));
    }

    #[test]
    fn misconfiguration_is_a_cni_error_naming_what_is_wrong() {
        let mut never = |_: &Path, _: &Request, _: Duration| -> std::io::Result<Reply> {
            panic!("must not ask the driver")
        };
        // (environment, stdin, CNI error code, what the error mentions)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, u32, &'a str);
        let cases: &[Case] = &[
            (&[], PREV, CODE_INVALID_ENV, "CNI_COMMAND"),
            (
                &[("CNI_COMMAND", "ADD")],
                "{not json",
                CODE_DECODE,
                "not JSON",
            ),
            (
                &[("CNI_COMMAND", "ADD")],
                r#"{"cniVersion":"1.0.0","type":"netclaim"}"#,
                CODE_INVALID_CONFIG,
                "prevResult",
            ),
            (
                &[("CNI_COMMAND", "ADD")],
                r#"{"cniVersion":"9.9.9"}"#,
                CODE_INCOMPATIBLE_VERSION,
                "cniVersion",
            ),
            (
                &[("CNI_COMMAND", "BOGUS")],
                PREV,
                CODE_INVALID_ENV,
                "CNI_COMMAND",
            ),
            (
                &[("CNI_COMMAND", "ADD")],
                r#"{"cniVersion":"1.0.0","socket":"relative","prevResult":{}}"#,
                CODE_INVALID_CONFIG,
                "socket",
            ),
        ];
        for (vars, stdin, code, mentions) in cases {
            let out = invoke(&env_of(vars), stdin.as_bytes(), &mut never);
            assert_eq!(out.code, 1, "{stdin}");
            let v: Value = serde_json::from_str(&out.stdout).unwrap();
            assert_eq!(v["code"], *code, "{stdin}: {v}");
            assert!(v.to_string().contains(mentions), "{v}");
        }
    }

    #[test]
    fn cni_args_split_on_semicolons() {
        let a = parse_args("IgnoreUnknown=1;K8S_POD_UID=a=b;junk;K8S_POD_NAME=");
        assert_eq!(a.get("K8S_POD_UID").map(String::as_str), Some("a=b"));
        assert_eq!(a.get("K8S_POD_NAME").map(String::as_str), Some(""));
        assert!(!a.contains_key("junk"));
    }
}
