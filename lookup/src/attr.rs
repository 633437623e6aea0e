//! Reading sysfs attributes safely and parsing them as the kernel prints them.
//!
//! A sysfs attribute is a regular file of at most one page (`sysfs_emit` never writes more), so
//! an attribute is opened without blocking (`O_NONBLOCK`: a FIFO in its place cannot hang the
//! reader), refused unless it is a regular file (a character device such as `/dev/zero` in its
//! place would never end), and read up to one page plus one byte (a longer file is refused). Every
//! error names the file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use uuid::Uuid;

use crate::error::LookupError;

/// Most bytes a sysfs attribute holds: one page (`PAGE_SIZE`, what `sysfs_emit` allows).
pub const ATTR_MAX: usize = 4096;

/// What kind of file sits where an attribute should be, for the error message.
fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

fn open_attr(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// Reads an attribute: `Some((path, trimmed text))`, or `None` if it does not exist.
pub fn read_opt(path: &Path) -> Result<Option<(PathBuf, String)>, LookupError> {
    let read_err = |source| LookupError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match open_attr(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let ft = file.metadata().map_err(read_err)?.file_type();
    if !ft.is_file() {
        return Err(LookupError::NotAttribute {
            path: path.to_owned(),
            reason: format!("{}, not a regular file", kind_of(ft)),
        });
    }
    let mut bytes = Vec::with_capacity(256);
    // `ATTR_MAX` fits in u64 on every target.
    let limit = u64::try_from(ATTR_MAX).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() > ATTR_MAX {
        return Err(LookupError::NotAttribute {
            path: path.to_owned(),
            reason: format!("longer than {ATTR_MAX} bytes (a sysfs attribute is at most one page)"),
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| LookupError::Parse {
        path: path.to_owned(),
        value: String::from_utf8_lossy(e.as_bytes()).trim().to_owned(),
        expected: "UTF-8 text",
    })?;
    Ok(Some((path.to_owned(), text.trim().to_owned())))
}

/// Reads an attribute that must exist.
pub fn read_req(path: &Path) -> Result<(PathBuf, String), LookupError> {
    read_opt(path)?.ok_or_else(|| LookupError::Missing {
        path: path.to_owned(),
    })
}

/// Reads and parses an attribute holding a u64 (see [`parse_u64`]); `None` if it does not exist.
pub fn read_u64_opt(path: &Path) -> Result<Option<u64>, LookupError> {
    read_opt(path)?.map(|(p, v)| parse_u64(&p, &v)).transpose()
}

/// Reads and parses an attribute holding a u64 that must exist.
pub fn read_u64(path: &Path) -> Result<u64, LookupError> {
    let (p, v) = read_req(path)?;
    parse_u64(&p, &v)
}

/// Reads and parses an attribute holding a UUID; `None` if it does not exist.
pub fn read_uuid_opt(path: &Path) -> Result<Option<Uuid>, LookupError> {
    read_opt(path)?.map(|(p, v)| parse_uuid(&p, &v)).transpose()
}

/// A u64 as the kernel prints it (`%llu` or `%#llx`) and daxctl reads it (`0x` is hexadecimal).
pub fn parse_u64(path: &Path, value: &str) -> Result<u64, LookupError> {
    let parsed = match value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    };
    parsed.ok_or_else(|| LookupError::Parse {
        path: path.to_owned(),
        value: value.to_owned(),
        expected: "an unsigned 64-bit number (decimal or 0x-hexadecimal)",
    })
}

/// A number of type `T` in decimal.
pub fn parse_num<T: FromStr>(path: &Path, value: &str, expected: &'static str) -> Result<T, LookupError> {
    value.parse().map_err(|_| LookupError::Parse {
        path: path.to_owned(),
        value: value.to_owned(),
        expected,
    })
}

/// A UUID in the 8-4-4-4-12 form (`%pUb`).
pub fn parse_uuid(path: &Path, value: &str) -> Result<Uuid, LookupError> {
    Uuid::parse_str(value).map_err(|_| LookupError::Parse {
        path: path.to_owned(),
        value: value.to_owned(),
        expected: "a UUID (8-4-4-4-12 hexadecimal)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn numbers_parse_as_the_kernel_prints_them() {
        let p = Path::new("x");
        assert_eq!(parse_u64(p, "0x200000").unwrap(), 0x20_0000);
        assert_eq!(parse_u64(p, "0").unwrap(), 0); // "%#llx" prints zero without "0x"
        assert_eq!(parse_u64(p, "2097152").unwrap(), 0x20_0000);
        assert_eq!(parse_u64(p, "0XfF").unwrap(), 255);
        for bad in ["", "0x", "-1", "12k", "0x1g", "18446744073709551616"] {
            let e = parse_u64(p, bad).unwrap_err();
            assert!(matches!(e, LookupError::Parse { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn attributes_are_trimmed_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::write(&a, "0x1000\n").unwrap();
        assert_eq!(read_u64(&a).unwrap(), 0x1000);
        assert_eq!(read_opt(&dir.path().join("none")).unwrap(), None);
        let e = read_req(&dir.path().join("none")).unwrap_err();
        assert!(matches!(e, LookupError::Missing { .. }), "{e}");
    }

    #[test]
    fn a_page_is_read_and_more_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("uuid");
        fs::write(&a, "x".repeat(ATTR_MAX)).unwrap();
        assert_eq!(read_req(&a).unwrap().1.len(), ATTR_MAX);
        fs::write(&a, "x".repeat(ATTR_MAX + 1)).unwrap();
        let e = read_req(&a).unwrap_err();
        assert!(matches!(e, LookupError::NotAttribute { .. }), "{e}");
        assert!(e.to_string().starts_with(&format!("{}: ", a.display())), "{e}");
    }

    #[test]
    fn special_files_are_refused_without_reading_them() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("uuid");
        symlink("/dev/zero", &zero).unwrap();
        let e = read_opt(&zero).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: not a sysfs attribute: a character device, not a regular file",
                zero.display()
            )
        );
        let fifo = dir.path().join("size");
        let c = CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path; mkfifo only creates a file there.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_opt(&fifo).unwrap_err();
        assert!(e.to_string().contains("a FIFO, not a regular file"), "{e}");
        let e = read_opt(dir.path()).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
    }

    #[test]
    fn non_utf8_is_a_parse_error() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::write(&a, [0xff, 0xfe, b'\n']).unwrap();
        let e = read_opt(&a).unwrap_err();
        assert!(
            matches!(
                e,
                LookupError::Parse {
                    expected: "UTF-8 text",
                    ..
                }
            ),
            "{e}"
        );
    }
}
