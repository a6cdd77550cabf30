//! Forwarding `aya-log` records from the programs to `tracing`.
//!
//! Each device instance has its own `AYA_LOGS` ring buffer. One background thread,
//! the pump, drains every registered buffer every 100 ms and re-emits each record as
//! a `tracing` event (target `netclaim::ebpf`) carrying the device. The programs only
//! log state changes (a new policy generation), never per packet.

use std::{
    collections::BTreeMap,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use aya::Ebpf;
use aya_log::EbpfLogger;

use super::pins::DatapathKey;

/// A `log::Log` that re-emits records as tracing events for one device.
pub struct DeviceLog {
    device: String,
}

impl log::Log for DeviceLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args().to_string();
        match record.level() {
            log::Level::Error => {
                tracing::error!(target: "netclaim::ebpf", device = %self.device, "{msg}")
            }
            log::Level::Warn => {
                tracing::warn!(target: "netclaim::ebpf", device = %self.device, "{msg}")
            }
            log::Level::Info => {
                tracing::info!(target: "netclaim::ebpf", device = %self.device, "{msg}")
            }
            log::Level::Debug => {
                tracing::debug!(target: "netclaim::ebpf", device = %self.device, "{msg}")
            }
            log::Level::Trace => {
                tracing::trace!(target: "netclaim::ebpf", device = %self.device, "{msg}")
            }
        }
    }

    fn flush(&self) {}
}

/// The process-wide log pump.
pub struct LogPump {
    loggers: Mutex<BTreeMap<DatapathKey, EbpfLogger<DeviceLog>>>,
}

impl LogPump {
    /// The pump, started on first use.
    pub fn global() -> &'static LogPump {
        static PUMP: OnceLock<LogPump> = OnceLock::new();
        PUMP.get_or_init(|| {
            let spawned = std::thread::Builder::new()
                .name("ebpf-logs".into())
                .spawn(|| loop {
                    std::thread::sleep(Duration::from_millis(100));
                    LogPump::global().flush();
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "eBPF log pump not started; program logs are lost");
            }
            LogPump {
                loggers: Mutex::new(BTreeMap::new()),
            }
        })
    }

    /// Registers the log buffer of a freshly loaded object.
    pub fn add_from_object(&self, key: &DatapathKey, ebpf: &mut Ebpf) {
        let log = DeviceLog {
            device: key.to_string(),
        };
        match EbpfLogger::init_with_logger(ebpf, log) {
            Ok(logger) => self.insert(key, logger),
            Err(e) => tracing::warn!(device = %key, error = %e, "eBPF logs not forwarded"),
        }
    }

    /// Resumes forwarding for every data path pinned under `layout` that the pump does
    /// not read yet: after a restart, the adopted programs' buffers are found through
    /// their pinned egress program. Returns how many were resumed.
    pub fn resume_pinned(&self, layout: &super::pins::PinLayout) -> usize {
        let mut resumed = 0;
        for key in layout.devices() {
            if self.contains(&key) {
                continue;
            }
            let pin = layout.device_dir(&key).join(super::pins::PROG_EGRESS);
            match aya::programs::ProgramInfo::from_pin(&pin) {
                Ok(info) => {
                    self.add_from_program(&key, info.id());
                    resumed += usize::from(self.contains(&key));
                }
                Err(e) => {
                    tracing::warn!(device = %key, error = %e, "eBPF logs not forwarded: no pinned egress program")
                }
            }
        }
        resumed
    }

    fn contains(&self, key: &DatapathKey) -> bool {
        self.loggers.lock().is_ok_and(|m| m.contains_key(key))
    }

    /// Registers the log buffer of an attached program found by id (after a restart).
    pub fn add_from_program(&self, key: &DatapathKey, program_id: u32) {
        let log = DeviceLog {
            device: key.to_string(),
        };
        match EbpfLogger::init_from_id_with_logger(program_id, log) {
            Ok(logger) => self.insert(key, logger),
            Err(e) => tracing::warn!(device = %key, error = %e, "eBPF logs not forwarded"),
        }
    }

    fn insert(&self, key: &DatapathKey, logger: EbpfLogger<DeviceLog>) {
        if let Ok(mut map) = self.loggers.lock() {
            map.insert(key.clone(), logger);
        }
    }

    /// Forgets a device's buffer (flushing it first).
    pub fn remove(&self, key: &DatapathKey) {
        if let Ok(mut map) = self.loggers.lock() {
            if let Some(mut logger) = map.remove(key) {
                logger.flush();
            }
        }
    }

    /// Drains every buffer now.
    pub fn flush(&self) {
        if let Ok(mut map) = self.loggers.lock() {
            for logger in map.values_mut() {
                logger.flush();
            }
        }
    }
}
