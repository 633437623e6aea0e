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
    /// The path does not exist.
    #[error("backing {path:?}: no such file or device")]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// The VMM may not open the path as it needs to.
    #[error("backing {path:?}: permission denied (it is opened for {access})")]
    Permission {
        /// The path.
        path: PathBuf,
        /// "reading" or "reading and writing".
        access: &'static str,
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

/// Whether an OS error is the host's failure (out of descriptors, memory or space, an I/O
/// error) rather than a consequence of what was asked for (a missing path, a wrong kind).
pub fn is_host_os_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOMEM
                | libc::ENOBUFS
                | libc::ENOSPC
                | libc::EDQUOT
                | libc::EIO
                | libc::EAGAIN
                | libc::EINTR
                | libc::ETIMEDOUT
        )
    )
}

impl BackingError {
    /// Whether the host failed (a control API answers 5xx), not the request (4xx): creating or
    /// sizing a memfd, an OS failure opening a path, an unreadable devdax size.
    pub fn is_host_failure(&self) -> bool {
        match self {
            BackingError::MemfdCreate { .. } | BackingError::DevDaxSize { .. } => true,
            BackingError::Resize { source, .. } => {
                !matches!(source.raw_os_error(), Some(libc::EINVAL | libc::EFBIG))
            }
            BackingError::Open { source, .. } => is_host_os_error(source),
            BackingError::Missing { .. }
            | BackingError::Permission { .. }
            | BackingError::WrongKind { .. }
            | BackingError::BadName(_) => false,
        }
    }
}

/// What kind of host object backs guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackingKind {
    /// Anonymous shared memory (`memfd_create`), sparse until touched.
    Memfd,
    /// A regular file.
    File,
    /// A device-DAX character device (`/dev/daxX.Y`); maps in units of its `align` (2 MiB or more).
    DevDax,
    /// A file on hugetlbfs; maps in units of its huge page size.
    HugeTlb,
}

/// `statfs` magic number of hugetlbfs (`<linux/magic.h>`).
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// Classifies an error opening `path` so the message says what is wrong.
fn open_error(path: &Path, writable: bool, source: io::Error) -> BackingError {
    let path = path.to_path_buf();
    match source.kind() {
        io::ErrorKind::NotFound => BackingError::Missing { path },
        io::ErrorKind::PermissionDenied => BackingError::Permission {
            path,
            access: if writable {
                "reading and writing"
            } else {
                "reading"
            },
        },
        _ => BackingError::Open { path, source },
    }
}

/// The huge page size of the hugetlbfs `file` lives on, if it does.
fn hugetlb_page_size(file: &File) -> Option<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `file` is an open descriptor for the duration of the call and `st` points to
    // writable memory of the size `fstatfs` fills; it is read only after a zero return.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: `fstatfs` returned 0, so it initialised the whole struct.
    let st = unsafe { st.assume_init() };
    (st.f_type == HUGETLBFS_MAGIC)
        .then(|| u64::try_from(st.f_bsize).ok())
        .flatten()
}

/// One host backing: an open file descriptor, its size and kind.
#[derive(Debug)]
pub struct Backing {
    file: File,
    size: u64,
    kind: BackingKind,
    writable: bool,
    align: u64,
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
            align: PAGE_SIZE,
        })
    }

    /// Opens a regular or hugetlbfs file; its current length is the backing's size, and on
    /// hugetlbfs its huge page size is the alignment mappings need.
    pub fn file(path: &Path, writable: bool) -> Result<Self, BackingError> {
        let open_err = |source| open_error(path, writable, source);
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
        let (kind, align) = match hugetlb_page_size(&file) {
            Some(page) => (BackingKind::HugeTlb, page.max(PAGE_SIZE)),
            None => (BackingKind::File, PAGE_SIZE),
        };
        Ok(Backing {
            file,
            size: meta.len(),
            kind,
            writable,
            align,
        })
    }

    /// Opens a devdax device (`/dev/daxX.Y`); its size comes from sysfs.
    pub fn devdax(path: &Path) -> Result<Self, BackingError> {
        let open_err = |source| open_error(path, true, source);
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
        let dir = PathBuf::from(format!(
            "/sys/dev/char/{}:{}",
            libc::major(rdev),
            libc::minor(rdev)
        ));
        let sysfs = dir.join("size");
        // The device's `align` attribute (2 MiB or 1 GiB); 2 MiB where the kernel has none.
        let align = std::fs::read_to_string(dir.join("align"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map_or(DEVDAX_ALIGN, |a| a.max(DEVDAX_ALIGN));
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
            align,
        })
    }

    /// Wraps an already open descriptor of the given kind and size.
    pub fn from_file(file: File, size: u64, kind: BackingKind, writable: bool) -> Self {
        let align = match kind {
            BackingKind::DevDax | BackingKind::HugeTlb => DEVDAX_ALIGN,
            BackingKind::Memfd | BackingKind::File => PAGE_SIZE,
        };
        Backing {
            file,
            size,
            kind,
            writable,
            align,
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
        self.align
    }

    /// The raw descriptor, for mapping it (the descriptor stays owned by the backing).
    pub fn raw_fd(&self) -> RawFd {
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
    fn open_errors_say_what_is_wrong() {
        let missing = Path::new("/nonexistent/tagmem/dax9.9");
        let e = Backing::devdax(missing).unwrap_err();
        assert!(matches!(e, BackingError::Missing { .. }));
        assert_eq!(
            e.to_string(),
            "backing \"/nonexistent/tagmem/dax9.9\": no such file or device"
        );
        assert!(matches!(
            Backing::file(missing, false),
            Err(BackingError::Missing { .. })
        ));
        // Root opens anything, so the permission case is checked on the classification itself.
        let e = open_error(missing, true, io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(
            e.to_string(),
            "backing \"/nonexistent/tagmem/dax9.9\": permission denied (it is opened for reading and writing)"
        );
        let regular = tempfile_in_tmp("not-devdax");
        assert!(matches!(
            Backing::devdax(&regular),
            Err(BackingError::WrongKind {
                expected: "devdax character device",
                ..
            })
        ));
        std::fs::remove_file(&regular).unwrap();
        assert!(matches!(
            Backing::file(&std::env::temp_dir(), false),
            Err(BackingError::WrongKind { .. })
        ));
    }

    #[test]
    fn regular_files_are_not_hugetlb() {
        let f = tempfile_in_tmp("regular");
        let b = Backing::file(&f, true).unwrap();
        assert_eq!((b.kind(), b.alignment()), (BackingKind::File, PAGE_SIZE));
        std::fs::remove_file(&f).unwrap();
    }

    fn tempfile_in_tmp(what: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("tagmem-backing-{what}-{}", std::process::id()));
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        p
    }

    #[test]
    fn devdax_alignment() {
        let f = Backing::memfd("d", 4 << 20).unwrap().file;
        let b = Backing::from_file(f, 4 << 20, BackingKind::DevDax, true);
        assert_eq!(b.alignment(), DEVDAX_ALIGN);
    }
}
