//! The test-control MMIO device the guest pops its commands from (see [`crate::protocol`]).

use crate::command::{Command, CommandError};
use crate::protocol::*;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar};
use tagmem_vmm::BusDevice;

/// A queued command: sequence number, code, arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Queued {
    seq: u64,
    code: u64,
    args: Vec<u64>,
}

/// The test-control MMIO device: a queue of commands the guest pops, and the sequence number of
/// the last command the guest finished.
#[derive(Debug, Default)]
pub struct TestControl {
    queue: VecDeque<Queued>,
    latched: Option<Queued>,
    next_arg: usize,
    next_seq: u64,
    done: u64,
    done_signal: Arc<Condvar>,
}

impl TestControl {
    /// A control device that notifies `done_signal` whenever the guest finishes a command.
    pub fn new(done_signal: Arc<Condvar>) -> Self {
        TestControl {
            done_signal,
            ..Default::default()
        }
    }

    /// Queues a command; returns its sequence number.
    pub fn push(&mut self, cmd: &Command) -> Result<u64, CommandError> {
        let (code, args) = cmd.encode();
        if args.len() > MAX_ARGS {
            return Err(CommandError::TooManyArgs(args.len()));
        }
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        self.queue.push_back(Queued {
            seq: self.next_seq,
            code,
            args,
        });
        Ok(self.next_seq)
    }

    /// Sequence number of the last command the guest finished.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Commands queued and not yet taken by the guest.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The counters a snapshot keeps: (last sequence number handed out, last one done).
    pub fn counters(&self) -> (u64, u64) {
        (self.next_seq, self.done)
    }

    /// Restores the counters of [`TestControl::counters`].
    pub fn set_counters(&mut self, next_seq: u64, done: u64) {
        self.next_seq = next_seq;
        self.done = done;
    }

    fn arg(&self, i: usize) -> u64 {
        self.latched
            .as_ref()
            .and_then(|q| q.args.get(i))
            .copied()
            .unwrap_or(0)
    }
}

impl BusDevice for TestControl {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            REG_MAGIC => CONTROL_MAGIC,
            REG_COMMAND => {
                self.latched = self.queue.pop_front();
                self.next_arg = 0;
                self.latched.as_ref().map_or(CMD_IDLE, |q| q.code)
            }
            REG_ARG0 => self.arg(0),
            REG_ARG1 => self.arg(1),
            REG_ARG2 => self.arg(2),
            REG_ARGC => self
                .latched
                .as_ref()
                .map_or(0, |q| u64::try_from(q.args.len()).unwrap_or(u64::MAX)),
            REG_ARG_NEXT => {
                let v = self.arg(self.next_arg);
                self.next_arg = self.next_arg.saturating_add(1);
                v
            }
            REG_SEQ => self.latched.as_ref().map_or(0, |q| q.seq),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(bytes.len());
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != REG_DONE {
            return;
        }
        let mut b = [0u8; 8];
        let n = data.len().min(b.len());
        b[..n].copy_from_slice(&data[..n]);
        self.done = u64::from_le_bytes(b);
        self.done_signal.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Policy;
    use tagmem_device::Target;
    use uuid::Uuid;

    #[test]
    fn commands_encode() {
        let tag = Uuid::from_u128(0x0102);
        let (code, args) = Command::Policy(Policy::RejectTag(tag)).encode();
        assert_eq!(code, CMD_POLICY);
        assert_eq!(args, vec![POLICY_REJECT_TAG, 0, 0x0201 << 48]);
        let (code, args) = Command::Busy {
            target: Target::Extent(9),
            busy: true,
        }
        .encode();
        assert_eq!((code, args), (CMD_BUSY, vec![1, TARGET_EXTENT, 9]));
        let mut c = TestControl::default();
        let too_many = Command::Policy(Policy::AcceptIds((0..64).collect()));
        assert_eq!(c.push(&too_many), Err(CommandError::TooManyArgs(65)));
    }

    #[test]
    fn control_device_pops_latches_and_signals_done() {
        let mut c = TestControl::default();
        let seq = c
            .push(&Command::Write {
                gpa: 0x1000,
                len: 2,
                byte: 7,
            })
            .unwrap();
        let read = |c: &mut TestControl, reg| {
            let mut b = [0u8; 8];
            c.read(reg, &mut b);
            u64::from_le_bytes(b)
        };
        assert_eq!(read(&mut c, REG_MAGIC), CONTROL_MAGIC);
        assert_eq!(read(&mut c, REG_COMMAND), CMD_WRITE);
        assert_eq!(read(&mut c, REG_SEQ), seq);
        assert_eq!(read(&mut c, REG_ARGC), 3);
        assert_eq!(
            [
                read(&mut c, REG_ARG0),
                read(&mut c, REG_ARG1),
                read(&mut c, REG_ARG2)
            ],
            [0x1000, 2, 7]
        );
        assert_eq!(
            [
                read(&mut c, REG_ARG_NEXT),
                read(&mut c, REG_ARG_NEXT),
                read(&mut c, REG_ARG_NEXT),
                read(&mut c, REG_ARG_NEXT)
            ],
            [0x1000, 2, 7, 0]
        );
        c.write(REG_DONE, &seq.to_le_bytes());
        assert_eq!(c.done(), seq);
        assert_eq!(read(&mut c, REG_COMMAND), CMD_IDLE);
        assert_eq!(read(&mut c, REG_ARG0), 0);
        assert_eq!(read(&mut c, REG_SEQ), 0);
    }
}
