//! [`DatapathError`]: everything that can go wrong with a device's data path, each
//! variant naming the device, and the small constructors the other files use to build
//! the common ones (`map_err`, `prog_err`).
//!
//! This file owns the error type and nothing else: it never touches maps, programs,
//! links, pins or namespaces.

use std::path::PathBuf;

use super::pins::{DatapathKey, InvalidKey};
use crate::netns::NetnsError;

/// Everything that can go wrong with a device's data path; each names the device.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("datapath {key}: socket guard: {source}")]
    Guard {
        key: String,
        #[source]
        source: super::guard::GuardError,
    },
    #[error(transparent)]
    Key(#[from] InvalidKey),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("datapath {key}: loading the eBPF object: {source}")]
    Load {
        key: String,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("datapath {key}: program {program}: {source}")]
    Program {
        key: String,
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("datapath {key}: interface {interface:?} not found in namespace {netns}")]
    NoInterface {
        key: String,
        interface: String,
        netns: String,
    },
    #[error("datapath {key}: attaching {direction} to {interface}: every method failed: {detail}")]
    Attach {
        key: String,
        direction: &'static str,
        interface: String,
        detail: String,
    },
    #[error("datapath {key}: map {map}: {detail}")]
    Map {
        key: String,
        map: &'static str,
        detail: String,
    },
    #[error("datapath {key}: pin {path}: {detail}")]
    Pin {
        key: String,
        path: PathBuf,
        detail: String,
    },
    #[error("datapath {key}: {source}")]
    Policy {
        key: String,
        #[source]
        source: super::policy::TooManyPrefixes,
    },
    #[error("datapath {key}: no pinned data path at {path}")]
    NotPinned { key: String, path: PathBuf },
}

pub(super) fn map_err(
    key: &DatapathKey,
    map: &'static str,
    e: impl std::fmt::Display,
) -> DatapathError {
    DatapathError::Map {
        key: key.to_string(),
        map,
        detail: e.to_string(),
    }
}

pub(super) fn prog_err(
    key: &DatapathKey,
    program: &'static str,
    e: aya::programs::ProgramError,
) -> DatapathError {
    DatapathError::Program {
        key: key.to_string(),
        program,
        source: Box::new(e),
    }
}
