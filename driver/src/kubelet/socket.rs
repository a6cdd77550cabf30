//! [`SocketGuard`]: a unix listening socket the plugin owns. Binding replaces a stale
//! file left by an earlier run, makes the parent directory (0750) if needed and sets
//! the socket to 0600; dropping the guard removes the file.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket {path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
}

/// A bound socket and the file it lives in.
#[derive(Debug)]
pub struct SocketGuard {
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl SocketGuard {
    /// Binds `path`; must run inside a tokio runtime.
    pub fn bind(path: &Path) -> Result<Self, SocketError> {
        let io = |action: &'static str| {
            let path = path.to_owned();
            move |source| SocketError::Io {
                path,
                action,
                source,
            }
        };
        if let Some(dir) = path.parent() {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o750)
                    .create(dir)
                    .map_err(io("create the directory"))?;
            }
        }
        match std::fs::symlink_metadata(path) {
            Ok(_) => {
                tracing::info!(socket = %path.display(), "replacing a stale socket file");
                std::fs::remove_file(path).map_err(io("remove the stale file"))?;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io("inspect")(err)),
        }
        let listener = UnixListener::bind(path).map_err(io("bind"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io("chmod 0600"))?;
        Ok(Self {
            path: path.to_owned(),
            listener: Some(listener),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands the listener to a server; the guard keeps owning the file.
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.listener = None;
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::debug!(socket = %self.path.display(), "removed socket"),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(socket = %self.path.display(), "cannot remove socket: {err}")
            }
        }
    }
}
