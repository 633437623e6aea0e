//! Host backings the memslot mapper maps extents from: the host model's ([`tagmem_host::backing`]),
//! re-exported under the VMM's path.

pub use tagmem_host::backing::*;
