#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# bufbroker-vfio's real test: builds the crate's `edu_guest` integration tests as a static
# binary, boots the Debian 6.12 guest kernel under QEMU TCG with QEMU's edu device (1234:11e8)
# behind an emulated Intel IOMMU, binds edu to vfio-pci and runs every test there in its own
# process with BUFBROKER_REQUIRE_DEVICES=1: open, derive the 28-bit constraint set, DMA a
# pattern through edu and back via IOVAs below 2^28, the solver's refusal naming edu's
# address width, and the DMA mapping limit (dma_entry_limit=4). Then the broker's own tests
# (broker/tests/vfio_edu_guest.rs): a broker with `[vfio.edu]` serving a local socket, a
# client allocating a buffer edu reaches at an IOVA below 2^28, edu's DMA engine copying a
# pattern through it, the refusal naming edu's width, and the limit as an error reply.
#
# Usage: vfio-tests.sh [--verbose] [--timeout SECS] [--out DIR]
#   --out DIR   keep the initramfs and serial log there (default: a temporary folder, removed
#               on success)
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

e2e_parse_args 600 "$@"

"$E2E_DIR/prepare.sh" --quiet
e2e_load_prepared

t=$(e2e_now)
tests_bin=$(e2e_static_test_bin -p bufbroker-vfio --test edu_guest)
[ -f "$tests_bin" ] || e2e_die "cargo test --no-run gave no test executable (bufbroker-vfio)"
broker_bin=$(e2e_static_test_bin -p bufbroker --test vfio_edu_guest)
[ -f "$broker_bin" ] || e2e_die "cargo test --no-run gave no test executable (bufbroker)"
e2e_log "static vfio test build: $(e2e_elapsed "$t") s"

e2e_out_dir vfio

"$E2E_DIR/mkinitramfs.sh" "$out/vfio.cpio.gz" --bin "$tests_bin=vfio-tests" \
	--bin "$broker_bin=broker-vfio-tests" \
	--module vfio-pci vfio_iommu_type1 --no-autoload \
	--init-script "$E2E_DIR/guest/vfio-tests.sh"

status=0
"$E2E_DIR/run-guest.sh" --initrd "$out/vfio.cpio.gz" --log "$out/serial.log" \
	--timeout "$timeout_s" --iommu "${verbose_args[@]}" -- -device edu || status=$?

e2e_finish "$status"
