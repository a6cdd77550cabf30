//! Config problems with their field paths: [`FieldError`] (one problem) and
//! [`ConfigErrors`] (every problem of one config, reported together).
//!
//! Paths are written the way a user finds the field in their YAML: dotted member names,
//! `[i]` for list elements and `["key"]` for map keys, e.g. `routes[1].gateway` or
//! `ethtool.features["tso"]`. This module only formats paths; it never decides what is
//! valid.

use std::fmt;

use serde::Serialize;

/// One problem in a config, at one field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}: {message}", if path.is_empty() { "(root)" } else { path.as_str() })]
pub struct FieldError {
    /// Where the problem is, from the root of what was parsed.
    pub path: String,
    /// What is wrong, phrased to be read after the path.
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in one config. Never empty when returned as an error.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(transparent)]
pub struct ConfigErrors {
    pub errors: Vec<FieldError>,
}

impl ConfigErrors {
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, FieldError> {
        self.errors.iter()
    }

    /// The same problems with `prefix` put in front of every path (see [`join`]).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        for e in &mut self.errors {
            e.path = join(prefix, &e.path);
        }
        self
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errors.as_slice() {
            [] => f.write_str("no problems"),
            [one] => write!(f, "{one}"),
            many => {
                write!(f, "{} problems: ", many.len())?;
                for (i, e) in many.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

impl IntoIterator for ConfigErrors {
    type Item = FieldError;
    type IntoIter = std::vec::IntoIter<FieldError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

/// `prefix.rest`, where either side may be empty; `rest` starting with `[` attaches
/// without a dot (`routes` + `[0]` is `routes[0]`).
pub fn join(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else if rest.is_empty() {
        prefix.to_string()
    } else if rest.starts_with('[') {
        format!("{prefix}{rest}")
    } else {
        format!("{prefix}.{rest}")
    }
}

/// `path[i]`.
pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// `path["key"]`, the key quoted and escaped like a JSON string.
pub fn key(path: &str, k: &str) -> String {
    let quoted = serde_json::to_string(k).unwrap_or_else(|_| format!("\"{}\"", k.escape_default()));
    format!("{path}[{quoted}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_joined_like_yaml_reads() {
        assert_eq!(join("", "interface"), "interface");
        assert_eq!(join("spec", "devices"), "spec.devices");
        assert_eq!(join("routes", "[0]"), "routes[0]");
        assert_eq!(join("a", ""), "a");
        assert_eq!(index("routes", 3), "routes[3]");
        assert_eq!(key("ethtool.features", "tso"), "ethtool.features[\"tso\"]");
        assert_eq!(key("x", "a\"b"), "x[\"a\\\"b\"]");
    }

    #[test]
    fn display_lists_every_problem() {
        let one = ConfigErrors {
            errors: vec![FieldError::new(
                "routes[1].gateway",
                "required when scope is 0",
            )],
        };
        assert_eq!(
            one.to_string(),
            "routes[1].gateway: required when scope is 0"
        );
        let two = ConfigErrors {
            errors: vec![FieldError::new("a", "x"), FieldError::new("b", "y")],
        }
        .prefixed("spec");
        assert_eq!(two.to_string(), "2 problems: spec.a: x; spec.b: y");
        assert_eq!(
            FieldError::new("", "not an object").to_string(),
            "(root): not an object"
        );
    }
}
