//! Stub definitions of the Cloud Hypervisor items the adapter uses: the same names, signatures
//! and fields as CH at the series' base commit, with plain bodies. They only let the adapter
//! compile and run in tests here; none of CH's behaviour is reproduced.

pub mod device;
pub mod epoll_helper;
pub mod memory_manager;
pub mod seccomp_filters;
pub mod virtio;

/// `vm_migration`: the snapshot traits.
pub mod vm_migration {
    use serde::Serialize;

    /// `vm_migration::MigratableError` (one variant stands for CH's several).
    #[derive(Debug)]
    pub enum MigratableError {
        /// A snapshot could not be made.
        Snapshot(String),
    }

    impl std::fmt::Display for MigratableError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                MigratableError::Snapshot(e) => write!(f, "snapshot: {e}"),
            }
        }
    }

    /// `vm_migration::Snapshot`: a component's state as JSON.
    #[derive(Debug, Default)]
    pub struct Snapshot {
        /// The serialized state.
        pub state: String,
    }

    impl Snapshot {
        /// Serializes `state`.
        pub fn new_from_state<T: Serialize>(state: &T) -> Result<Self, MigratableError> {
            serde_json::to_string(state)
                .map(|state| Snapshot { state })
                .map_err(|e| MigratableError::Snapshot(e.to_string()))
        }
    }

    /// `vm_migration::Pausable`.
    pub trait Pausable {
        /// Pauses the component.
        fn pause(&mut self) -> Result<(), MigratableError> {
            Ok(())
        }
        /// Resumes the component.
        fn resume(&mut self) -> Result<(), MigratableError> {
            Ok(())
        }
    }

    /// `vm_migration::Snapshottable`.
    pub trait Snapshottable: Pausable {
        /// The component id.
        fn id(&self) -> String {
            String::new()
        }
        /// The component's state.
        fn snapshot(&mut self) -> Result<Snapshot, MigratableError> {
            Ok(Snapshot::default())
        }
    }

    /// `vm_migration::Transportable`.
    pub trait Transportable: Pausable + Snapshottable {}

    /// `vm_migration::Migratable`.
    pub trait Migratable: Send + Pausable + Snapshottable + Transportable {}
}

/// `seccompiler::SeccompAction`.
pub mod seccompiler {
    /// What a seccomp filter does on a match.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum SeccompAction {
        /// Allow the call.
        Allow,
        /// Trap.
        Trap,
    }
}

/// `epoll::Event`.
pub mod epoll {
    /// One ready event: `data` is the id the fd was registered with.
    #[derive(Clone, Copy, Debug)]
    pub struct Event {
        /// Event bits.
        pub events: u32,
        /// The registered id.
        pub data: u64,
    }
}

/// `event_monitor::event!`: CH's event log, here discarded.
pub mod event_monitor {
    macro_rules! event_stub {
        ($($arg:expr),* $(,)?) => {{
            $(let _ = &$arg;)*
        }};
    }
    pub(crate) use event_stub as event;
}

/// `anyhow::Error` and `anyhow!`, as far as the adapter uses them.
pub mod anyhow {
    /// An error message.
    #[derive(Debug)]
    pub struct Error(pub String);

    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Error {}

    macro_rules! anyhow_stub {
        ($($arg:tt)*) => {
            $crate::ch::anyhow::Error(format!($($arg)*))
        };
    }
    pub(crate) use anyhow_stub as anyhow;
}
