//! Exposure to host VFIO devices: a new buffer is mapped into the IOMMU domain of every VFIO
//! device its request names; `QueryIovas` tells the owner where.

use bufbroker_proto::wire::{IovaMapping, IovasReply, QueryIovas};
use bufbroker_proto::{ParticipantId, Plan, Request};

use super::{Features, Reply, Session, SessionError};
use crate::registry::{Allocated, ViewKind};

/// A VFIO device a request names: its configured name and its index among the request's
/// participants (where the plan records the alternative chosen for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct VfioTarget {
    name: String,
    index: usize,
}

impl Session {
    /// The host VFIO devices `request` names, in request order. A name this session
    /// registered shadows the broker's device, as in resolution.
    pub(super) fn vfio_targets(&self, request: &Request) -> Vec<VfioTarget> {
        let broker = &self.broker;
        request
            .participants
            .iter()
            .enumerate()
            .filter_map(|(index, p)| match &p.id {
                ParticipantId::Named(name)
                    if broker.vfio_device(name).is_some()
                        && !self.registered.iter().any(|r| &r.name == name) =>
                {
                    Some(VfioTarget {
                        name: name.clone(),
                        index,
                    })
                }
                _ => None,
            })
            .collect()
    }

    /// Maps `buffer` for every target at an IOVA the alternative `plan` chose for it can
    /// address, recording each as a view (torn down before the memory is freed).
    pub(super) fn map_iovas(
        &self,
        buffer: &Allocated,
        plan: &Plan,
        targets: &[VfioTarget],
    ) -> Result<(), SessionError> {
        let registry = self.broker.registry();
        let memory = &buffer.memory;
        let fd = memory.memfd().unwrap_or_else(|| memory.fd());
        for target in targets {
            let Some(device) = self.broker.vfio_device(&target.name) else {
                continue;
            };
            let alternative = plan
                .alternatives
                .get(target.index)
                .map_or(0, |a| usize::try_from(*a).unwrap_or(usize::MAX));
            let mapping = device.map(buffer.id, fd, memory.size(), alternative)?;
            let kind = ViewKind::Iova {
                device: target.name.clone(),
                iova: mapping.iova(),
                len: mapping.len(),
            };
            log::debug!("{}: {} mapped as {kind:?}", self.name, buffer.id);
            registry.add_view(self.owner, buffer.id, kind, Box::new(move || drop(mapping)))?;
        }
        Ok(())
    }

    /// `QueryIovas`: the owner's buffer's IOVA mappings.
    pub(super) fn query_iovas(&self, m: &QueryIovas) -> Result<Reply, SessionError> {
        self.require(Features::IOVA, "IOVA")?;
        let registry = self.broker.registry();
        let view = registry.get(self.owner, m.buffer)?;
        if !view.owned {
            return Err(crate::registry::RegistryError::NotFound(m.buffer).into());
        }
        let iovas = registry
            .views(self.owner, m.buffer)
            .into_iter()
            .filter_map(|v| match v {
                ViewKind::Iova { device, iova, len } => Some(IovaMapping {
                    participant: device,
                    iova,
                    len,
                }),
                _ => None,
            })
            .collect();
        Ok(Reply::new(IovasReply {
            buffer: m.buffer,
            iovas,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::fd::{AsRawFd, BorrowedFd};
    use std::sync::{Arc, Mutex};

    use bufbroker_proto::wire::{
        Access, Allocate, AllocateReply, ErrorCode, Features, Free, Grant, Hello, Import,
        ImportView, IovasReply, Message, Placement, QueryIovas,
    };
    use bufbroker_proto::{ConstraintSet, Participant, ParticipantId, Request, Usage};
    use bufbroker_vfio::{DeviceInfo, DmaError, Profiles, derive_participant};

    use crate::config::{Config, OwnerPolicy};
    use crate::heap::{Heap, MemfdHeap};
    use crate::session::{Broker, Reply, Session};
    use crate::vfio::{DmaTarget, DmaView, HostDevice};

    /// What the fake IOMMU saw, in order.
    type Log = Arc<Mutex<Vec<String>>>;

    /// A DMA space handing out IOVAs from `next` upwards, at most `limit` at once; each
    /// unmap records whether the buffer's fd was still open (same inode) at that moment.
    struct FakeDma {
        log: Log,
        next: Mutex<u64>,
        limit: usize,
        mapped: Arc<Mutex<usize>>,
    }

    struct FakeView {
        log: Log,
        iova: u64,
        len: u64,
        raw_fd: i32,
        inode: u64,
        mapped: Arc<Mutex<usize>>,
    }

    fn inode(fd: BorrowedFd<'_>) -> Option<u64> {
        rustix::fs::fstat(fd).ok().map(|s| s.st_ino)
    }

    impl DmaView for FakeView {
        fn iova(&self) -> u64 {
            self.iova
        }
        fn len(&self) -> u64 {
            self.len
        }
    }

    impl Drop for FakeView {
        fn drop(&mut self) {
            // SAFETY: only fstat through the borrow; if the number were closed (the bug this
            // test looks for) fstat fails with EBADF or sees another file.
            let fd = unsafe { BorrowedFd::borrow_raw(self.raw_fd) };
            let alive = inode(fd) == Some(self.inode);
            let line = format!("unmap {:#x} memory-alive={alive}", self.iova);
            self.log.lock().unwrap().push(line);
            *self.mapped.lock().unwrap() -= 1;
        }
    }

    impl DmaTarget for FakeDma {
        fn map(&self, fd: BorrowedFd<'_>, len: u64) -> Result<Box<dyn DmaView>, DmaError> {
            let mut mapped = self.mapped.lock().unwrap();
            if *mapped >= self.limit {
                return Err(DmaError::LimitReached {
                    limit: self.limit as u32,
                });
            }
            *mapped += 1;
            let mut next = self.next.lock().unwrap();
            let iova = *next;
            *next += len;
            self.log
                .lock()
                .unwrap()
                .push(format!("map {iova:#x}+{len:#x}"));
            Ok(Box::new(FakeView {
                log: self.log.clone(),
                iova,
                len,
                raw_fd: fd.as_raw_fd(),
                inode: inode(fd).unwrap(),
                mapped: self.mapped.clone(),
            }))
        }
    }

    /// edu as the guest recorded it, with the built-in profile: 28 bits behind the IOMMU.
    fn edu_participant() -> Participant {
        let text = include_str!("../../../vfio/tests/data/edu-intel-iommu.toml");
        let info: DeviceInfo = toml::from_str(text).unwrap();
        let profiles = Profiles::builtin().unwrap();
        derive_participant(&info, profiles.get(0x1234, 0x11e8)).unwrap()
    }

    struct Setup {
        broker: Arc<Broker>,
        log: Log,
        mapped: Arc<Mutex<usize>>,
    }

    /// A broker with device `edu` (a fake IOMMU starting at `first_iova`, `limit` mappings)
    /// that only `vm` may use; freed buffers are not recycled.
    fn setup(first_iova: u64, limit: usize) -> Setup {
        let log = Log::default();
        let mapped = Arc::new(Mutex::new(0));
        let dma = FakeDma {
            log: log.clone(),
            next: Mutex::new(first_iova),
            limit,
            mapped: mapped.clone(),
        };
        let mut config = Config::default();
        config.pool.max_buffers_per_owner = 0;
        config.owners.insert(
            "vm".into(),
            OwnerPolicy {
                participants: Some(vec!["edu".into()]),
                ..OwnerPolicy::default()
            },
        );
        let device = HostDevice::with_target("edu", edu_participant(), Box::new(dma));
        let vfio = BTreeMap::from([("edu".to_owned(), device)]);
        let heaps: Vec<Arc<dyn Heap>> = vec![Arc::new(MemfdHeap::new())];
        let broker = Arc::new(Broker::with_vfio(config, heaps, vfio).unwrap());
        Setup {
            broker,
            log,
            mapped,
        }
    }

    fn session(broker: &Arc<Broker>, name: &str) -> Session {
        let mut s = Session::new(broker.clone(), name, None);
        let reply = s.handle(Message::Hello(Hello {
            min_version: 1,
            max_version: 1,
            features: Features::all(),
            client: "test".into(),
        }));
        let Message::HelloReply(r) = reply.message else {
            panic!("{reply:?}")
        };
        assert!(r.features.contains(Features::IOVA));
        s
    }

    fn named(name: &str, constraints: ConstraintSet) -> Participant {
        Participant::new(
            ParticipantId::Named(name.into()),
            name,
            Usage::empty(),
            constraints,
        )
    }

    /// `count` buffers of 4096x16 pixels for edu and the CPU.
    fn edu_request(count: u32) -> Message {
        let cpu = Participant::new(
            ParticipantId::Cpu,
            "cpu",
            Usage::CPU_READ | Usage::CPU_WRITE,
            ConstraintSet::default(),
        );
        Message::Allocate(Allocate {
            request: Request {
                width: 4096,
                height: 16,
                formats: vec![],
                usage: Usage::empty(),
                participants: vec![cpu, named("edu", ConstraintSet::default())],
                count,
            },
            placement: Placement::HostClient,
        })
    }

    fn allocated(reply: Reply) -> AllocateReply {
        match reply.message {
            Message::AllocateReply(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn error(reply: &Reply) -> (ErrorCode, String) {
        match &reply.message {
            Message::ErrorReply(e) => (e.code, e.message.clone()),
            other => panic!("not an error: {other:?}"),
        }
    }

    fn iovas(s: &mut Session, buffer: bufbroker_proto::wire::BufferId) -> IovasReply {
        match s.handle(Message::QueryIovas(QueryIovas { buffer })).message {
            Message::IovasReply(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn allocate_maps_every_buffer_below_edu_width_and_query_iovas_returns_them() {
        let t = setup(0x1000, 8);
        let mut s = session(&t.broker, "vm");

        let reply = allocated(s.handle(edu_request(2)));

        assert_eq!(*t.mapped.lock().unwrap(), 2);
        for b in &reply.buffers {
            let r = iovas(&mut s, b.id);
            let [m] = r.iovas.as_slice() else {
                panic!("{r:?}")
            };
            assert_eq!(m.participant, "edu");
            assert!(m.iova + m.len <= 1 << 28, "{m:?}");
            assert_eq!(m.len, reply.plan.size.next_multiple_of(4096));
        }
    }

    #[test]
    fn free_unmaps_the_iova_while_the_memory_is_still_there() {
        let t = setup(0x1000, 8);
        let mut s = session(&t.broker, "vm");
        let reply = allocated(s.handle(edu_request(1)));
        let id = reply.buffers[0].id;

        let freed = s.handle(Message::Free(Free { buffer: id }));

        assert!(matches!(freed.message, Message::FreeReply(_)), "{freed:?}");
        assert_eq!(*t.mapped.lock().unwrap(), 0);
        let log = t.log.lock().unwrap().clone();
        assert_eq!(log.len(), 2, "{log:?}");
        assert!(log[0].starts_with("map 0x1000+"), "{log:?}");
        assert_eq!(log[1], "unmap 0x1000 memory-alive=true");
    }

    #[test]
    fn session_end_unmaps_every_iova() {
        let t = setup(0x1000, 8);
        let mut s = session(&t.broker, "vm");
        allocated(s.handle(edu_request(3)));

        drop(s);

        assert_eq!(*t.mapped.lock().unwrap(), 0);
        let log = t.log.lock().unwrap().clone();
        let unmaps: Vec<_> = log.iter().filter(|l| l.starts_with("unmap")).collect();
        assert_eq!(unmaps.len(), 3, "{log:?}");
        assert!(
            unmaps.iter().all(|l| l.ends_with("memory-alive=true")),
            "{log:?}"
        );
    }

    #[test]
    fn dma_limit_fails_the_whole_allocate_with_quota_exceeded_naming_device_and_limit() {
        let t = setup(0x1000, 2);
        let mut s = session(&t.broker, "vm");

        let refused = s.handle(edu_request(3));

        let (code, message) = error(&refused);
        assert_eq!(code, ErrorCode::QUOTA_EXCEEDED);
        assert!(message.contains("VFIO device \"edu\""), "{message}");
        assert!(message.contains("DMA mapping limit reached"), "{message}");
        assert!(message.contains("allows 2 mappings"), "{message}");
        assert_eq!(*t.mapped.lock().unwrap(), 0, "the two made were undone");
        let stats = t.broker.registry().owner_stats(s.owner()).unwrap();
        assert_eq!(stats.buffers, 0);
        let fits = allocated(s.handle(edu_request(2)));
        assert_eq!(fits.buffers.len(), 2);
    }

    #[test]
    fn iova_beyond_edu_width_is_refused_and_unmapped() {
        let t = setup(1 << 28, 8);
        let mut s = session(&t.broker, "vm");

        let refused = s.handle(edu_request(1));

        let (code, message) = error(&refused);
        assert_eq!(code, ErrorCode::INTERNAL);
        assert!(message.contains("memory.address_bits = 28"), "{message}");
        assert_eq!(*t.mapped.lock().unwrap(), 0);
    }

    #[test]
    fn owner_not_allowed_edu_is_denied_and_nothing_is_mapped() {
        let t = setup(0x1000, 8);
        let mut s = session(&t.broker, "uid:1000");

        let refused = s.handle(edu_request(1));

        assert_eq!(error(&refused).0, ErrorCode::PERMISSION_DENIED);
        assert!(t.log.lock().unwrap().is_empty());
    }

    #[test]
    fn memory_edu_cannot_address_is_unsatisfiable_naming_its_width() {
        let t = setup(0x1000, 8);
        let mut s = session(&t.broker, "vm");
        let mut huge = ConstraintSet::default();
        huge.layout.size_alignment = 1 << 30;
        let Message::Allocate(mut m) = edu_request(1) else {
            unreachable!()
        };
        m.request.participants.push(Participant::new(
            ParticipantId::Cpu,
            "1G huge-page mapper",
            Usage::CPU_READ,
            huge,
        ));

        let refused = s.handle(Message::Allocate(m));

        let (code, message) = error(&refused);
        assert_eq!(code, ErrorCode::UNSATISFIABLE);
        assert!(
            message.contains("qemu edu: memory.address_bits = 28 bits"),
            "{message}"
        );
        assert!(t.log.lock().unwrap().is_empty());
    }

    #[test]
    fn only_the_owner_gets_iovas() {
        let t = setup(0x1000, 8);
        let mut owner = session(&t.broker, "vm");
        let mut other = session(&t.broker, "vm2");
        let id = allocated(owner.handle(edu_request(1))).buffers[0].id;
        let grant = owner.handle(Message::Grant(Grant {
            buffer: id,
            grantee: "vm2".into(),
            access: Access::ReadOnly,
        }));
        let Message::GrantReply(g) = grant.message else {
            panic!("{grant:?}")
        };
        let imported = other.handle(Message::Import(Import {
            uuid: g.uuid,
            view: ImportView::None,
        }));
        assert!(matches!(imported.message, Message::ImportReply(_)));

        let refused = other.handle(Message::QueryIovas(QueryIovas { buffer: id }));

        assert_eq!(error(&refused).0, ErrorCode::NOT_FOUND);
        assert_eq!(iovas(&mut owner, id).iovas.len(), 1);
    }

    #[test]
    fn a_registered_name_shadows_the_device_and_maps_nothing() {
        let t = setup(0x1000, 8);
        let mut s = session(&t.broker, "vm");
        let reg = s.handle(Message::RegisterParticipant(
            bufbroker_proto::wire::RegisterParticipant {
                name: "edu".into(),
                participant: named("edu", ConstraintSet::default()),
            },
        ));
        assert!(matches!(reg.message, Message::RegisterParticipantReply(_)));

        let reply = allocated(s.handle(edu_request(1)));

        assert!(iovas(&mut s, reply.buffers[0].id).iovas.is_empty());
        assert!(t.log.lock().unwrap().is_empty());
    }
}
