//! Everything the driver does inside network namespaces: entering them on dedicated
//! threads ([`thread`]).

pub mod thread;

pub use thread::{Netns, NetnsError};
