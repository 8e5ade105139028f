//! Finding the heaps of this machine, and explaining the ones it cannot offer.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bufbroker_proto::HeapInfo;
use rustix::io::Errno;

use super::memfd::{HugePageSize, MemfdHeap};
use super::udmabuf::{UdmabufDevice, UdmabufHeap, read_parameter};
use super::{DmaHeap, Heap, HeapError, error_chain};

/// Where to look for heaps, and which to offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// The dma-heap directory (`/dev/dma_heap`).
    pub dma_heap_dir: PathBuf,
    /// The udmabuf device (`/dev/udmabuf`).
    pub udmabuf_path: PathBuf,
    /// The udmabuf module's parameters (`/sys/module/udmabuf/parameters`).
    pub udmabuf_parameters: PathBuf,
    /// The huge-page pools (`/sys/kernel/mm/hugepages`).
    pub hugepages_dir: PathBuf,
    /// dma-heaps with explicitly configured properties, by [`HeapInfo::name`] (the device name
    /// under `dma_heap_dir`): makes heaps with unknown names usable and overrides the built-in
    /// description of known ones.
    pub dma_heaps: Vec<HeapInfo>,
    /// Largest single memfd buffer; `None` for [`MemfdHeap::default_max_size`] (half of physical
    /// memory), `Some(0)` for no limit.
    pub memfd_max_size: Option<u64>,
    /// Offer hugetlb memfd heaps for huge-page pools with free pages.
    pub hugetlb: bool,
    /// Allocate (and free) one page from each heap before offering it, so that a heap whose
    /// device opens but cannot allocate is reported instead of failing later.
    pub probe: bool,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            dma_heap_dir: DmaHeap::DIR.into(),
            udmabuf_path: UdmabufDevice::PATH.into(),
            udmabuf_parameters: UdmabufDevice::PARAMETERS.into(),
            hugepages_dir: "/sys/kernel/mm/hugepages".into(),
            dma_heaps: Vec::new(),
            memfd_max_size: None,
            hugetlb: true,
            probe: true,
        }
    }
}

/// Whether a heap considered during discovery can be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeapStatus {
    /// Usable; described in the solver's vocabulary.
    Available(HeapInfo),
    /// Not usable, and why.
    Absent(String),
}

/// One heap considered during discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeapReportEntry {
    /// Heap name (or the family, like `dma-heap`, when its directory is missing).
    pub name: String,
    /// Where it comes from: a device path, sysfs directory or `memfd_create(2)`.
    pub source: String,
    /// Available or why not.
    pub status: HeapStatus,
}

/// Every heap discovery considered, available or with the reason it is absent. `Display` prints
/// one line per heap (what `bufbroker heaps` shows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoveryReport {
    /// In discovery order: memfd, hugetlb, udmabuf, dma-heaps.
    pub entries: Vec<HeapReportEntry>,
}

impl DiscoveryReport {
    fn available(&mut self, source: impl Into<String>, info: &HeapInfo) {
        self.entries.push(HeapReportEntry {
            name: info.name.clone(),
            source: source.into(),
            status: HeapStatus::Available(info.clone()),
        });
    }

    fn absent(&mut self, name: impl Into<String>, source: impl Into<String>, reason: String) {
        self.entries.push(HeapReportEntry {
            name: name.into(),
            source: source.into(),
            status: HeapStatus::Absent(reason),
        });
    }

    /// The entry for `name`.
    pub fn entry(&self, name: &str) -> Option<&HeapReportEntry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

impl fmt::Display for DiscoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .entries
            .iter()
            .map(|e| e.name.len())
            .max()
            .unwrap_or(0)
            .max(4);
        writeln!(f, "{:width$}  {:9}  details", "heap", "status")?;
        for e in &self.entries {
            match &e.status {
                HeapStatus::Available(info) => writeln!(
                    f,
                    "{:width$}  available  {}: {}",
                    e.name,
                    e.source,
                    describe(info)
                )?,
                HeapStatus::Absent(reason) => {
                    writeln!(f, "{:width$}  absent     {}: {reason}", e.name, e.source)?;
                }
            }
        }
        Ok(())
    }
}

/// A heap's properties in a few words.
fn describe(info: &HeapInfo) -> String {
    let mut words = vec![
        if info.contiguous {
            "contiguous"
        } else {
            "scattered"
        }
        .to_owned(),
        info.cache_mode.to_string(),
        if info.coherent {
            "coherent"
        } else {
            "non-coherent"
        }
        .to_owned(),
        if info.dmabuf { "dmabuf" } else { "memfd only" }.to_owned(),
    ];
    if info.protected {
        words.push("protected".into());
    }
    if info.address_bits != 0 {
        words.push(format!("below 2^{}", info.address_bits));
    }
    words.push(match info.max_size {
        0 => "no size limit".into(),
        max => format!("at most {}", human_size(max)),
    });
    words.join(", ")
}

/// `64 MiB`, `1 GiB`, `11.8 GiB`, `12345 bytes`.
fn human_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 3] = [(30, "GiB"), (20, "MiB"), (10, "KiB")];
    for (shift, unit) in UNITS {
        if bytes >= 1 << shift {
            if bytes % (1 << shift) == 0 {
                return format!("{} {unit}", bytes >> shift);
            }
            // Display only: the precision lost converting to f64 does not matter.
            #[allow(clippy::cast_precision_loss)]
            let value = bytes as f64 / f64::from(1_u32 << shift);
            return format!("{value:.1} {unit}");
        }
    }
    format!("{bytes} bytes")
}

/// The heaps found by [`discover`], and its report.
#[derive(Debug, Default)]
pub struct Heaps {
    heaps: Vec<Arc<dyn Heap>>,
    udmabuf: Option<Arc<UdmabufDevice>>,
    report: DiscoveryReport,
}

impl Heaps {
    /// The heap called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Heap>> {
        self.heaps.iter().find(|h| h.info().name == name)
    }

    /// All available heaps, in discovery order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Heap>> {
        self.heaps.iter()
    }

    /// The solver's view of every available heap.
    pub fn infos(&self) -> Vec<HeapInfo> {
        self.heaps.iter().map(|h| h.info().clone()).collect()
    }

    /// The udmabuf device, when available (for guest-RAM placement and arenas).
    pub fn udmabuf_device(&self) -> Option<&Arc<UdmabufDevice>> {
        self.udmabuf.as_ref()
    }

    /// What discovery found and why heaps are missing.
    pub fn report(&self) -> &DiscoveryReport {
        &self.report
    }

    /// Number of available heaps.
    pub fn len(&self) -> usize {
        self.heaps.len()
    }

    /// Whether no heap is available (never after [`discover`]: memfd always works).
    pub fn is_empty(&self) -> bool {
        self.heaps.is_empty()
    }

    /// Adds `heap` if the probe allows, and reports it.
    fn offer(&mut self, heap: Arc<dyn Heap>, source: &str, probe: bool, granularity: u64) {
        let info = heap.info().clone();
        if probe {
            if let Err(e) = heap.allocate(granularity) {
                let reason = format!("allocation probe failed: {}", error_chain(&e));
                self.report.absent(info.name, source, reason);
                return;
            }
        }
        self.report.available(source, &info);
        self.heaps.push(heap);
    }
}

/// Finds the heaps of this machine: memfd always, hugetlb memfds for huge-page pools with free
/// pages, udmabuf when `/dev/udmabuf` opens, and every `/dev/dma_heap/*` whose properties are
/// known or configured. Everything considered ends up in [`Heaps::report`].
pub fn discover(config: &DiscoveryConfig) -> Heaps {
    let mut heaps = Heaps::default();
    let page = super::page_size();

    let memfd = match config.memfd_max_size {
        Some(max) => MemfdHeap::with_max_size(max),
        None => MemfdHeap::new(),
    };
    heaps.offer(Arc::new(memfd), "memfd_create(2)", config.probe, page);

    if config.hugetlb {
        discover_hugetlb(config, &mut heaps);
    }

    match UdmabufDevice::open_at(&config.udmabuf_path, &config.udmabuf_parameters) {
        Ok(device) => {
            let device = Arc::new(device);
            let source = config.udmabuf_path.display().to_string();
            heaps.offer(
                Arc::new(UdmabufHeap::new(device.clone())),
                &source,
                config.probe,
                page,
            );
            if heaps.get("udmabuf").is_some() {
                heaps.udmabuf = Some(device);
            }
        }
        Err(e) => {
            let hint = "kernel without CONFIG_UDMABUF or module not loaded";
            let reason = open_failure(&e, hint);
            heaps
                .report
                .absent("udmabuf", config.udmabuf_path.display().to_string(), reason);
        }
    }

    discover_dma_heaps(config, &mut heaps, page);
    heaps
}

/// Why opening a heap's device failed, phrased for an administrator (the path is the report
/// entry's source, so it is not repeated).
fn open_failure(error: &HeapError, not_present_hint: &str) -> String {
    match error {
        HeapError::Open {
            source: Errno::NOENT,
            ..
        } => format!("not present ({not_present_hint})"),
        HeapError::Open {
            source: Errno::ACCESS | Errno::PERM,
            ..
        } => "permission denied (the broker needs read/write access: run it in the device's group \
              or add a udev rule)"
            .into(),
        HeapError::Open { source, .. } => format!("cannot open: {source}"),
        other => error_chain(other),
    }
}

/// One huge-page pool (`/sys/kernel/mm/hugepages/hugepages-<N>kB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HugePool {
    /// Its page size.
    pub page: HugePageSize,
    /// `nr_hugepages`.
    pub total: u64,
    /// `free_hugepages`.
    pub free: u64,
}

/// The huge-page pools under `dir`, by page size; `Err` when the directory cannot be read.
pub(crate) fn hugetlb_pools(
    dir: &Path,
) -> std::io::Result<Vec<(PathBuf, Result<HugePool, HeapError>)>> {
    let mut pools = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(kb) = name
            .to_str()
            .and_then(|n| n.strip_prefix("hugepages-"))
            .and_then(|n| n.strip_suffix("kB"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let Some(page) = kb.checked_mul(1024).and_then(HugePageSize::from_bytes) else {
            continue;
        };
        let path = entry.path();
        let pool = read_parameter(&path.join("nr_hugepages")).and_then(|total| {
            let free = read_parameter(&path.join("free_hugepages"))?;
            Ok(HugePool { page, total, free })
        });
        pools.push((path, pool));
    }
    pools.sort_by_key(|(_, pool)| pool.as_ref().map(|p| p.page).ok());
    Ok(pools)
}

fn discover_hugetlb(config: &DiscoveryConfig, heaps: &mut Heaps) {
    let dir = &config.hugepages_dir;
    let pools = match hugetlb_pools(dir) {
        Ok(pools) => pools,
        Err(e) => {
            let reason = if e.kind() == std::io::ErrorKind::NotFound {
                "not present (kernel without CONFIG_HUGETLBFS)".to_owned()
            } else {
                format!("cannot read: {e}")
            };
            heaps
                .report
                .absent("memfd-hugetlb", dir.display().to_string(), reason);
            return;
        }
    };
    for (path, pool) in pools {
        let source = path.display().to_string();
        match pool {
            Ok(pool) if pool.free > 0 => {
                let max = pool.total.saturating_mul(pool.page.bytes());
                let heap = MemfdHeap::hugetlb(pool.page, max);
                heaps.offer(Arc::new(heap), &source, config.probe, pool.page.bytes());
            }
            Ok(pool) => {
                let name = MemfdHeap::hugetlb(pool.page, 0).info().name.clone();
                let reason = format!(
                    "no free huge pages (nr_hugepages is {}; raise {}/nr_hugepages or \
                     /proc/sys/vm/nr_hugepages)",
                    pool.total, source
                );
                heaps.report.absent(name, source, reason);
            }
            Err(e) => heaps
                .report
                .absent("memfd-hugetlb", source, error_chain(&e)),
        }
    }
}

fn discover_dma_heaps(config: &DiscoveryConfig, heaps: &mut Heaps, page: u64) {
    let dir = &config.dma_heap_dir;
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect(),
        Err(e) => {
            let reason = if e.kind() == std::io::ErrorKind::NotFound {
                "not present (kernel without CONFIG_DMABUF_HEAPS)".to_owned()
            } else {
                format!("cannot read: {e}")
            };
            heaps
                .report
                .absent("dma-heap", dir.display().to_string(), reason);
            Vec::new()
        }
    };
    names.sort();
    for name in &names {
        let path = dir.join(name);
        let source = path.display().to_string();
        let configured = config.dma_heaps.iter().find(|i| &i.name == name).cloned();
        let Some(info) = configured.or_else(|| DmaHeap::known_info(name)) else {
            let reason = "present, but its properties are unknown; configure it explicitly to \
                          use it"
                .to_owned();
            heaps.report.absent(name.clone(), source, reason);
            continue;
        };
        match DmaHeap::open_at(&path, info) {
            Ok(heap) => heaps.offer(Arc::new(heap), &source, config.probe, page),
            Err(e) => heaps.report.absent(
                name.clone(),
                source,
                open_failure(&e, "removed during discovery, or a dangling link"),
            ),
        }
    }
    for info in &config.dma_heaps {
        if !names.contains(&info.name) {
            let source = dir.join(&info.name).display().to_string();
            heaps.report.absent(
                info.name.clone(),
                source,
                "configured, but not present".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use bufbroker_proto::{CacheMode, HeapKind};

    use super::*;

    /// A configuration pointing at a fake tree under `root`.
    fn fake_config(root: &Path) -> DiscoveryConfig {
        DiscoveryConfig {
            dma_heap_dir: root.join("dma_heap"),
            udmabuf_path: root.join("udmabuf"),
            udmabuf_parameters: root.join("parameters"),
            hugepages_dir: root.join("hugepages"),
            ..DiscoveryConfig::default()
        }
    }

    fn status<'a>(heaps: &'a Heaps, name: &str) -> &'a HeapStatus {
        &heaps
            .report()
            .entry(name)
            .unwrap_or_else(|| panic!("no entry {name}"))
            .status
    }

    #[test]
    fn human_size_uses_binary_units() {
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(3 << 30), "3 GiB");
        assert_eq!(human_size((1 << 30) + (1 << 29)), "1.5 GiB");
        assert_eq!(human_size(1000), "1000 bytes");
    }

    #[test]
    fn empty_machine_offers_memfd_and_explains_the_rest() {
        let root = tempfile::tempdir().unwrap();
        let heaps = discover(&fake_config(root.path()));
        assert_eq!(heaps.len(), 1);
        let memfd = HeapInfo {
            max_size: MemfdHeap::default_max_size(),
            ..HeapInfo::memfd()
        };
        assert_eq!(heaps.infos(), vec![memfd]);
        assert!(matches!(status(&heaps, "memfd"), HeapStatus::Available(_)));
        assert_eq!(
            status(&heaps, "udmabuf"),
            &HeapStatus::Absent(
                "not present (kernel without CONFIG_UDMABUF or module not loaded)".into()
            )
        );
        assert_eq!(
            status(&heaps, "dma-heap"),
            &HeapStatus::Absent("not present (kernel without CONFIG_DMABUF_HEAPS)".into())
        );
        assert_eq!(
            status(&heaps, "memfd-hugetlb"),
            &HeapStatus::Absent("not present (kernel without CONFIG_HUGETLBFS)".into())
        );
        assert!(heaps.udmabuf_device().is_none());
    }

    #[test]
    fn report_display_lists_every_heap_with_its_reason() {
        let root = tempfile::tempdir().unwrap();
        let heaps = discover(&fake_config(root.path()));
        let text = heaps.report().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].starts_with("heap "));
        assert!(lines[1].starts_with("memfd "));
        assert!(lines[1].contains(
            "available  memfd_create(2): scattered, cached, coherent, memfd only, at most "
        ));
        let udmabuf = format!("{}/udmabuf: not present", root.path().display());
        assert!(text.contains(&udmabuf), "{text}");
    }

    #[test]
    fn dma_heap_dir_with_unknown_fake_and_configured_heaps() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("dma_heap");
        std::fs::create_dir(&dir).unwrap();
        // Regular files open fine but refuse the allocation ioctl (ENOTTY): the probe catches it.
        std::fs::write(dir.join("system"), "").unwrap();
        std::fs::write(dir.join("vendor-secure"), "").unwrap();
        std::os::unix::fs::symlink(root.path().join("gone"), dir.join("vendor-link")).unwrap();
        let mut config = fake_config(root.path());
        config.dma_heaps = vec![
            HeapInfo {
                name: "vendor-link".into(),
                protected: true,
                ..HeapInfo::memfd()
            },
            HeapInfo {
                name: "not-there".into(),
                ..HeapInfo::memfd()
            },
        ];
        let heaps = discover(&config);
        let HeapStatus::Absent(system) = status(&heaps, "system") else {
            panic!()
        };
        assert!(
            system.starts_with(
                "allocation probe failed: allocating 4096 bytes from dma-heap system failed: "
            ),
            "{system}"
        );
        assert_eq!(
            status(&heaps, "vendor-secure"),
            &HeapStatus::Absent(
                "present, but its properties are unknown; configure it explicitly to use it".into()
            )
        );
        assert_eq!(
            status(&heaps, "vendor-link"),
            &HeapStatus::Absent(
                "not present (removed during discovery, or a dangling link)".into()
            )
        );
        assert_eq!(
            status(&heaps, "not-there"),
            &HeapStatus::Absent("configured, but not present".into())
        );
    }

    #[test]
    fn without_probe_configured_dma_heaps_are_offered_with_their_properties() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("dma_heap");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("system-uncached"), "").unwrap();
        std::fs::write(dir.join("vendor-secure"), "").unwrap();
        let mut config = fake_config(root.path());
        config.probe = false;
        config.dma_heaps = vec![HeapInfo {
            name: "vendor-secure".into(),
            protected: true,
            ..HeapInfo::memfd()
        }];
        let heaps = discover(&config);
        let names: Vec<_> = heaps.iter().map(|h| h.info().name.clone()).collect();
        assert_eq!(names, ["memfd", "system-uncached", "vendor-secure"]);
        let secure = heaps.get("vendor-secure").unwrap().info();
        assert!(secure.protected && secure.dmabuf);
        assert_eq!(secure.kind, HeapKind::DmaHeap);
        let wc = heaps.get("system-uncached").unwrap().info();
        assert_eq!(wc.cache_mode, CacheMode::WriteCombined);
    }

    #[test]
    fn hugetlb_pools_are_offered_only_with_free_pages() {
        let root = tempfile::tempdir().unwrap();
        for (kb, total, free) in [(2048, 4, 0), (1_048_576, 2, 1)] {
            let pool = root.path().join(format!("hugepages/hugepages-{kb}kB"));
            std::fs::create_dir_all(&pool).unwrap();
            std::fs::write(pool.join("nr_hugepages"), format!("{total}\n")).unwrap();
            std::fs::write(pool.join("free_hugepages"), format!("{free}\n")).unwrap();
        }
        let mut config = fake_config(root.path());
        config.probe = false;
        let heaps = discover(&config);
        let HeapStatus::Absent(two_m) = status(&heaps, "memfd-hugetlb-2M") else {
            panic!()
        };
        assert!(
            two_m.starts_with("no free huge pages (nr_hugepages is 4;"),
            "{two_m}"
        );
        let one_g = heaps.get("memfd-hugetlb-1G").unwrap().info();
        assert_eq!(one_g.max_size, 2 << 30);
        assert_eq!(one_g.kind, HeapKind::Memfd);
    }

    #[test]
    fn udmabuf_device_that_cannot_allocate_is_reported() {
        let root = tempfile::tempdir().unwrap();
        let config = fake_config(root.path());
        std::fs::write(&config.udmabuf_path, "").unwrap();
        let heaps = discover(&config);
        let HeapStatus::Absent(reason) = status(&heaps, "udmabuf") else {
            panic!()
        };
        assert!(
            reason.starts_with("allocation probe failed: creating a udmabuf"),
            "{reason}"
        );
        assert!(heaps.udmabuf_device().is_none());
    }

    #[test]
    fn this_machine_discovery_report() {
        // Not an assertion about this host's devices: prints what `bufbroker heaps` would.
        let heaps = discover(&DiscoveryConfig::default());
        println!("{}", heaps.report());
        assert!(heaps.get("memfd").is_some());
    }
}
