//! Guest RAM: a sealed memfd mapped as `GuestMemoryMmap`, shareable with the backend through
//! SET_MEM_TABLE (like QEMU's `memory-backend-memfd,share=on`).

use std::fs::File;

use rustix::fs::{MemfdFlags, SealFlags, fcntl_add_seals, memfd_create};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::{Context, Result};

/// The guest memory type the harness uses.
pub type Mem = GuestMemoryMmap<()>;

/// `size` bytes of guest RAM at guest-physical address 0, backed by a memfd sealed against
/// shrinking and growing.
pub fn memfd_guest_memory(size: usize) -> Result<Mem> {
    let fd = memfd_create(
        "bufbroker-guest-ram",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .context("memfd_create")?;
    let file = File::from(fd);
    file.set_len(size as u64).context("sizing guest RAM")?;
    fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW).context("sealing guest RAM")?;
    Mem::from_ranges_with_files(&[(GuestAddress(0), size, Some(FileOffset::new(file, 0)))])
        .context("mapping guest RAM")
}
