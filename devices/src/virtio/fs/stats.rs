//! Request counters, per queue and per FUSE opcode, for logs and tests.

use std::sync::atomic::{AtomicU64, Ordering};

const OPCODES: usize = 64;

pub struct FsStats {
    per_queue: Vec<AtomicU64>,
    per_opcode: Vec<AtomicU64>,
    errors: AtomicU64,
}

impl FsStats {
    pub fn new(queues: usize) -> Self {
        FsStats {
            per_queue: (0..queues).map(|_| AtomicU64::new(0)).collect(),
            per_opcode: (0..OPCODES).map(|_| AtomicU64::new(0)).collect(),
            errors: AtomicU64::new(0),
        }
    }

    pub fn request(&self, queue: usize, opcode: u32) {
        if let Some(c) = self.per_queue.get(queue) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(c) = self.per_opcode.get(opcode as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A chain that could not be served (malformed, or the server failed).
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn queue_requests(&self) -> Vec<u64> {
        self.per_queue
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    pub fn opcode_requests(&self, opcode: u32) -> u64 {
        self.per_opcode
            .get(opcode as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// `queue0=N queue1=N ... read=N write=N setupmapping=N
    /// removemapping=N errors=N`.
    pub fn summary(&self) -> String {
        let mut s: Vec<String> = self
            .queue_requests()
            .iter()
            .enumerate()
            .map(|(i, n)| format!("queue{i}={n}"))
            .collect();
        // The opcodes that tell whether file data went through DAX.
        for (name, opcode) in [
            ("read", 15),
            ("write", 16),
            ("setupmapping", 48),
            ("removemapping", 49),
        ] {
            s.push(format!("{name}={}", self.opcode_requests(opcode)));
        }
        s.push(format!("errors={}", self.errors()));
        s.join(" ")
    }
}
