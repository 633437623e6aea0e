//! Where the library's diagnostics go. The VMM's library code only emits `log` records (a timer
//! descriptor that failed, the API server running out of descriptors); the binary decides where
//! they are shown. [`StderrLogger`] is the command line's choice: one line per record on
//! standard error, `tagmem-vmm: <message>`.

use log::{LevelFilter, Log, Metadata, Record, SetLoggerError};
use std::io::Write;

/// Prints each record as `tagmem-vmm: <message>` on standard error.
#[derive(Debug)]
pub struct StderrLogger {
    level: LevelFilter,
}

static LOGGER: StderrLogger = StderrLogger {
    level: LevelFilter::Info,
};

impl StderrLogger {
    /// Installs the logger for the process (records up to `info`); fails if one is installed.
    pub fn install() -> Result<(), SetLoggerError> {
        log::set_logger(&LOGGER)?;
        log::set_max_level(LOGGER.level);
        Ok(())
    }
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            // One write per line, so lines of different threads do not interleave.
            let line = format!("tagmem-vmm: {}\n", record.args());
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}
