//! Claim configuration: the [`NetworkConfig`] format, its validation and the files and
//! API objects it arrives in.
//!
//! * [`types`] — the strict serde types users write (DraNet's `interface`, `routes`,
//!   `rules`, `neighbors`, `ethtool`, plus netclaim's `dataplane` and
//!   `disableEbpfPrograms`);
//! * [`parameters`] — opaque parameters (JSON) to a config, unknown fields and wrong
//!   types reported with their paths; [`parse_parameters`] is what the kubelet plugin
//!   calls for each of this driver's configs;
//! * [`validate`](mod@validate) — every semantic rule, all problems at once, into a
//!   [`ValidConfig`] of parsed values;
//! * [`document`] — ResourceClaim, ResourceClaimTemplate or bare config files (YAML or
//!   JSON, several documents) for `netclaim validate`;
//! * [`error`] — [`FieldError`] / [`ConfigErrors`] and path formatting.
//!
//! Nothing here touches the kernel or the API server.

pub mod document;
pub mod error;
pub mod parameters;
pub mod types;
pub mod validate;

pub use document::{parse_documents, ConfigReport, DocumentError, DocumentReport};
pub use error::{ConfigErrors, FieldError};
pub use parameters::parse_parameters;
pub use types::{
    EthtoolConfig, InterfaceConfig, NeighborConfig, NetworkConfig, RouteConfig, RuleConfig,
    VrfConfig,
};
pub use validate::{
    validate, RouteScope, ValidConfig, ValidEthtool, ValidInterface, ValidNeighbor, ValidRoute,
    ValidRule, ValidVrf,
};
