//! What every session shares: the configuration, the heaps, the named host participants, the
//! registry and the plan cache.

use std::collections::BTreeMap;
use std::sync::Arc;

use bufbroker_proto::solver::SolveOptions;
use bufbroker_proto::{HeapInfo, Participant};
use thiserror::Error;

use crate::config::{Config, ConfigError, ResolvedPolicy};
use crate::heap::{DiscoveryConfig, Heap, UdmabufDevice, discover};
use crate::registry::Registry;
use crate::vfio::{HostDevice, VfioSetupError, open_all};

use super::plan_cache::PlanCache;

/// Entries in the plan cache.
const PLAN_CACHE_CAPACITY: usize = 1024;

/// Errors setting up a broker.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The configuration is wrong.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// A configured VFIO device cannot be used.
    #[error("cannot set up a VFIO device")]
    Vfio(#[from] VfioSetupError),
    /// None of the heaps the configuration allows is available.
    #[error("none of the allowed heaps {allowed:?} is available (available: {available:?})")]
    NoHeap {
        /// The allow-list.
        allowed: Vec<String>,
        /// What this machine offers.
        available: Vec<String>,
    },
}

/// The state shared by every session of one broker.
#[derive(Debug)]
pub struct Broker {
    config: Config,
    heaps: Vec<Arc<dyn Heap>>,
    heap_infos: Vec<HeapInfo>,
    participants: BTreeMap<String, Participant>,
    vfio: BTreeMap<String, HostDevice>,
    registry: Registry,
    plans: PlanCache,
    solve_options: SolveOptions,
    udmabuf: Option<Arc<UdmabufDevice>>,
}

impl Broker {
    /// A broker over this machine's heaps (discovered, then filtered by `[heaps] allow`).
    pub fn from_config(config: Config) -> Result<Broker, BrokerError> {
        let discovery = DiscoveryConfig {
            memfd_max_size: config.heaps.memfd_max_size,
            ..DiscoveryConfig::default()
        };
        let found = discover(&discovery);
        for entry in &config.heaps.allow.clone().unwrap_or_default() {
            if found.get(entry).is_none() {
                let why = match found.report().entry(entry).map(|e| &e.status) {
                    Some(crate::heap::HeapStatus::Absent(reason)) => reason.clone(),
                    _ => "not present on this machine".to_owned(),
                };
                log::warn!("allowed heap {entry} is not available: {why}");
            }
        }
        let udmabuf = found.udmabuf_device().cloned();
        Ok(Self::new(config, found.iter().cloned().collect())?.with_udmabuf(udmabuf))
    }

    /// Uses `device` to build dmabufs over arena slices and guest RAM.
    pub fn with_udmabuf(mut self, device: Option<Arc<UdmabufDevice>>) -> Self {
        self.udmabuf = device;
        self
    }

    /// The udmabuf device, where `/dev/udmabuf` exists.
    pub fn udmabuf(&self) -> Option<&Arc<UdmabufDevice>> {
        self.udmabuf.as_ref()
    }

    /// A broker over the given heaps (filtered by `[heaps] allow`); loads the named
    /// participants' constraint files and opens the configured VFIO devices.
    pub fn new(config: Config, heaps: Vec<Arc<dyn Heap>>) -> Result<Broker, BrokerError> {
        let vfio = open_all(&config.vfio)?;
        Self::with_vfio(config, heaps, vfio)
    }

    /// [`Broker::new`] with VFIO devices opened already (or fakes); `config.vfio` is not
    /// opened again.
    pub fn with_vfio(
        config: Config,
        heaps: Vec<Arc<dyn Heap>>,
        vfio: BTreeMap<String, HostDevice>,
    ) -> Result<Broker, BrokerError> {
        let available: Vec<String> = heaps.iter().map(|h| h.info().name.clone()).collect();
        let heaps: Vec<Arc<dyn Heap>> = match &config.heaps.allow {
            Some(allow) => heaps
                .into_iter()
                .filter(|h| allow.contains(&h.info().name))
                .collect(),
            None => heaps,
        };
        if heaps.is_empty() {
            return Err(BrokerError::NoHeap {
                allowed: config.heaps.allow.clone().unwrap_or_default(),
                available,
            });
        }
        let participants = config.load_participants()?;
        let registry = Registry::new(config.global, config.pool.into());
        Ok(Broker {
            heap_infos: heaps.iter().map(|h| h.info().clone()).collect(),
            heaps,
            participants,
            vfio,
            registry,
            plans: PlanCache::new(PLAN_CACHE_CAPACITY),
            solve_options: SolveOptions::default(),
            udmabuf: None,
            config,
        })
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The plan cache.
    pub fn plans(&self) -> &PlanCache {
        &self.plans
    }

    /// The heap called `name`, if allowed and available.
    pub fn heap(&self, name: &str) -> Option<&Arc<dyn Heap>> {
        self.heaps.iter().find(|h| h.info().name == name)
    }

    /// The solver's view of the heaps.
    pub fn heap_infos(&self) -> &[HeapInfo] {
        &self.heap_infos
    }

    /// Solver tuning.
    pub fn solve_options(&self) -> &SolveOptions {
        &self.solve_options
    }

    /// The configured host participant called `name`: a `[participants]` entry or a VFIO
    /// device.
    pub fn participant(&self, name: &str) -> Option<&Participant> {
        self.participants
            .get(name)
            .or_else(|| self.vfio.get(name).map(HostDevice::participant))
    }

    /// The host VFIO device called `name`.
    pub fn vfio_device(&self, name: &str) -> Option<&HostDevice> {
        self.vfio.get(name)
    }

    /// Whether any host VFIO device is configured.
    pub fn has_vfio(&self) -> bool {
        !self.vfio.is_empty()
    }

    /// The policy of the owner called `name`.
    pub fn policy(&self, name: &str) -> ResolvedPolicy {
        self.config.policy(name)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
}
