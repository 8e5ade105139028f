//! Constraint derivation: a recorded [`DeviceInfo`] plus an optional [`DeviceProfile`] give
//! the device's [`Participant`]. Pure: no I/O, so it is tested on recorded information.

use bufbroker_proto::{AddressRange, ConstraintSet, Participant, ParticipantId, Usage};

use crate::info::DeviceInfo;
use crate::profile::{DeviceProfile, ProfileError};

/// The participant a VFIO device is, as far as buffers go.
///
/// Every alternative (the profile's, or one neutral alternative without a profile) gets:
/// - `memory.behind_iommu = true`: the device reaches memory through the container's IOMMU;
/// - `memory.iova_ranges`: the IOMMU's usable ranges (intersected with any the profile names);
/// - `memory.address_bits`: the smallest of the profile's DMA width, the alternative's own,
///   and the width the IOMMU ranges span;
/// - `layout.size_alignment`: a multiple of the IOMMU's smallest page, because a DMA mapping
///   covers whole IOMMU pages.
pub fn derive_participant(
    info: &DeviceInfo,
    profile: Option<&DeviceProfile>,
) -> Result<Participant, ProfileError> {
    let usage = match profile {
        Some(p) => p.usage_flags()?,
        None => Usage::DMA_READ | Usage::DMA_WRITE,
    };
    let label = profile
        .and_then(|p| p.label.clone())
        .unwrap_or_else(|| format!("vfio {} [{}]", info.name, info.ids.key()));
    let mut alternatives = match profile {
        Some(p) if !p.alternatives.is_empty() => p.alternatives.clone(),
        _ => vec![ConstraintSet {
            usage,
            ..ConstraintSet::default()
        }],
    };
    let iommu_bits = info.iommu.address_bits();
    let page = info.iommu.min_page_size();
    for alt in &mut alternatives {
        let m = &mut alt.memory;
        let mut bits = m.effective_address_bits().min(iommu_bits);
        if let Some(b) = profile.and_then(|p| p.address_bits) {
            if b > 0 {
                bits = bits.min(b);
            }
        }
        m.address_bits = if bits >= 64 { 0 } else { bits };
        m.behind_iommu = true;
        m.iova_ranges = intersect_ranges(&m.iova_ranges, &info.iommu.iova_ranges);
        if let Ok(page) = u32::try_from(page) {
            alt.layout.size_alignment = lcm(alt.layout.size_alignment, page);
        }
    }
    Ok(Participant {
        id: ParticipantId::Vfio(info.name.clone()),
        label,
        usage,
        alternatives,
    })
}

/// Intersection of two range lists, where an empty list means "anything".
fn intersect_ranges(a: &[AddressRange], b: &[AddressRange]) -> Vec<AddressRange> {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_vec(),
        (_, true) => a.to_vec(),
        _ => {
            let mut out: Vec<AddressRange> = a
                .iter()
                .flat_map(|x| {
                    b.iter().filter_map(move |y| {
                        let r = AddressRange {
                            start: x.start.max(y.start),
                            end: x.end.min(y.end),
                        };
                        (!r.is_empty()).then_some(r)
                    })
                })
                .collect();
            out.sort();
            out
        }
    }
}

fn lcm(a: u32, b: u32) -> u32 {
    let (a, b) = (a.max(1), b.max(1));
    let gcd = {
        let (mut x, mut y) = (a, b);
        while y != 0 {
            (x, y) = (y, x % y);
        }
        x
    };
    (a / gcd).saturating_mul(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::{IommuInfo, PciIds};
    use crate::profile::Profiles;
    use bufbroker_proto::{HeapInfo, ParticipantId, Request, SolveError, solve};

    /// edu behind QEMU's intel-iommu as the guest test recorded it
    /// (`vfio/tests/data/edu-intel-iommu.toml`).
    fn recorded_edu() -> DeviceInfo {
        let text = include_str!("../tests/data/edu-intel-iommu.toml");
        toml::from_str(text).unwrap()
    }

    #[test]
    fn edu_with_profile_is_28_bits_behind_iommu() {
        let profiles = Profiles::builtin().unwrap();
        let info = recorded_edu();
        let p = derive_participant(&info, profiles.get(info.ids.vendor, info.ids.device)).unwrap();
        assert_eq!(p.label, "qemu edu");
        assert_eq!(p.id, ParticipantId::Vfio(info.name.clone()));
        assert_eq!(p.usage, Usage::DMA_READ | Usage::DMA_WRITE);
        let [alt] = p.alternatives.as_slice() else {
            panic!("one alternative expected")
        };
        assert_eq!(alt.memory.address_bits, 28);
        assert!(alt.memory.behind_iommu);
        assert_eq!(alt.memory.iova_ranges, info.iommu.iova_ranges);
        assert_eq!(alt.layout.size_alignment, 4096);
    }

    #[test]
    fn unprofiled_device_gets_the_iommu_width() {
        let mut info = recorded_edu();
        info.ids.device = 0x0001;
        let p = derive_participant(&info, None).unwrap();
        assert_eq!(p.label, format!("vfio {} [1234:0001]", info.name));
        assert_eq!(
            p.alternatives[0].memory.address_bits,
            info.iommu.address_bits()
        );
        assert!(p.alternatives[0].memory.behind_iommu);
    }

    #[test]
    fn no_iommu_ranges_and_no_profile_means_64_bits() {
        let info = DeviceInfo {
            name: "0000:00:04.0".into(),
            ids: PciIds {
                vendor: 1,
                device: 2,
                class: 0,
                revision: 0,
                subsystem_vendor: 0,
                subsystem: 0,
            },
            iommu: IommuInfo::default(),
        };
        let p = derive_participant(&info, None).unwrap();
        assert_eq!(p.alternatives[0].memory.address_bits, 0);
        assert!(p.alternatives[0].memory.iova_ranges.is_empty());
    }

    #[test]
    fn profile_ranges_intersect_iommu_ranges() {
        let mut profiles = Profiles::default();
        profiles
            .add_toml(
                "t",
                "[devices.\"1234:11e8\"]\n[[devices.\"1234:11e8\".alternatives]]\n\
                 memory = { iova_ranges = [{ start = 0xfe000000, end = 0xffffffff }] }\n",
            )
            .unwrap();
        let info = recorded_edu();
        let p = derive_participant(&info, profiles.get(0x1234, 0x11e8)).unwrap();
        let ranges = &p.alternatives[0].memory.iova_ranges;
        assert!(
            ranges
                .iter()
                .all(|r| r.start >= 0xfe00_0000 && r.end <= 0xffff_ffff)
        );
        // The MSI window 0xfee00000..=0xfeefffff is excluded by the IOMMU's ranges.
        assert!(
            ranges
                .iter()
                .all(|r| r.end < 0xfee0_0000 || r.start > 0xfeef_ffff)
        );
    }

    #[test]
    fn intersect_ranges_cases() {
        let r = |start, end| AddressRange { start, end };
        assert_eq!(intersect_ranges(&[], &[r(1, 2)]), vec![r(1, 2)]);
        assert_eq!(
            intersect_ranges(&[r(0, 10), r(20, 30)], &[r(5, 25)]),
            vec![r(5, 10), r(20, 25)]
        );
        assert!(intersect_ranges(&[r(0, 1)], &[r(2, 3)]).is_empty());
    }

    /// edu and a host participant that maps buffers with 1 GiB huge pages (so every buffer
    /// is a multiple of 1 GiB, beyond edu's 256 MiB IOVA window).
    fn huge_page_request(edu: Participant) -> Request {
        let mut huge = ConstraintSet::default();
        huge.layout.size_alignment = 1 << 30;
        let mapper = Participant::new(
            ParticipantId::Named("1g-hugepage-mapper".into()),
            "1G huge-page mapper",
            Usage::CPU_READ | Usage::CPU_WRITE,
            huge,
        );
        Request {
            width: 1024,
            height: 1,
            formats: vec![],
            usage: Usage::empty(),
            participants: vec![edu, mapper],
            count: 1,
        }
    }

    /// A request whose other participant forces a buffer edu cannot address (a 1 GiB
    /// size alignment against edu's 256 MiB IOVA window) is refused, naming edu's width.
    #[test]
    fn solver_refuses_memory_edu_cannot_address() {
        let profiles = Profiles::builtin().unwrap();
        let info = recorded_edu();
        let edu = derive_participant(&info, profiles.get(0x1234, 0x11e8)).unwrap();
        let err = solve(&huge_page_request(edu), &[HeapInfo::memfd()]).unwrap_err();
        let SolveError::Unsatisfiable(diag) = err else {
            panic!("{err}")
        };
        let text = diag.to_string();
        println!("{text}");
        assert!(
            text.contains("qemu edu: memory.address_bits = 28 bits"),
            "{text}"
        );
    }

    #[test]
    fn edu_alone_solves() {
        let profiles = Profiles::builtin().unwrap();
        let info = recorded_edu();
        let edu = derive_participant(&info, profiles.get(0x1234, 0x11e8)).unwrap();
        let req = Request {
            width: 1024,
            height: 1,
            formats: vec![],
            usage: Usage::empty(),
            participants: vec![edu],
            count: 1,
        };
        let sol = solve(&req, &[HeapInfo::memfd()]).unwrap();
        assert_eq!(sol.plans[0].size % 4096, 0);
    }

    #[test]
    fn lcm_cases() {
        assert_eq!(lcm(0, 4096), 4096);
        assert_eq!(lcm(256, 4096), 4096);
        assert_eq!(lcm(6, 4), 12);
    }
}
