//! Solver results cached by request, so a guest that allocates the same swapchain again (or
//! sends `Solve` then `Allocate`) skips the solver.
//!
//! The solver is deterministic for a request and a heap set, and a broker's heap set is fixed
//! at start-up, so the (resolved) request alone is the key. Keys are hashed with a small
//! multiply-rotate hasher seeded per cache from the standard library's random state: fast for
//! the few hundred bytes of a request, and a peer cannot precompute collisions. The cache holds
//! at most `capacity` entries; when full it is emptied (requests repeat within a session, so a
//! full cache means the working set is too large for it anyway).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bufbroker_proto::solver::{Solution, SolveError, SolveOptions};
use bufbroker_proto::{HeapInfo, Request, solve_with};

/// The outcome of one solve, shared between everyone who asks the same.
pub type Outcome = Arc<Result<Solution, SolveError>>;

const MULTIPLIER: u64 = 0x517c_c1b7_2722_0a95;

/// A multiply-rotate hasher (the scheme of rustc's `FxHasher`) with a random starting state.
#[derive(Debug, Clone, Copy)]
pub struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(MULTIPLIER);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            if let Some(dst) = word.get_mut(..rest.len()) {
                dst.copy_from_slice(rest);
            }
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(i.into());
    }

    fn write_u16(&mut self, i: u16) {
        self.add(i.into());
    }

    fn write_u32(&mut self, i: u32) {
        self.add(i.into());
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds [`FastHasher`]s with one random seed.
#[derive(Debug, Clone, Copy)]
pub struct FastHashState(u64);

impl Default for FastHashState {
    fn default() -> Self {
        FastHashState(
            std::collections::hash_map::RandomState::new().hash_one(0x6275_6662_726f_6b65_u64),
        )
    }
}

impl BuildHasher for FastHashState {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

/// Solver outcomes by request.
#[derive(Debug)]
pub struct PlanCache {
    map: Mutex<HashMap<Request, Outcome, FastHashState>>,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl PlanCache {
    /// An empty cache of at most `capacity` entries (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        PlanCache {
            map: Mutex::new(HashMap::with_capacity_and_hasher(
                capacity.min(1024),
                FastHashState::default(),
            )),
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cached outcome for `request`, if any.
    pub fn get(&self, request: &Request) -> Option<Outcome> {
        let found = self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(request)
            .cloned();
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// The outcome for `request`: cached, or solved against `heaps` (outside the lock) and
    /// remembered.
    pub fn solve(&self, request: &Request, heaps: &[HeapInfo], options: &SolveOptions) -> Outcome {
        if let Some(outcome) = self.get(request) {
            return outcome;
        }
        let outcome = Arc::new(solve_with(request, heaps, options));
        if self.capacity > 0 {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            if map.len() >= self.capacity {
                map.clear();
            }
            map.insert(request.clone(), outcome.clone());
        }
        outcome
    }

    /// (hits, misses) since creation.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}
