//! Bare-metal test guest for the tagmem reference VMM.
//!
//! Runs in 64-bit long mode as set up by the VMM (identity-mapped 2 MiB pages, flat segments, no
//! interrupts). It prints to the console port, then executes commands the VMM queues in the
//! test-control MMIO device and reports each result as one parseable console line.
#![no_std]
#![no_main]

extern crate alloc;

mod console;
mod heap;
mod idt;
mod mem;
#[allow(dead_code)]
mod protocol;
mod virtio;

use alloc::vec::Vec;
use core::fmt;
use core::ptr;
use protocol::*;
use tagmem_driver::{
    format_uuid, AcceptAll, ClaimMode, DaxDevice, Extent, MemResponse, RejectAll, TagMemDriver, Target, REGION,
};
use virtio::{DmaWindow, MmioTransport};

core::arch::global_asm!(
    ".section .text._start, \"ax\", @progbits",
    ".global _start",
    "_start:",
    // The VMM sets RSP; make it ABI-aligned before the first call.
    "    and rsp, -16",
    "    call {main}",
    "2:  hlt",
    "    jmp 2b",
    main = sym guest_main,
);

/// virtio device id of virtio-mem.
const VIRTIO_ID_MEM: u32 = 24;

type Driver = TagMemDriver<MmioTransport, DmaWindow>;

fn control_read(reg: u64) -> u64 {
    // SAFETY: CONTROL_BASE is identity mapped by the VMM's page tables and backed by no memslot,
    // so the access traps to the VMM's test-control device; it has no effect on guest memory.
    unsafe { ptr::read_volatile((CONTROL_BASE + reg) as *const u64) }
}

fn control_write(reg: u64, v: u64) {
    // SAFETY: as in `control_read`: a trapping store to the test-control device.
    unsafe { ptr::write_volatile((CONTROL_BASE + reg) as *mut u64, v) };
}

fn hlt() {
    // SAFETY: `hlt` only stops the vCPU until the VMM resumes it; it touches no memory.
    unsafe { core::arch::asm!("hlt", options(nomem, nostack, preserves_flags)) };
}

/// Byte sum and the first up-to-8 bytes of a range, as the `READ` line reports them.
#[derive(Default)]
struct Digest {
    sum: u64,
    first: [u8; 8],
    nfirst: usize,
}

impl Digest {
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.sum = self.sum.wrapping_add(u64::from(b));
            if self.nfirst < self.first.len() {
                self.first[self.nfirst] = b;
                self.nfirst += 1;
            }
        }
    }
}

/// Bytes as lowercase hex without separators.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{:02x}", b)?;
        }
        Ok(())
    }
}

/// Reads `len` bytes at `gpa` with volatile loads, 8 bytes at a time where aligned, so an unbacked
/// range costs one VMM exit per 8 bytes.
fn read_range(gpa: u64, len: u64) -> Digest {
    let mut d = Digest::default();
    let mut off = 0u64;
    while off < len {
        let addr = gpa.wrapping_add(off);
        if addr % 8 == 0 && len - off >= 8 {
            // SAFETY: the VMM's page tables identity-map the range the test asked for; a GPA with
            // no memslot traps to the VMM, one outside the tables faults into the IDT handler,
            // which reports it. Nothing in this program lives there.
            let v = unsafe { ptr::read_volatile(addr as *const u64) };
            d.add(&v.to_le_bytes());
            off += 8;
        } else {
            // SAFETY: as above, for one byte.
            let v = unsafe { ptr::read_volatile(addr as *const u8) };
            d.add(&[v]);
            off += 1;
        }
    }
    d
}

/// Fills `len` bytes at `gpa` with `byte` using volatile stores.
fn write_range(gpa: u64, len: u64, byte: u8) {
    for off in 0..len {
        // SAFETY: the test asked for this range outside the guest's own image, stack and heap
        // (it lies in memory the VMM mapped for the test, or in none); see `read_range`.
        unsafe { ptr::write_volatile(gpa.wrapping_add(off) as *mut u8, byte) };
    }
}

/// Reads `len` bytes at `gpa` `reps` times with aligned 8-byte volatile loads; returns the
/// wrapping sum of the words, so no load can be left out.
fn read_loop(gpa: u64, len: u64, reps: u64) -> u64 {
    let mut acc = 0u64;
    for _ in 0..reps {
        let mut off = 0u64;
        while len - off >= 8 {
            // SAFETY: as in `read_range`: the VMM identity-maps the range the benchmark asked for.
            let v = unsafe { ptr::read_volatile(gpa.wrapping_add(off) as *const u64) };
            acc = acc.wrapping_add(v);
            off += 8;
        }
    }
    acc
}

/// Fills `len` bytes at `gpa` `reps` times with aligned 8-byte volatile stores of `byte` repeated.
fn write_loop(gpa: u64, len: u64, reps: u64, byte: u8) {
    let word = u64::from_ne_bytes([byte; 8]);
    for _ in 0..reps {
        let mut off = 0u64;
        while len - off >= 8 {
            // SAFETY: as in `write_range`: memory the VMM mapped for the benchmark, outside the
            // guest's own image, stack and heap.
            unsafe { ptr::write_volatile(gpa.wrapping_add(off) as *mut u64, word) };
            off += 8;
        }
    }
}

/// A base virtio-mem response type as the `PLUGGED` and `UNPLUGGED` lines print it.
fn resp_code(r: MemResponse) -> u64 {
    match r {
        MemResponse::Ack => 0,
        MemResponse::Nack => 1,
        MemResponse::Busy => 2,
        MemResponse::Error => 3,
    }
}

fn tag_from(lo: u64, hi: u64) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&lo.to_le_bytes());
    t[8..].copy_from_slice(&hi.to_le_bytes());
    t
}

/// Decodes a `TARGET_*` argument list.
fn target_from(args: &[u64]) -> Option<Target> {
    match args {
        [TARGET_EXTENT, id, ..] => Some(Target::Extent(*id)),
        [TARGET_TAG, lo, hi, ..] => Some(Target::Tag(tag_from(*lo, *hi))),
        _ => None,
    }
}

/// Joins `id@addr+len` triples with commas, `-` for none.
struct Triples<I>(I);

impl<I: Iterator<Item = (u64, u64, u64)> + Clone> fmt::Display for Triples<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut any = false;
        for (id, a, l) in self.0.clone() {
            if any {
                f.write_str(",")?;
            }
            write!(f, "{}@{:#x}+{:#x}", id, a, l)?;
            any = true;
        }
        if !any {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// The guest's state between commands.
struct Guest {
    drv: Option<Driver>,
    autopoll: bool,
    verbose: bool,
}

impl Guest {
    fn boot() -> Guest {
        let drv = match MmioTransport::probe() {
            Some(t) if t.device_id() == VIRTIO_ID_MEM => {
                let dma = DmaWindow::new();
                let (base, len) = (dma.base(), dma.len());
                let mut drv = TagMemDriver::new(t, dma, base, len);
                match drv.init() {
                    Ok(()) => {
                        println!("DRIVER ready features={:#x} tagged={}", drv.features(), u8::from(drv.tagged()));
                        Some(drv)
                    }
                    Err(e) => {
                        println!("DRIVER init failed: {}", e);
                        None
                    }
                }
            }
            Some(t) => {
                println!("DRIVER absent: device id {}", t.device_id());
                None
            }
            None => {
                println!("DRIVER absent");
                None
            }
        };
        Guest { drv, autopoll: true, verbose: true }
    }

    /// Prints (or just counts) what the driver logged; returns the count.
    fn flush_log(&mut self) -> u64 {
        let Some(drv) = self.drv.as_mut() else { return 0 };
        let mut n = 0;
        for e in drv.drain_log() {
            if self.verbose {
                println!("EVT {}", e);
            }
            n += 1;
        }
        n
    }

    /// Polls the driver until it consumes no more events; returns the log entries produced.
    fn poll(&mut self) -> u64 {
        let Some(drv) = self.drv.as_mut() else { return 0 };
        let mut guard = 0;
        loop {
            match drv.poll() {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    println!("EVT poll failed: {}", e);
                    break;
                }
            }
            guard += 1;
            if guard > 64 {
                break;
            }
        }
        self.flush_log()
    }

    fn set_policy(&mut self, args: &[u64]) {
        let Some(drv) = self.drv.as_mut() else {
            println!("FAULT no driver");
            return;
        };
        match args {
            [POLICY_ACCEPT_ALL, ..] => drv.set_policy(AcceptAll),
            [POLICY_REJECT_ALL, ..] => drv.set_policy(RejectAll),
            [POLICY_ACCEPT_IDS, ids @ ..] => {
                let ids: Vec<u64> = ids.to_vec();
                drv.set_policy(move |_chain: u64, c: &[Extent]| {
                    c.iter().filter(|e| ids.contains(&e.id)).map(|e| e.id).collect::<Vec<u64>>()
                });
            }
            [POLICY_REJECT_TAG, lo, hi, ..] => {
                let tag = tag_from(*lo, *hi);
                drv.set_policy(move |_chain: u64, c: &[Extent]| {
                    c.iter().filter(|e| e.tag != tag).map(|e| e.id).collect::<Vec<u64>>()
                });
            }
            _ => {
                println!("FAULT bad policy");
                return;
            }
        }
        println!("POLICY kind={}", args[0]);
    }

    fn view(&mut self) {
        let Some(drv) = self.drv.as_ref() else {
            println!("FAULT no driver");
            return;
        };
        let line = |kind: &str, who: &str, d: &DaxDevice| {
            println!(
                "{} {} uuid={} size={:#x} node={} flags={:#x} rl={} wl={} rb={} wb={} class={} busy={} \
                 extents={} poison={}",
                kind,
                who,
                format_uuid(&d.uuid),
                d.size,
                d.node,
                d.flags,
                d.perf.read_latency_ns,
                d.perf.write_latency_ns,
                d.perf.read_bandwidth_mbps,
                d.perf.write_bandwidth_mbps,
                d.source,
                u8::from(d.busy),
                Triples(d.extents.iter().map(|e| (e.id, e.gpa, e.len))),
                Triples(d.extents.iter().flat_map(|e| e.poison.iter().map(move |p| (e.id, p.offset, p.length)))),
            );
        };
        for d in drv.devices() {
            line("DEV", &alloc::format!("name={}", d.name), d);
        }
        for d in drv.unclaimed() {
            line("FREE", &alloc::format!("region={}", REGION), d);
        }
        println!(
            "VIEW devices={} pending={} unclaimed={} seed={}",
            drv.devices().len(),
            drv.pending_chains(),
            drv.unclaimed().len(),
            drv.seed()
        );
    }

    /// Claims capacity by tag into the seed, as `daxctl create-device --uuid` does.
    fn claim(&mut self, args: &[u64]) {
        let Some(drv) = self.drv.as_mut() else {
            println!("FAULT no driver");
            return;
        };
        let tag = tag_from(args.first().copied().unwrap_or(0), args.get(1).copied().unwrap_or(0));
        let r = drv.claim(&tag).map(|d| {
            alloc::format!(
                "CLAIMED name={} uuid={} size={:#x} extents={}",
                d.name,
                format_uuid(&d.uuid),
                d.size,
                d.extents.len()
            )
        });
        self.flush_log();
        match r {
            Ok(line) => println!("{}", line),
            Err(e) => println!("CLAIM error={}", e),
        }
    }

    fn release(&mut self, args: &[u64]) {
        let (Some(drv), Some(target)) = (self.drv.as_mut(), target_from(args)) else {
            println!("FAULT no driver or bad target");
            return;
        };
        let r = drv.release(target);
        self.flush_log();
        match r {
            Ok(n) => println!("RELEASED count={}", n),
            Err(e) => println!("RELEASE error={}", e),
        }
    }

    fn busy(&mut self, args: &[u64]) {
        let (Some(drv), Some((&busy, rest))) = (self.drv.as_mut(), args.split_first()) else {
            println!("FAULT no driver or bad arguments");
            return;
        };
        let ok = target_from(rest).is_some_and(|t| drv.set_busy(t, busy != 0));
        println!("BUSY ok={}", u8::from(ok));
    }

    /// Prints every accepted extent with the record fields a nested VMM copies (`EXT` lines).
    fn extents(&mut self) {
        let Some(drv) = self.drv.as_ref() else {
            println!("FAULT no driver");
            return;
        };
        let mut count = 0u64;
        for d in drv.devices().iter().chain(drv.unclaimed()) {
            let dev = if d.is_claimed() { d.name.as_str() } else { "-" };
            for e in &d.extents {
                println!(
                    "EXT dev={} uuid={} busy={} rr={} id={} gpa={:#x} len={:#x} flags={:#x} seq={} node={} \
                     class={} rl={} wl={} rb={} wb={} poison={}",
                    dev,
                    format_uuid(&d.uuid),
                    u8::from(d.busy),
                    u8::from(d.release_requested),
                    e.id,
                    e.gpa,
                    e.len,
                    e.flags,
                    e.seq,
                    e.node,
                    e.source,
                    e.perf.read_latency_ns,
                    e.perf.write_latency_ns,
                    e.perf.read_bandwidth_mbps,
                    e.perf.write_bandwidth_mbps,
                    Triples(e.poison.iter().map(|p| (e.id, p.offset, p.length))),
                );
                count += 1;
            }
        }
        println!("EXTENTS count={}", count);
    }

    /// Resets the device and initialises the driver again; the driver re-learns what it holds.
    fn reinit(&mut self) {
        let Some(drv) = self.drv.as_mut() else {
            println!("FAULT no driver");
            return;
        };
        drv.reset();
        let r = drv.init();
        self.flush_log();
        let Some(drv) = self.drv.as_ref() else { return };
        match r {
            Ok(()) => println!(
                "REINIT ok=1 devices={} extents={}",
                drv.devices().len(),
                drv.accepted().count()
            ),
            Err(e) => println!("REINIT ok=0 error={}", e),
        }
    }

    /// Plugs `requests` consecutive ranges of `blocks` base blocks from `addr` on, as Linux's
    /// driver does after a config change; then reads the first byte.
    fn base_plug(&mut self, addr: u64, requests: u64, blocks: u64) {
        let Some(drv) = self.drv.as_mut() else {
            println!("FAULT no driver");
            return;
        };
        let Some(nb) = u16::try_from(blocks).ok().filter(|n| *n > 0) else {
            println!("FAULT bad block count={}", blocks);
            return;
        };
        // As Linux's virtio_mem on a config change: only the sizes, each under a generation check.
        if let Err(e) = drv.refresh_sizes() {
            println!("FAULT refresh config: {}", e);
            return;
        }
        let step = drv.config().block_size.get().wrapping_mul(blocks);
        let (mut acked, mut resp) = (0u64, 0u64);
        for i in 0..requests {
            match drv.plug(addr.wrapping_add(i.wrapping_mul(step)), nb) {
                Ok(MemResponse::Ack) => acked += 1,
                Ok(r) => {
                    resp = resp_code(r);
                    break;
                }
                Err(_) => {
                    resp = 255;
                    break;
                }
            }
        }
        let first = if acked > 0 { read_range(addr, 1) } else { Digest::default() };
        println!(
            "PLUGGED addr={:#x} requests={} acked={} resp={} first={}",
            addr,
            requests,
            acked,
            resp,
            Hex(&first.first[..first.nfirst])
        );
    }

    /// Runs one command; prints its result line.
    fn run(&mut self, cmd: u64, args: &[u64]) {
        let arg = |i: usize| args.get(i).copied().unwrap_or(0);
        match cmd {
            CMD_READ => {
                let (gpa, len) = (arg(0), arg(1));
                let d = read_range(gpa, len);
                println!("READ gpa={:#x} len={} sum={:#x} first={}", gpa, len, d.sum, Hex(&d.first[..d.nfirst]));
            }
            CMD_WRITE => {
                // Truncation intended: the byte value travels in the low 8 bits of arg2.
                let byte = (arg(2) & 0xff) as u8;
                write_range(arg(0), arg(1), byte);
                println!("WROTE gpa={:#x} len={} byte={:#04x}", arg(0), arg(1), byte);
            }
            CMD_ALLOC => {
                let Ok(n) = usize::try_from(arg(0)) else {
                    println!("FAULT alloc len={} too large", arg(0));
                    return;
                };
                let mut v: Vec<u8> = Vec::new();
                if v.try_reserve_exact(n).is_err() {
                    println!("ALLOC len={} failed", n);
                    return;
                }
                v.extend((0..n).map(|i| (i % 251) as u8));
                let sum = v.iter().fold(0u64, |s, &b| s.wrapping_add(u64::from(b)));
                drop(v);
                println!("ALLOC len={} sum={:#x}", n, sum);
            }
            CMD_POLICY => self.set_policy(args),
            CMD_POLL => {
                let n = self.poll();
                println!("POLLED events={}", n);
            }
            CMD_AUTOPOLL => {
                self.autopoll = arg(0) != 0;
                println!("AUTOPOLL on={}", u8::from(self.autopoll));
            }
            CMD_VIEW => self.view(),
            CMD_RELEASE => self.release(args),
            CMD_BUSY => self.busy(args),
            CMD_VERBOSE => {
                self.verbose = arg(0) != 0;
                println!("VERBOSE on={}", u8::from(self.verbose));
            }
            CMD_EXTENTS => self.extents(),
            CMD_CLAIM => self.claim(args),
            CMD_CLAIM_MODE => match self.drv.as_mut() {
                Some(drv) => {
                    let auto = arg(0) != 0;
                    drv.set_claim_mode(if auto { ClaimMode::OnAccept } else { ClaimMode::OnRequest });
                    println!("CLAIMMODE auto={}", u8::from(auto));
                }
                None => println!("FAULT no driver"),
            },
            CMD_REINIT => self.reinit(),
            CMD_READ_LOOP | CMD_WRITE_LOOP if arg(0) % 8 != 0 => {
                println!("FAULT unaligned gpa={:#x}", arg(0));
            }
            CMD_READ_LOOP => {
                let acc = read_loop(arg(0), arg(1), arg(2));
                println!("READLOOP gpa={:#x} len={} reps={} acc={:#x}", arg(0), arg(1), arg(2), acc);
            }
            CMD_WRITE_LOOP => {
                // Truncation intended: the byte value travels in the low 8 bits of arg3.
                write_loop(arg(0), arg(1), arg(2), (arg(3) & 0xff) as u8);
                println!("WROTELOOP gpa={:#x} len={} reps={}", arg(0), arg(1), arg(2));
            }
            CMD_BASE_PLUG => self.base_plug(arg(0), arg(1), arg(2)),
            CMD_BASE_UNPLUG_ALL => match self.drv.as_mut().map(|d| d.unplug_all()) {
                Some(Ok(r)) => println!("UNPLUGGED resp={}", resp_code(r)),
                Some(Err(_)) => println!("UNPLUGGED resp=255"),
                None => println!("FAULT no driver"),
            },
            other => println!("FAULT unknown command={:#x}", other),
        }
    }
}

extern "C" fn guest_main() -> ! {
    idt::install();
    println!("HELLO tagmem test guest");
    let magic = control_read(REG_MAGIC);
    if magic != CONTROL_MAGIC {
        println!("FAULT control magic={:#x}", magic);
    }
    let mut guest = Guest::boot();
    let mut args: Vec<u64> = Vec::with_capacity(MAX_ARGS);
    loop {
        if guest.autopoll {
            guest.poll();
        }
        let cmd = control_read(REG_COMMAND);
        if cmd == CMD_IDLE {
            hlt();
            continue;
        }
        let seq = control_read(REG_SEQ);
        let argc = usize::try_from(control_read(REG_ARGC)).unwrap_or(0).min(MAX_ARGS);
        args.clear();
        args.extend((0..argc).map(|_| control_read(REG_ARG_NEXT)));
        if cmd == CMD_STOP {
            println!("STOP");
            control_write(REG_DONE, seq);
            loop {
                hlt();
            }
        }
        guest.run(cmd, &args);
        control_write(REG_DONE, seq);
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("FAULT panic: {}", info);
    loop {
        hlt();
    }
}
