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

verbose=() timeout_s=600 out=""
while [ $# -gt 0 ]; do
	case "$1" in
	--verbose) verbose=(--verbose) ;;
	--timeout) timeout_s=${2:?--timeout needs seconds}; shift ;;
	--out) out=${2:?--out needs a folder}; shift ;;
	-h | --help)
		sed -n '3,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*) e2e_die "unknown argument $1 (try --help)" ;;
	esac
	shift
done

"$E2E_DIR/prepare.sh" --quiet
e2e_load_prepared

t=$(e2e_now)
# The static target folder shared with heap-tests.sh: static linking changes RUSTFLAGS,
# which would otherwise rebuild the normal debug build every time.
# BUFBROKER_STATIC_TARGET: another cargo target folder for the static builds. Cargo records
# workspace paths relatively, so checkouts (git worktrees) building into the shared one at the
# same time can link each other's crates.
static_target=${BUFBROKER_STATIC_TARGET:-$E2E_CACHE/target-static}
# Prints the test executable cargo built for `cargo test ARGS --no-run`.
static_test_bin() {
	RUSTFLAGS="-C target-feature=+crt-static" cargo test --quiet --locked "$@" \
		--no-run --message-format=json --target x86_64-unknown-linux-gnu \
		--manifest-path "$E2E_REPO_ROOT/Cargo.toml" --target-dir "$static_target" |
		python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])'
}
tests_bin=$(static_test_bin -p bufbroker-vfio --test edu_guest)
[ -f "$tests_bin" ] || e2e_die "cargo test --no-run gave no test executable (bufbroker-vfio)"
broker_bin=$(static_test_bin -p bufbroker --test vfio_edu_guest)
[ -f "$broker_bin" ] || e2e_die "cargo test --no-run gave no test executable (bufbroker)"
e2e_log "static vfio test build: $(e2e_elapsed "$t") s"

if [ -z "$out" ]; then
	out=$(mktemp -d "${TMPDIR:-/tmp}/bufbroker-e2e-vfio.XXXXXX")
	cleanup_out=1
else
	mkdir -p "$out"
	cleanup_out=0
fi

"$E2E_DIR/mkinitramfs.sh" "$out/vfio.cpio.gz" --bin "$tests_bin=vfio-tests" \
	--bin "$broker_bin=broker-vfio-tests" \
	--module vfio-pci vfio_iommu_type1 --no-autoload \
	--init-script "$E2E_DIR/guest/vfio-tests.sh"

status=0
"$E2E_DIR/run-guest.sh" --initrd "$out/vfio.cpio.gz" --log "$out/serial.log" \
	--timeout "$timeout_s" --iommu "${verbose[@]}" -- -device edu || status=$?

if [ "$status" = 0 ] && [ "$cleanup_out" = 1 ]; then
	rm -rf "$out"
else
	e2e_log "initramfs and serial log kept in $out"
fi
exit "$status"
