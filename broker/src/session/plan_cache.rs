//! Solver results cached by request, so a guest that allocates the same swapchain again (or
//! sends `Solve` then `Allocate`) skips the solver — and skips resolving its named
//! participants too.
//!
//! # The key
//!
//! An entry is keyed by the request *as the client wrote it* (named participants still
//! unresolved), in its canonical wire encoding (postcard, as in `Solve` and `Allocate`), plus a
//! [`Resolution`]: which descriptions the names stood for when the entry was solved.
//!
//! - A request without named participants means the same to every session: it is solved
//!   under [`Resolution::UNNAMED`] and shared by all.
//! - A request with names is solved under its session's current resolution, a number the
//!   cache hands out ([`PlanCache::resolution`]) and never reuses. A session takes a new one
//!   whenever what its names resolve to can change (registering or unregistering a
//!   participant) and [forgets](PlanCache::forget) the old one, so a stale entry is neither
//!   found nor kept. Configured host participants and policies are fixed for a broker's life.
//!
//! A lookup hashes the encoded bytes (four independent multiply-rotate lanes, seeded per
//! cache from the standard library's random state, so a peer cannot precompute collisions),
//! finds the one entry with that hash, and compares the resolution and the bytes in full: a
//! hit is always the same request. No resolving, no allocation, one short lock.
//!
//! # Heaps
//!
//! The solver is deterministic for a request, a heap set and options. A broker's options are
//! fixed; when its heap set changes it calls [`PlanCache::invalidate_heaps`], which empties
//! the cache and makes every solve that started before it drop its result instead of storing
//! it.
//!
//! The cache holds at most `capacity` entries; when full it is emptied (requests repeat within
//! a session, so a full cache means the working set is too large for it anyway).

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bufbroker_proto::solver::{Solution, SolveError, SolveOptions};
use bufbroker_proto::wire::{self, Allocate, Message, Solve};
use bufbroker_proto::{HeapInfo, ParticipantId, Request, solve_with};

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
            self.add(le_word(chunk));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            self.add(le_word(rest));
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

/// Up to 8 bytes as a little-endian word, zero-padded.
fn le_word(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let n = bytes.len().min(8);
    if let (Some(dst), Some(src)) = (word.get_mut(..n), bytes.get(..n)) {
        dst.copy_from_slice(src);
    }
    u64::from_le_bytes(word)
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

impl FastHashState {
    /// The hash of `bytes` and `tag`: four multiply-rotate lanes over 32-byte blocks (so the
    /// multiplications overlap), folded and finished with a final mix.
    fn hash_bytes(&self, tag: u64, bytes: &[u8]) -> u64 {
        let seed = self.0;
        let mut lanes = [
            FastHasher(seed),
            FastHasher(seed ^ 0x2d35_8dcc_aa6c_78a5),
            FastHasher(seed ^ 0x8bb8_4b93_962e_acc9),
            FastHasher(seed ^ 0x4b33_a62e_d433_d4a3),
        ];
        let mut blocks = bytes.chunks_exact(32);
        for block in &mut blocks {
            for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
                lane.add(le_word(word));
            }
        }
        let [mut a, b, c, d] = lanes;
        a.write(blocks.remainder());
        a.add(b.0.rotate_left(17) ^ c.0.rotate_left(31) ^ d.0.rotate_left(47));
        a.add(tag);
        a.add(bytes.len() as u64);
        // A final avalanche (the murmur3 finaliser): the low bits pick the bucket.
        let mut h = a.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
}

/// A hash that is already a hash: passed through.
#[derive(Debug, Default, Clone, Copy)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct PrehashedState;

impl BuildHasher for PrehashedState {
    type Hasher = Prehashed;
    fn build_hasher(&self) -> Prehashed {
        Prehashed(0)
    }
}

/// What the named participants of a request stand for: see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resolution(u64);

impl Resolution {
    /// For requests without named participants: the same in every session.
    pub const UNNAMED: Resolution = Resolution(0);

    /// The resolution `request` is solved under in a session whose current one is `session`.
    pub fn for_request(request: &Request, session: Resolution) -> Resolution {
        let named = request
            .participants
            .iter()
            .any(|p| matches!(p.id, ParticipantId::Named(_)));
        if named { session } else { Self::UNNAMED }
    }
}

/// A request to look up: the decoded request, its bytes as they arrived when known
/// ([`wire_request`]), and the resolution it is solved under.
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    /// The request.
    pub request: &'a Request,
    /// Its encoding as received; `None` re-encodes it (several times the cost of a hit).
    pub wire: Option<&'a [u8]>,
    /// See [`Resolution::for_request`].
    pub resolution: Resolution,
}

impl<'a> Lookup<'a> {
    /// `request` (received as `wire`, if known) in a session whose resolution is `session`.
    pub fn new(request: &'a Request, wire: Option<&'a [u8]>, session: Resolution) -> Self {
        Lookup {
            request,
            wire,
            resolution: Resolution::for_request(request, session),
        }
    }
}

/// The request of a `Solve` or `Allocate` message exactly as it arrived in `bytes` (the whole
/// message, header included): the key [`PlanCache`] uses without encoding it again. `None`
/// for other messages, and for an `Allocate` whose placement was not encoded canonically or
/// is longer than 64 bytes (the request's bytes are told apart by encoding the placement again
/// and finding it at the end).
///
/// Both payloads are postcard structs, which encode as their fields one after another:
/// `Solve` is the request alone, `Allocate` the request and then the placement.
pub fn wire_request<'a>(message: &Message, bytes: &'a [u8]) -> Option<&'a [u8]> {
    let payload = bytes.get(wire::HEADER_SIZE..)?;
    match message {
        Message::Solve(Solve { request: _ }) => Some(payload),
        Message::Allocate(Allocate {
            request: _,
            placement,
        }) => {
            let mut buf = [0u8; 64];
            let tail = postcard::to_slice(placement, &mut buf).ok()?;
            payload.strip_suffix(&*tail)
        }
        _ => None,
    }
}

#[derive(Debug)]
struct Entry {
    resolution: Resolution,
    request: Box<[u8]>,
    outcome: Outcome,
}

#[derive(Debug)]
struct Entries {
    /// By the hash of (resolution, encoded request); a colliding entry replaces the other.
    map: HashMap<u64, Entry, PrehashedState>,
    /// Bumped by [`PlanCache::invalidate_heaps`].
    heaps: u64,
}

thread_local! {
    /// The encoding buffer of [`PlanCache::get`] and [`PlanCache::solve`].
    static ENCODED: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Solver outcomes by request: see the [module docs](self).
#[derive(Debug)]
pub struct PlanCache {
    entries: Mutex<Entries>,
    hasher: FastHashState,
    capacity: usize,
    next_resolution: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl PlanCache {
    /// An empty cache of at most `capacity` entries (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        PlanCache {
            entries: Mutex::new(Entries {
                map: HashMap::with_capacity_and_hasher(capacity.min(1024), PrehashedState),
                heaps: 0,
            }),
            hasher: FastHashState::default(),
            capacity,
            next_resolution: AtomicU64::new(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A resolution never handed out before, for a session whose names may mean something
    /// new.
    pub fn resolution(&self) -> Resolution {
        Resolution(self.next_resolution.fetch_add(1, Ordering::Relaxed))
    }

    /// Drops every entry solved under `resolution` (a session's names changed or it ended).
    pub fn forget(&self, resolution: Resolution) {
        if resolution == Resolution::UNNAMED {
            return;
        }
        self.lock().map.retain(|_, e| e.resolution != resolution);
    }

    /// The heap set changed: drops every entry, and the result of every solve still running.
    pub fn invalidate_heaps(&self) {
        let mut entries = self.lock();
        entries.map.clear();
        entries.heaps = entries.heaps.wrapping_add(1);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// No entries held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The cached outcome for the request whose wire encoding is `encoded`, under
    /// `resolution` (see [`Resolution::for_request`]).
    pub fn get_encoded(&self, resolution: Resolution, encoded: &[u8]) -> Option<Outcome> {
        let hash = self.hasher.hash_bytes(resolution.0, encoded);
        let found = self
            .lock()
            .map
            .get(&hash)
            .filter(|e| e.resolution == resolution && *e.request == *encoded)
            .map(|e| e.outcome.clone());
        self.count(found.is_some());
        found
    }

    /// The cached outcome for `request` under `resolution`, if any.
    pub fn get(&self, resolution: Resolution, request: &Request) -> Option<Outcome> {
        with_encoded(request, |encoded| match encoded {
            Some(bytes) => self.get_encoded(resolution, bytes),
            None => None,
        })
    }

    /// The outcome for `request`: cached under `request.resolution`, or `resolve`d (named
    /// participants replaced by what they stand for), solved against `heaps` outside the lock,
    /// and remembered. Fails only when `resolve` fails (then nothing is remembered).
    pub fn solve<E>(
        &self,
        request: Lookup<'_>,
        resolve: impl FnOnce(&Request) -> Result<Request, E>,
        heaps: &[HeapInfo],
        options: &SolveOptions,
    ) -> Result<Outcome, E> {
        match request.wire {
            Some(bytes) => self.solve_encoded(&request, Some(bytes), resolve, heaps, options),
            // Re-encoding costs several times the lookup (see `broker/benches/alloc.rs`).
            None => with_encoded(request.request, |encoded| {
                self.solve_encoded(&request, encoded, resolve, heaps, options)
            }),
        }
    }

    fn solve_encoded<E>(
        &self,
        request: &Lookup<'_>,
        encoded: Option<&[u8]>,
        resolve: impl FnOnce(&Request) -> Result<Request, E>,
        heaps: &[HeapInfo],
        options: &SolveOptions,
    ) -> Result<Outcome, E> {
        let resolution = request.resolution;
        if let Some(found) = encoded.and_then(|bytes| self.get_encoded(resolution, bytes)) {
            return Ok(found);
        }
        let heaps_before = self.lock().heaps;
        let resolved = resolve(request.request)?;
        let outcome = Arc::new(solve_with(&resolved, heaps, options));
        if let (Some(bytes), true) = (encoded, self.capacity > 0) {
            let hash = self.hasher.hash_bytes(resolution.0, bytes);
            let mut entries = self.lock();
            if entries.heaps == heaps_before {
                if entries.map.len() >= self.capacity {
                    entries.map.clear();
                }
                entries.map.insert(
                    hash,
                    Entry {
                        resolution,
                        request: bytes.into(),
                        outcome: outcome.clone(),
                    },
                );
            }
        }
        Ok(outcome)
    }

    /// (hits, misses) since creation.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

/// Runs `f` on the wire encoding of `request` (in this thread's reusable buffer), or on
/// `None` if it cannot be encoded (then it is not cached; a decoded request always can).
fn with_encoded<T>(request: &Request, f: impl FnOnce(Option<&[u8]>) -> T) -> T {
    // Taken out while `f` runs: a nested call (none today) would start from an empty buffer.
    let mut buf = ENCODED.take();
    buf.clear();
    match postcard::to_extend(request, buf) {
        Ok(bytes) => {
            let result = f(Some(&bytes));
            ENCODED.set(bytes);
            result
        }
        Err(_) => f(None),
    }
}

#[cfg(test)]
mod tests {
    // Test code: a panic is a test failure.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use bufbroker_proto::{ConstraintSet, Participant, Usage};

    use super::*;

    fn cpu(width: u32) -> Request {
        let usage = Usage::CPU_READ | Usage::CPU_WRITE;
        Request {
            width,
            height: 64,
            formats: vec!["XRGB8888".parse().unwrap()],
            usage,
            participants: vec![Participant::new(
                ParticipantId::Cpu,
                "cpu",
                usage,
                ConstraintSet::default(),
            )],
            count: 1,
        }
    }

    fn named(width: u32) -> Request {
        let mut r = cpu(width);
        r.participants[0].id = ParticipantId::Named("display".into());
        r
    }

    fn resolve_ok(r: &Request) -> Result<Request, ()> {
        let mut r = r.clone();
        for p in &mut r.participants {
            p.id = ParticipantId::Cpu;
        }
        Ok(r)
    }

    fn width(outcome: &Outcome) -> u32 {
        outcome.as_ref().as_ref().unwrap().plans[0].width
    }

    fn lookup(r: &Request, resolution: Resolution) -> Lookup<'_> {
        Lookup {
            request: r,
            wire: None,
            resolution,
        }
    }

    fn solve(cache: &PlanCache, resolution: Resolution, r: &Request) -> Outcome {
        let heaps = [HeapInfo::memfd()];
        cache
            .solve(
                lookup(r, resolution),
                resolve_ok,
                &heaps,
                &SolveOptions::default(),
            )
            .unwrap()
    }

    #[test]
    fn repeated_request_is_a_hit_with_the_same_outcome() {
        let cache = PlanCache::new(16);
        let first = solve(&cache, Resolution::UNNAMED, &cpu(64));

        let again = solve(&cache, Resolution::UNNAMED, &cpu(64));

        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(cache.counters(), (1, 1));
    }

    #[test]
    fn different_request_is_a_miss() {
        let cache = PlanCache::new(16);
        solve(&cache, Resolution::UNNAMED, &cpu(64));

        let other = solve(&cache, Resolution::UNNAMED, &cpu(128));

        assert_eq!(width(&other), 128);
        assert_eq!(cache.counters(), (0, 2));
    }

    #[test]
    fn get_finds_what_solve_stored_and_only_under_its_resolution() {
        let cache = PlanCache::new(16);
        let session = cache.resolution();
        solve(&cache, session, &named(64));

        assert!(cache.get(session, &named(64)).is_some());
        assert!(cache.get(cache.resolution(), &named(64)).is_none());
        assert!(cache.get(Resolution::UNNAMED, &named(64)).is_none());
    }

    #[test]
    fn forgotten_resolution_is_resolved_again() {
        let cache = PlanCache::new(16);
        let old = cache.resolution();
        solve(&cache, old, &named(64));
        let mut resolved = 0;

        cache.forget(old);
        let new = cache.resolution();
        let heaps = [HeapInfo::memfd()];
        cache
            .solve(
                lookup(&named(64), new),
                |r| {
                    resolved += 1;
                    resolve_ok(r)
                },
                &heaps,
                &SolveOptions::default(),
            )
            .unwrap();

        assert_eq!(resolved, 1);
        assert_ne!(old, new);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn forget_keeps_other_resolutions() {
        let cache = PlanCache::new(16);
        let a = cache.resolution();
        let b = cache.resolution();
        solve(&cache, a, &named(64));
        solve(&cache, b, &named(64));
        solve(&cache, Resolution::UNNAMED, &cpu(64));

        cache.forget(a);

        assert!(cache.get(a, &named(64)).is_none());
        assert!(cache.get(b, &named(64)).is_some());
        assert!(cache.get(Resolution::UNNAMED, &cpu(64)).is_some());
    }

    #[test]
    fn invalidate_heaps_solves_again_against_the_new_heaps() {
        let cache = PlanCache::new(16);
        solve(&cache, Resolution::UNNAMED, &cpu(64));

        cache.invalidate_heaps();
        let udmabuf = [HeapInfo::well_known("udmabuf").unwrap()];
        let outcome = cache
            .solve(
                lookup(&cpu(64), Resolution::UNNAMED),
                resolve_ok,
                &udmabuf,
                &SolveOptions::default(),
            )
            .unwrap();

        let plan = &outcome.as_ref().as_ref().unwrap().plans[0];
        assert_eq!(plan.heap, "udmabuf");
        assert_eq!(cache.counters(), (0, 2));
    }

    #[test]
    fn heaps_invalidated_during_a_solve_drop_its_result() {
        let cache = PlanCache::new(16);
        let heaps = [HeapInfo::memfd()];

        cache
            .solve(
                lookup(&cpu(64), Resolution::UNNAMED),
                |r| {
                    cache.invalidate_heaps();
                    resolve_ok(r)
                },
                &heaps,
                &SolveOptions::default(),
            )
            .unwrap();

        assert!(cache.is_empty());
    }

    #[test]
    fn failed_resolution_is_not_remembered() {
        let cache = PlanCache::new(16);
        let heaps = [HeapInfo::memfd()];
        let session = cache.resolution();

        let failed = cache.solve(
            lookup(&named(64), session),
            |_| Err("unknown participant"),
            &heaps,
            &SolveOptions::default(),
        );

        assert_eq!(failed.unwrap_err(), "unknown participant");
        assert!(cache.is_empty());
    }

    #[test]
    fn full_cache_is_emptied_before_storing() {
        let cache = PlanCache::new(2);
        solve(&cache, Resolution::UNNAMED, &cpu(64));
        solve(&cache, Resolution::UNNAMED, &cpu(128));

        solve(&cache, Resolution::UNNAMED, &cpu(192));

        assert_eq!(cache.len(), 1);
        assert!(cache.get(Resolution::UNNAMED, &cpu(192)).is_some());
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let cache = PlanCache::new(0);

        solve(&cache, Resolution::UNNAMED, &cpu(64));

        assert!(cache.is_empty());
    }

    #[test]
    fn request_without_names_is_unnamed_in_every_session() {
        let cache = PlanCache::new(1);
        let session = cache.resolution();

        assert_eq!(
            Resolution::for_request(&cpu(64), session),
            Resolution::UNNAMED
        );
        assert_eq!(Resolution::for_request(&named(64), session), session);
    }

    #[test]
    fn wire_request_of_solve_and_allocate_is_the_requests_encoding() {
        let request = named(64);
        let encoded = postcard::to_stdvec(&request).unwrap();
        let messages = [
            Message::Solve(Solve {
                request: request.clone(),
            }),
            Message::Allocate(Allocate {
                request: request.clone(),
                placement: wire::Placement::HostWindow,
            }),
            Message::Allocate(Allocate {
                request: request.clone(),
                placement: wire::Placement::GuestRam {
                    ranges: vec![wire::GuestRange {
                        addr: 1 << 32,
                        len: 1 << 20,
                    }],
                },
            }),
        ];

        for message in messages {
            let bytes = wire::encode(&message, 7).unwrap();
            assert_eq!(
                wire_request(&message, &bytes),
                Some(&encoded[..]),
                "{message:?}"
            );
        }
    }

    #[test]
    fn wire_request_of_other_messages_is_none() {
        let message = Message::Ping(wire::Ping { payload: vec![1] });
        let bytes = wire::encode(&message, 7).unwrap();

        assert_eq!(wire_request(&message, &bytes), None);
    }

    #[test]
    fn solve_from_wire_bytes_and_from_the_request_share_the_entry() {
        let cache = PlanCache::new(16);
        let request = cpu(64);
        let message = Message::Solve(Solve {
            request: request.clone(),
        });
        let bytes = wire::encode(&message, 1).unwrap();
        let heaps = [HeapInfo::memfd()];
        let from_wire = Lookup::new(&request, wire_request(&message, &bytes), Resolution(5));

        let first = cache
            .solve(from_wire, resolve_ok, &heaps, &SolveOptions::default())
            .unwrap();
        let again = solve(&cache, Resolution::UNNAMED, &request);

        assert!(Arc::ptr_eq(&first, &again));
    }

    #[test]
    fn hash_depends_on_every_byte_and_the_resolution() {
        let state = FastHashState::default();
        let bytes: Vec<u8> = (0..77).collect();
        let base = state.hash_bytes(1, &bytes);

        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 1;
            assert_ne!(state.hash_bytes(1, &changed), base, "byte {i}");
        }
        assert_ne!(state.hash_bytes(2, &bytes), base);
        assert_ne!(state.hash_bytes(1, &bytes[..76]), base);
    }
}
