//! Where a pod hook's time goes, read back from the driver's debug log. netclaim logs
//! each step of a RunPodSandbox and StopPodSandbox as `*_us` fields (and the undo's
//! steps as durations); this module matches them to the hook they belong to, so a
//! benchmark can report every step's median next to the hook's own latency, and the
//! hook without its namespace move: the part netclaim adds to the kernel's.
//!
//! Hooks must not overlap in the log (one pod at a time): a start's fields are taken
//! for the next `NRI hook finished` line of a RunPodSandbox. A stop answers before its
//! devices go home: its steps are those of the give-back that follows the answer, taken
//! for the give-back's closing line (`devices of the stopped pod returned`), whose
//! `took_us` is the stop's `hook` here.

use std::collections::BTreeMap;

/// One hook's steps, in microseconds, by name (`hook` is the whole hook, `other` what
/// no step accounts for: thread hops, the runtime's request and answer, scheduling).
pub type Steps = BTreeMap<&'static str, f64>;

/// The steps of every RunPodSandbox and StopPodSandbox whose pod `wanted` accepts
/// (`namespace/name`), in log order.
#[derive(Debug, Default)]
pub struct HookSteps {
    pub start: Vec<Steps>,
    pub stop: Vec<Steps>,
}

/// Which debug line carries which start or stop step: (message, field, step name).
const START_FIELDS: &[(&str, &str, &str)] = &[
    ("start timing", "before_devices_us", "resolve_pod"),
    (
        "host side: captured",
        "sockets_and_lookup_us",
        "sockets_lookup",
    ),
    ("host side: captured", "capture_us", "capture"),
    ("intent recorded", "intent_us", "entering_record"),
    ("host side: moved", "move_us", "move"),
    ("pod side: configured", "configure_us", "configure"),
    ("data path attached", "after_configure_us", "take_data_path"),
    (
        "start timing",
        "record_and_events_us",
        "inpod_record_events",
    ),
];
const STOP_FIELDS: &[(&str, &str, &str)] = &[
    ("stop timing", "before_record_us", "resolve_pod"),
    ("stop timing", "leaving_record_us", "leaving_record"),
    ("restore timing", "locate_us", "locate"),
    ("restore timing", "move_us", "move"),
    ("restore timing", "home_us", "at_home"),
];
/// Undo steps logged as `(Name, duration)` in the `undo timing` line.
const UNDO_STEPS: &[(&str, &str)] = &[("StandDown", "stand_down"), ("ClearRecord", "home_record")];

/// The value of `key=` in `line`, up to the next space or quote.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = line[at..].trim_start_matches('"');
    let end = rest.find([' ', '"', '}']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// A `Duration`'s debug form (`117.952µs`, `17.1ms`, `1.2s`, `80ns`) in microseconds.
fn micros(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(v) = text.strip_suffix("ns") {
        (v, 0.001)
    } else if let Some(v) = text.strip_suffix("µs") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1000.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1_000_000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|v| v * scale)
}

fn take(line: &str, fields: &[(&str, &str, &'static str)], into: &mut Steps) {
    for (message, key, step) in fields {
        if line.contains(message) {
            if let Some(v) = field(line, key).and_then(|v| v.parse::<f64>().ok()) {
                *into.entry(step).or_default() += v;
            }
        }
    }
}

/// Reads the steps of every hook in `log` for pods `wanted` accepts.
pub fn parse(log: &str, wanted: impl Fn(&str) -> bool) -> HookSteps {
    let mut found = HookSteps::default();
    let (mut start, mut stop) = (Steps::new(), Steps::new());
    for raw in log.lines() {
        let line = crate::runp::strip_ansi(raw);
        take(&line, START_FIELDS, &mut start);
        take(&line, STOP_FIELDS, &mut stop);
        if line.contains("undo timing") {
            for (name, step) in UNDO_STEPS {
                let key = format!("({name}, ");
                if let Some(at) = line.find(&key) {
                    let rest = &line[at + key.len()..];
                    if let Some(v) = rest.split(')').next().and_then(micros) {
                        *stop.entry(step).or_default() += v;
                    }
                }
            }
        }
        if line.contains("devices of the stopped pod returned") {
            let took = field(&line, "took_us").and_then(|v| v.parse::<f64>().ok());
            let pod = field(&line, "nri{pod").unwrap_or_default();
            let steps = std::mem::take(&mut stop);
            if let (Some(took), true) = (took, wanted(pod) && steps.contains_key("move")) {
                found.stop.push(whole(steps, took));
            }
            continue;
        }
        if !line.contains("NRI hook finished") {
            continue;
        }
        let Some(ms) = field(&line, "hook_ms").and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let pod = field(&line, "nri{pod").unwrap_or_default();
        if field(&line, "hook") == Some("RunPodSandbox") {
            let steps = std::mem::take(&mut start);
            if wanted(pod) && steps.contains_key("move") {
                found.start.push(whole(steps, ms * 1000.0));
            }
        }
    }
    found
}

/// `steps` with the whole (`hook`, µs) and what no step accounts for (`other`).
fn whole(mut steps: Steps, hook_us: f64) -> Steps {
    let named: f64 = steps.values().sum();
    steps.insert("other", hook_us - named);
    steps.insert("hook", hook_us);
    steps
}

/// The median of `values` (microseconds) in milliseconds; `None` when empty.
fn median_of(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2] / 1000.0)
}

/// The median of `step` over `hooks`, in milliseconds (`None` when no hook has it).
pub fn median_ms(hooks: &[Steps], step: &str) -> Option<f64> {
    median_of(hooks.iter().filter_map(|h| h.get(step).copied()).collect())
}

/// The median over `hooks` of the hook minus its move, in milliseconds.
pub fn median_without_move_ms(hooks: &[Steps]) -> Option<f64> {
    median_of(
        hooks
            .iter()
            .filter_map(|h| Some(h.get("hook")? - h.get("move")?))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"2026-11-30T16:12:24.995003Z DEBUG device{claim=default/claim-a29 pod=default/pod-a29 device=eth30}: netclaim::lifecycle::handover: device resolved config_and_resolve_us=2
2026-11-30T16:12:24.995503Z DEBUG netclaim::netns::configure: host side: captured device="eth30" sockets_and_lookup_us=115 capture_us=355
2026-11-30T16:12:24.996203Z DEBUG device{claim=default/claim-a29 pod=default/pod-a29 device=eth30}: netclaim::lifecycle::handover: intent recorded devices=1 intent_us=647
2026-11-30T16:12:25.013937Z DEBUG netclaim::netns::configure: host side: moved device="eth30" move_us=17677
2026-11-30T16:12:25.014475Z DEBUG device{claim=default/claim-a29 pod=default/pod-a29 device=eth30}: netclaim::netns::configure: pod side: configured device="eth30" configure_us=338
2026-11-30T16:12:25.014693Z DEBUG device{claim=default/claim-a29 pod=default/pod-a29 device=eth30}: netclaim::lifecycle::handover: data path attached (and lease, if any) after_configure_us=198
2026-11-30T16:12:25.015048Z DEBUG netclaim::lifecycle::handover: start timing before_devices_us=76 devices_us=19740 record_and_events_us=313 hold_us=4
2026-11-30T16:12:25.015603Z DEBUG nri{pod=default/pod-a29 uid=pod-uid-a29 event="RUN_POD_SANDBOX"}: netclaim::metrics: NRI hook finished hook="RunPodSandbox" ok=true hook_ms=20.724574
2026-11-30T16:12:25.015803Z DEBUG nri{pod=default/pod-a29 uid=pod-uid-a29 event="STOP_POD_SANDBOX"}: netclaim::metrics: NRI hook finished hook="StopPodSandbox" ok=true hook_ms=0.312
2026-11-30T16:12:25.034957Z DEBUG device{claim=default/claim-a29 pod=default/pod-a29 device=eth30}: netclaim::netns::restore: restore timing device=eth30 locate_us=182 move_us=16183 home_us=704
2026-11-30T16:12:25.035225Z DEBUG device{claim=default/claim-a29 pod=default/pod-a29 device=eth30}: netclaim::lifecycle::handover: undo timing steps=[(StandDown, 117.952µs), (Restore, 17.107855ms), (ClearRecord, 244.61µs)]
2026-11-30T16:12:25.035300Z DEBUG netclaim::lifecycle::handover: stop timing before_record_us=90 leaving_record_us=610 devices_us=17600
2026-11-30T16:12:25.035525Z  INFO nri{pod=default/pod-a29 uid=pod-uid-a29 event="STOP_POD_SANDBOX"}: netclaim::lifecycle: devices of the stopped pod returned pod_uid=pod-uid-a29 devices=1 took_us=19643
2026-11-30T16:12:25.036690Z DEBUG nri{pod=default/pod-a29 uid=pod-uid-a29 event="REMOVE_POD_SANDBOX"}: netclaim::metrics: NRI hook finished hook="RemovePodSandbox" ok=true hook_ms=0.172258
2026-11-30T16:12:26.013937Z DEBUG netclaim::netns::configure: host side: moved device="eth1" move_us=99999
2026-11-30T16:12:26.015603Z DEBUG nri{pod=default/pod-warm uid=pod-uid-warm event="RUN_POD_SANDBOX"}: netclaim::metrics: NRI hook finished hook="RunPodSandbox" ok=true hook_ms=120.0
"#;

    #[test]
    fn every_step_is_matched_to_its_hook_and_other_pods_are_left_out() {
        let found = parse(LOG, |pod| pod.starts_with("default/pod-a"));
        assert_eq!(found.start.len(), 1, "{found:?}");
        assert_eq!(found.stop.len(), 1, "{found:?}");
        let start = &found.start[0];
        for (step, us) in [
            ("resolve_pod", 76.0),
            ("sockets_lookup", 115.0),
            ("capture", 355.0),
            ("entering_record", 647.0),
            ("move", 17677.0),
            ("configure", 338.0),
            ("take_data_path", 198.0),
            ("inpod_record_events", 313.0),
        ] {
            assert_eq!(start.get(step), Some(&us), "{step}: {start:?}");
        }
        assert!((start["hook"] - 20724.574).abs() < 0.01);
        let named = 76.0 + 115.0 + 355.0 + 647.0 + 17677.0 + 338.0 + 198.0 + 313.0;
        assert!(
            (start["other"] - (20724.574 - named)).abs() < 0.01,
            "{start:?}"
        );
        let stop = &found.stop[0];
        for (step, us) in [
            ("resolve_pod", 90.0),
            ("leaving_record", 610.0),
            ("locate", 182.0),
            ("move", 16183.0),
            ("at_home", 704.0),
        ] {
            assert_eq!(stop.get(step), Some(&us), "{step}: {stop:?}");
        }
        assert!((stop["stand_down"] - 117.952).abs() < 0.001, "{stop:?}");
        assert!((stop["home_record"] - 244.61).abs() < 0.001, "{stop:?}");
        // The stop's whole is its give-back (after the hook answered in 0.3 ms).
        assert_eq!(stop["hook"], 19643.0, "{stop:?}");
        assert!((median_without_move_ms(&found.start).unwrap() - 3.047574).abs() < 1e-6);
        assert_eq!(median_ms(&found.stop, "move"), Some(16.183));
    }

    #[test]
    fn the_pod_name_excludes_what_it_should() {
        let all = parse(LOG, |_| true);
        assert_eq!(all.start.len(), 2);
        assert_eq!(all.start[1]["move"], 99999.0);
        assert!(parse(LOG, |_| false).start.is_empty());
    }

    #[test]
    fn durations_read_in_every_unit() {
        assert_eq!(micros("80ns"), Some(0.08));
        assert_eq!(micros("117.5µs"), Some(117.5));
        assert_eq!(micros("17.25ms"), Some(17250.0));
        assert_eq!(micros("1.5s"), Some(1_500_000.0));
        assert_eq!(micros("fast"), None);
    }

    #[test]
    fn colour_codes_are_ignored() {
        let coloured = "\u{1b}[2m2026\u{1b}[0m \u{1b}[34mDEBUG\u{1b}[0m restore timing \u{1b}[3mlocate_us\u{1b}[0m\u{1b}[2m=\u{1b}[0m182";
        assert_eq!(
            crate::runp::strip_ansi(coloured),
            "2026 DEBUG restore timing locate_us=182"
        );
    }
}
