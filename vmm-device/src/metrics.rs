//! Counters of what the device did; tests check how much each one moved.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Serialize for Counter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.get())
    }
}

/// Device counters.
#[derive(Debug, Default, Serialize)]
pub struct DeviceMetrics {
    /// Descriptor chains taken from the guest-request queue.
    pub requests: Counter,
    /// Chains refused outright (malformed, outside memory, no room for a response).
    pub bad_chains: Counter,
    /// Base requests answered with NACK, BUSY or ERROR.
    pub base_errors: Counter,
    /// Tagged requests answered with an error.
    pub tagged_errors: Counter,
    /// Offer chains the host started.
    pub chains_offered: Counter,
    /// Extents offered.
    pub extents_offered: Counter,
    /// Extents the driver accepted.
    pub extents_accepted: Counter,
    /// Extents the driver left out of its answer.
    pub extents_rejected: Counter,
    /// Extents released.
    pub extents_released: Counter,
    /// Chains abandoned on timeout.
    pub chains_abandoned: Counter,
    /// Events written to the event queue.
    pub events_delivered: Counter,
    /// Event buffers returned unused (too short, wrong direction, outside memory).
    pub bad_event_buffers: Counter,
    /// Mapper calls that failed.
    pub map_failures: Counter,
    /// Driver notifications (kicks) of the guest-request queue.
    pub guestq_notifies: Counter,
    /// Driver notifications (kicks) of the event queue.
    pub eventq_notifies: Counter,
    /// Used-buffer notifications the device raised for the guest-request queue.
    pub guestq_interrupts: Counter,
    /// Used-buffer notifications the device raised for the event queue.
    pub eventq_interrupts: Counter,
    /// Configuration-change notifications the device raised.
    pub config_interrupts: Counter,
    /// Calls into the mapper that map (one call may map many ranges).
    pub map_calls: Counter,
    /// Calls into the mapper that unmap (one call may unmap many ranges).
    pub unmap_calls: Counter,
}
