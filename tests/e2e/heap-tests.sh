#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The broker's heap tests on a real kernel: builds the `bufbroker` library's unit tests as a
# static binary, boots the Debian 6.12 guest kernel (real /dev/udmabuf, /dev/dma_heap/system
# and a huge-page pool) under QEMU TCG, and runs every heap test there in its own process with
# BUFBROKER_REQUIRE_DEVICES=1, so a test that would skip for a missing device fails instead.
#
# Usage: heap-tests.sh [--verbose] [--timeout SECS] [--out DIR]
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

e2e_parse_args 600 "$@"

"$E2E_DIR/prepare.sh" --quiet
e2e_load_prepared

t=$(e2e_now)
tests_bin=$(e2e_static_test_bin -p bufbroker --lib)
[ -f "$tests_bin" ] || e2e_die "cargo test --no-run gave no test executable"
e2e_log "static broker test build: $(e2e_elapsed "$t") s"

e2e_out_dir heaps

"$E2E_DIR/mkinitramfs.sh" "$out/heaps.cpio.gz" --bin "$tests_bin=broker-tests" \
	--init-script "$E2E_DIR/guest/heap-tests.sh"

status=0
"$E2E_DIR/run-guest.sh" --initrd "$out/heaps.cpio.gz" --log "$out/serial.log" \
	--timeout "$timeout_s" --append "hugepages=8" "${verbose_args[@]}" || status=$?

e2e_finish "$status"
