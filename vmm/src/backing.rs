//! Host backings the memslot mapper maps extents from: sparse `memfd`s, regular files and devdax
//! character devices, each with the alignment its kernel mapping needs.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Base page size: the alignment every backing needs at least.
pub const PAGE_SIZE: u64 = 4096;
/// Alignment of devdax mappings (the device's huge-page size).
pub const DEVDAX_ALIGN: u64 = 2 << 20;

/// Errors creating or opening a backing.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    /// memfd_create failed.
    #[error("memfd_create({name:?}) failed")]
    MemfdCreate {
        /// Name given to the memfd.
        name: String,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// Setting the size of a memfd failed.
    #[error("sizing memfd {name:?} to {size:#x} bytes failed")]
    Resize {
        /// Name given to the memfd.
        name: String,
        /// Requested size.
        size: u64,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// A path could not be opened or inspected.
    #[error("cannot open backing {path:?}")]
    Open {
        /// The path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// The path is not of the kind requested.
    #[error("backing {path:?} is not a {expected}")]
    WrongKind {
        /// The path.
        path: PathBuf,
        /// What it should have been.
        expected: &'static str,
    },
    /// The name of a memfd contains a NUL byte.
    #[error("memfd name {0:?} contains a NUL byte")]
    BadName(String),
    /// The size of a devdax device could not be read from sysfs.
    #[error("cannot read the size of devdax {path:?} from {sysfs:?}")]
    DevDaxSize {
        /// The device path.
        path: PathBuf,
        /// The sysfs attribute read.
        sysfs: PathBuf,
    },
}

/// What kind of host object backs guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackingKind {
    /// Anonymous shared memory (`memfd_create`), sparse until touched.
    Memfd,
    /// A regular file.
    File,
    /// A device-DAX character device (`/dev/daxX.Y`); maps in 2 MiB units.
    DevDax,
}

/// One host backing: an open file descriptor, its size and kind.
#[derive(Debug)]
pub struct Backing {
    file: File,
    size: u64,
    kind: BackingKind,
    writable: bool,
}

impl Backing {
    /// Creates a sparse memfd of `size` bytes; pages cost memory only once touched.
    pub fn memfd(name: &str, size: u64) -> Result<Self, BackingError> {
        let cname = CString::new(name).map_err(|_| BackingError::BadName(name.to_string()))?;
        // SAFETY: `cname` is a valid NUL-terminated string that outlives the call, and the flags
        // are a valid combination; the return value is checked before use.
        let fd: RawFd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(BackingError::MemfdCreate {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` was just returned by memfd_create (checked non-negative above) and nothing
        // else owns it, so the File becomes its sole owner and closes it exactly once.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).map_err(|source| BackingError::Resize {
            name: name.to_string(),
            size,
            source,
        })?;
        Ok(Backing {
            file,
            size,
            kind: BackingKind::Memfd,
            writable: true,
        })
    }

    /// Opens a regular file; its current length is the backing's size.
    pub fn file(path: &Path, writable: bool) -> Result<Self, BackingError> {
        let open_err = |source| BackingError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if !meta.file_type().is_file() {
            return Err(BackingError::WrongKind {
                path: path.to_path_buf(),
                expected: "regular file",
            });
        }
        Ok(Backing {
            file,
            size: meta.len(),
            kind: BackingKind::File,
            writable,
        })
    }

    /// Opens a devdax device (`/dev/daxX.Y`); its size comes from sysfs.
    pub fn devdax(path: &Path) -> Result<Self, BackingError> {
        let open_err = |source| BackingError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if !meta.file_type().is_char_device() {
            return Err(BackingError::WrongKind {
                path: path.to_path_buf(),
                expected: "devdax character device",
            });
        }
        let rdev = meta.rdev();
        let sysfs = PathBuf::from(format!(
            "/sys/dev/char/{}:{}/size",
            libc::major(rdev),
            libc::minor(rdev)
        ));
        let size = std::fs::read_to_string(&sysfs)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| BackingError::DevDaxSize {
                path: path.to_path_buf(),
                sysfs: sysfs.clone(),
            })?;
        Ok(Backing {
            file,
            size,
            kind: BackingKind::DevDax,
            writable: true,
        })
    }

    /// Wraps an already open descriptor of the given kind and size.
    pub fn from_file(file: File, size: u64, kind: BackingKind, writable: bool) -> Self {
        Backing {
            file,
            size,
            kind,
            writable,
        }
    }

    /// The open file, e.g. to fill or inspect the backing from the host.
    pub fn file_handle(&self) -> &File {
        &self.file
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Kind of backing.
    pub fn kind(&self) -> BackingKind {
        self.kind
    }

    /// Whether the descriptor allows writable mappings.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Alignment that offsets, lengths and guest addresses of its mappings need.
    pub fn alignment(&self) -> u64 {
        match self.kind {
            BackingKind::DevDax => DEVDAX_ALIGN,
            BackingKind::Memfd | BackingKind::File => PAGE_SIZE,
        }
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn memfd_is_sparse_and_sized() {
        let b = Backing::memfd("t", 1 << 40).unwrap();
        assert_eq!(b.size(), 1 << 40);
        assert_eq!(b.file_handle().metadata().unwrap().blocks(), 0);
        b.file_handle().write_at(b"x", (1 << 40) - 1).unwrap();
        assert_eq!(b.alignment(), PAGE_SIZE);
    }

    #[test]
    fn bad_name_and_wrong_kinds_are_rejected() {
        assert!(matches!(Backing::memfd("a\0b", 1), Err(BackingError::BadName(_))));
        assert!(matches!(
            Backing::file(Path::new("/dev/null"), false),
            Err(BackingError::WrongKind { .. })
        ));
        assert!(matches!(
            Backing::devdax(Path::new("/proc/self/status")),
            Err(BackingError::Open { .. }) | Err(BackingError::WrongKind { .. })
        ));
    }

    #[test]
    fn devdax_alignment() {
        let f = Backing::memfd("d", 4 << 20).unwrap().file;
        let b = Backing::from_file(f, 4 << 20, BackingKind::DevDax, true);
        assert_eq!(b.alignment(), DEVDAX_ALIGN);
    }
}
