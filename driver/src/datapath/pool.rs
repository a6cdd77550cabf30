//! A few loaded-and-verified instances of the programs kept ready, so attaching a
//! device on the pod-start path does not pay for parsing the object, creating maps and
//! running the verifier (about 20 ms here). Spares are not attached and not pinned;
//! `bpftool prog show` lists them as unattached `nc_*` programs. They belong to this
//! process and disappear with it.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Mutex, OnceLock,
};

use aya::{
    programs::{SchedClassifier, Xdp},
    Ebpf,
};
use netclaim_common::{PROG_EGRESS, PROG_INGRESS_TC, PROG_INGRESS_XDP};

use super::object::{self, MapSizes};

/// How many spare instances are kept.
const SPARES: usize = 1;

pub struct WarmPool {
    spares: Mutex<Vec<Ebpf>>,
    refilling: AtomicBool,
}

impl WarmPool {
    pub fn global() -> &'static WarmPool {
        static POOL: OnceLock<WarmPool> = OnceLock::new();
        POOL.get_or_init(|| WarmPool {
            spares: Mutex::new(Vec::new()),
            refilling: AtomicBool::new(false),
        })
    }

    /// Starts filling the pool in the background (the daemon calls this at start).
    pub fn warm(&'static self) {
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("ebpf-warm".into())
            .spawn(move || {
                loop {
                    let need = self
                        .spares
                        .lock()
                        .map(|s| s.len() < SPARES)
                        .unwrap_or(false);
                    if !need {
                        break;
                    }
                    match load_verified(MapSizes::default()) {
                        Ok(e) => {
                            if let Ok(mut s) = self.spares.lock() {
                                s.push(e);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "pre-loading a spare eBPF instance failed");
                            break;
                        }
                    }
                }
                self.refilling.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.refilling.store(false, Ordering::Release);
        }
    }

    /// A loaded instance with every program verified: a spare when one is ready and
    /// the sizes are the default ones, a fresh one otherwise. Refills in the background.
    pub fn take(&'static self, sizes: MapSizes) -> Result<Ebpf, aya::EbpfError> {
        let spare = if sizes == MapSizes::default() {
            self.spares.lock().ok().and_then(|mut s| s.pop())
        } else {
            None
        };
        let ebpf = match spare {
            Some(e) => Ok(e),
            None => load_verified(sizes),
        };
        if sizes == MapSizes::default() {
            self.warm();
        }
        ebpf
    }
}

/// Loads the object and runs the verifier on the attachable programs. Every instance
/// that `AttachedDatapath::attach` uses comes from here.
pub(super) fn load_verified(sizes: MapSizes) -> Result<Ebpf, aya::EbpfError> {
    let mut ebpf = object::load(sizes)?;
    for name in [PROG_EGRESS, PROG_INGRESS_TC] {
        if let Some(p) = ebpf.program_mut(name) {
            let p: &mut SchedClassifier = p.try_into().map_err(aya::EbpfError::ProgramError)?;
            p.load().map_err(aya::EbpfError::ProgramError)?;
        }
    }
    if let Some(p) = ebpf.program_mut(PROG_INGRESS_XDP) {
        let p: &mut Xdp = p.try_into().map_err(aya::EbpfError::ProgramError)?;
        p.load().map_err(aya::EbpfError::ProgramError)?;
    }
    if let Some(p) = ebpf.program_mut(netclaim_common::PROG_GUARD_SOCKOPT) {
        let p: &mut aya::programs::CgroupSockopt =
            p.try_into().map_err(aya::EbpfError::ProgramError)?;
        p.load().map_err(aya::EbpfError::ProgramError)?;
    }
    Ok(ebpf)
}
