#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# End-to-end proof of the real-kernel runner: prepare the cache, build the static probe crate,
# build an initramfs with it and the vfio modules, boot it with an emulated Intel IOMMU and
# QEMU's edu device, and check in the guest that /dev/udmabuf and /dev/dma_heap/system exist,
# that modprobe vfio-pci / vfio_iommu_type1 work, that edu binds to vfio-pci (/dev/vfio/N
# appears) and that the static Rust probe runs. Also checks the result parser on canned logs.
#
# Usage: selftest.sh [--verbose] [--timeout SECS] [--out DIR]
#   --out DIR   keep the initramfs and serial log there (default: a temporary folder, removed
#               on success)
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

e2e_parse_args 300 "$@"

t=$(e2e_now)
"$E2E_DIR/prepare.sh" --quiet
e2e_load_prepared
e2e_log "prepare: $(e2e_elapsed "$t") s"

"$E2E_DIR/check-report.sh"

# The vhost-user scenarios need QEMU 11.1's generic vhost-user device.
"$E2E_QEMU" -device help | grep -q '"vhost-user-test-device-pci"' ||
	e2e_die "$E2E_QEMU has no vhost-user-test-device-pci"
e2e_log "qemu: $("$E2E_QEMU" --version | head -n1), has vhost-user-test-device-pci"

t=$(e2e_now)
probe_target=$E2E_CACHE/target-probe
cargo_static() {
	RUSTFLAGS="-C target-feature=+crt-static" cargo "$@" --quiet --release --locked \
		--manifest-path "$E2E_DIR/probe/Cargo.toml" --target x86_64-unknown-linux-gnu \
		--target-dir "$probe_target"
}
cargo_static build
probe=$probe_target/x86_64-unknown-linux-gnu/release/bufbroker-e2e-probe
# The test executable's name carries a hash: ask cargo for it.
probe_tests=$(cargo_static test --no-run --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])')
[ -f "$probe_tests" ] || e2e_die "cargo test --no-run gave no test executable"
e2e_log "static probe build: $(e2e_elapsed "$t") s"

e2e_out_dir selftest

t=$(e2e_now)
"$E2E_DIR/mkinitramfs.sh" "$out/selftest.cpio.gz" \
	--bin "$probe" "$probe_tests=probe-tests" \
	--module vfio-pci vfio_iommu_type1 --no-autoload \
	--init-script "$E2E_DIR/guest/selftest.sh"
e2e_log "initramfs: $(e2e_elapsed "$t") s"

t=$(e2e_now)
status=0
"$E2E_DIR/run-guest.sh" --initrd "$out/selftest.cpio.gz" --log "$out/serial.log" \
	--timeout "$timeout_s" --iommu "${verbose_args[@]}" -- -device edu || status=$?
e2e_log "guest boot and tests: $(e2e_elapsed "$t") s"

e2e_finish "$status"
