//! Errors of the lookup library. Every variant names the file or field at fault.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Why the capacity could not be listed or a device could not be built.
#[derive(Debug, Error)]
pub enum LookupError {
    /// A required attribute or directory does not exist.
    #[error("{path}: missing")]
    Missing {
        /// The file or directory that should exist.
        path: PathBuf,
    },
    /// An attribute exists but could not be read (permissions, I/O).
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file or directory being read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// Something other than a sysfs attribute sits where one should be: not a regular file (a
    /// FIFO, a device such as `/dev/zero`, a directory) or longer than one page.
    #[error("{path}: not a sysfs attribute: {reason}")]
    NotAttribute {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        reason: String,
    },
    /// An attribute holds a value that does not parse as the ABI says it should.
    #[error("{path}: cannot parse {value:?} as {expected}")]
    Parse {
        /// The attribute file.
        path: PathBuf,
        /// The text read (trimmed).
        value: String,
        /// What the ABI promises the file holds.
        expected: &'static str,
    },
    /// Values parse but contradict each other (e.g. a mapping that ends before it starts).
    #[error("{path}: {reason}")]
    Inconsistent {
        /// The attribute or directory at fault.
        path: PathBuf,
        /// What is contradictory.
        reason: String,
    },
    /// A device built from another view (e.g. the guest driver's) has invalid geometry.
    #[error("device {chardev}: {reason}")]
    InvalidDevice {
        /// The device name.
        chardev: String,
        /// What is wrong.
        reason: String,
    },
}
