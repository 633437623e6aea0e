//! The API's Unix socket: put only where nothing is or a stale socket was, and created with the
//! mode asked for (owner only by default), so it is never reachable with wider permissions.
//!
//! The mode is set by `bind(2)` itself. Linux creates the socket file with mode `0777 & ~umask`,
//! so the bind runs on a short-lived thread that first takes a private copy of the process's
//! filesystem attributes (`unshare(CLONE_FS)`) and sets its own umask to `0777 & ~mode`: the
//! file is born with exactly `mode`, no other thread's umask changes, and there is no window in
//! which a wider socket exists (a `chmod` after `bind` would leave one and follow symlinks).
//! `bind` never replaces an existing file (`EADDRINUSE`), so anything that appears at the path
//! after the check below is refused, not overwritten.

use std::fs::{self, FileType};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Mode of the socket unless asked otherwise: read and write for the owner only.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// Errors setting up the API socket; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum ApiSocketError {
    /// Another process answers on the socket already.
    #[error("--api-socket: path={0}: another process is listening on it")]
    InUse(PathBuf),
    /// Something that is not a stale socket is at the path; it is left untouched.
    #[error(
        "--api-socket: path={path}: {kind} in the way; only a stale socket is replaced \
         (remove it or choose another path)"
    )]
    Occupied {
        /// The path.
        path: PathBuf,
        /// What is there (`a regular file`, `a directory`, ...).
        kind: &'static str,
    },
    /// Examining, binding or configuring the socket failed.
    #[error("--api-socket: path={path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The socket file did not get the mode asked for (a filesystem that ignores modes).
    #[error("--api-socket: path={path}: the socket was created with mode {found:04o}, not {mode:04o}")]
    Mode {
        /// The path.
        path: PathBuf,
        /// The mode asked for.
        mode: u32,
        /// The mode found.
        found: u32,
    },
}

/// What a file type is, for messages.
fn describe(ft: FileType) -> &'static str {
    if ft.is_file() {
        "a regular file is"
    } else if ft.is_dir() {
        "a directory is"
    } else if ft.is_symlink() {
        "a symbolic link is"
    } else if ft.is_fifo() {
        "a FIFO is"
    } else if ft.is_char_device() {
        "a character device is"
    } else if ft.is_block_device() {
        "a block device is"
    } else if ft.is_socket() {
        "a different socket is"
    } else {
        "a file is"
    }
}

/// Makes room at `path`: nothing there is fine; a stale socket (one nobody listens on) is removed;
/// a live socket and anything else (regular file, directory, symlink, ...) are errors and stay.
fn clear_stale(path: &Path) -> Result<(), ApiSocketError> {
    let bind_err = |source| ApiSocketError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(bind_err(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ApiSocketError::Occupied {
            path: path.to_path_buf(),
            kind: describe(meta.file_type()),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ApiSocketError::InUse(path.to_path_buf())),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            // Remove only the socket examined: if the path changed meanwhile, leave it alone.
            let now = fs::symlink_metadata(path).map_err(bind_err)?;
            if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
                return Err(ApiSocketError::Occupied {
                    path: path.to_path_buf(),
                    kind: describe(now.file_type()),
                });
            }
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(bind_err(e)),
                _ => Ok(()),
            }
        }
        // E.g. permission denied: not ours to judge or remove.
        Err(e) => Err(bind_err(e)),
    }
}

/// Binds and listens on `path` with the socket file created as `mode` (see the module docs).
fn bind_with_mode(path: &Path, mode: u32) -> io::Result<UnixListener> {
    let path = path.to_path_buf();
    let mask = !mode & 0o777;
    let thread = std::thread::Builder::new()
        .name("api-socket-bind".into())
        .spawn(move || {
            // SAFETY: unshare(CLONE_FS) gives this thread its own copy of root, cwd and umask; it
            // takes no pointers and changes nothing another thread uses.
            if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: umask takes a plain integer and sets the mask of this thread's private copy
            // (unshared above); it cannot fail.
            unsafe { libc::umask(mask) };
            UnixListener::bind(&path)
        })?;
    thread
        .join()
        .map_err(|_| io::Error::other("the thread binding the socket panicked"))?
}

/// The bound API socket; the socket file is removed when it is dropped (if it is still this
/// socket's file).
#[derive(Debug)]
pub struct ApiSocket {
    pub(super) listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file, so drop removes only this socket's file.
    id: (u64, u64),
}

impl ApiSocket {
    /// Listens on `path` with mode [`DEFAULT_SOCKET_MODE`]; see [`ApiSocket::bind_with_mode`].
    pub fn bind(path: &Path) -> Result<Self, ApiSocketError> {
        Self::bind_with_mode(path, DEFAULT_SOCKET_MODE)
    }

    /// Listens on `path`, the socket file created with `mode` (permission bits, e.g. `0o660`)
    /// whatever the umask. A stale socket file (nobody answers on it) is replaced; a live one, a
    /// regular file, a directory, a symlink or anything else at `path` is an error and left as
    /// it is. Bind before the VM starts, so a bad path fails early.
    pub fn bind_with_mode(path: &Path, mode: u32) -> Result<Self, ApiSocketError> {
        let bind_err = |source| ApiSocketError::Bind {
            path: path.to_path_buf(),
            source,
        };
        clear_stale(path)?;
        let listener = bind_with_mode(path, mode).map_err(|e| match e.raw_os_error() {
            // Something appeared at the path since the check: never replaced.
            Some(libc::EADDRINUSE) => match fs::symlink_metadata(path) {
                Ok(m) if !m.file_type().is_socket() => ApiSocketError::Occupied {
                    path: path.to_path_buf(),
                    kind: describe(m.file_type()),
                },
                _ => ApiSocketError::InUse(path.to_path_buf()),
            },
            _ => bind_err(e),
        })?;
        let meta = fs::symlink_metadata(path).map_err(bind_err)?;
        let socket = ApiSocket {
            listener,
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
        };
        let found = meta.mode() & 0o7777;
        if found != mode {
            return Err(ApiSocketError::Mode {
                path: path.to_path_buf(),
                mode,
                found,
            });
        }
        socket.listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(socket)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        if let Ok(m) = fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn occupied_kind(r: Result<ApiSocket, ApiSocketError>) -> &'static str {
        match r {
            Err(ApiSocketError::Occupied { kind, .. }) => kind,
            other => panic!("expected Occupied, got {other:?}"),
        }
    }

    #[test]
    fn c12_api_socket_leaves_a_regular_file_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        fs::write(&path, b"precious").unwrap();
        let err = ApiSocket::bind(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "--api-socket: path={}: a regular file is in the way; only a stale socket is \
                 replaced (remove it or choose another path)",
                path.display()
            )
        );
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn c12_api_socket_leaves_directories_symlinks_and_fifos_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("d");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("inside"), b"x").unwrap();
        assert_eq!(occupied_kind(ApiSocket::bind(&sub)), "a directory is");
        assert!(sub.join("inside").exists());

        // A symlink, even to a stale socket, is not followed or removed.
        let stale = dir.path().join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        let link = dir.path().join("link.sock");
        symlink(&stale, &link).unwrap();
        assert_eq!(occupied_kind(ApiSocket::bind(&link)), "a symbolic link is");
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(fs::symlink_metadata(&stale).unwrap().file_type().is_socket());

        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(occupied_kind(ApiSocket::bind(&fifo)), "a FIFO is");
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    }

    #[test]
    fn c12_api_socket_replaces_only_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        drop(UnixListener::bind(&path).unwrap());
        let first = ApiSocket::bind(&path).unwrap();
        // Live: refused, and the live socket still answers.
        assert!(matches!(ApiSocket::bind(&path), Err(ApiSocketError::InUse(_))));
        UnixStream::connect(&path).unwrap();
        drop(first);
        assert!(!path.exists());
    }

    #[test]
    fn drop_leaves_a_file_that_replaced_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let socket = ApiSocket::bind(&path).unwrap();
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"someone else's").unwrap();
        drop(socket);
        assert_eq!(fs::read(&path).unwrap(), b"someone else's");
    }

    #[test]
    fn c13_api_socket_gets_the_mode_asked_for_whatever_the_umask_of_the_process() {
        // The process's umask is left alone (other tests run in parallel); the socket's mode
        // comes from the binding thread's own umask. The child-process test in
        // tests/api_hardening.rs covers umask 000.
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o660] {
            let path = dir.path().join(format!("{mode:o}.sock"));
            let s = ApiSocket::bind_with_mode(&path, mode).unwrap();
            assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, mode);
            drop(s);
        }
    }
}
