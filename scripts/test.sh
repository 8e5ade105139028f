#!/usr/bin/env bash
# The one test command (README, .ci/run): formatting, lints, every workspace test (unit,
# property, integration, corpus replays), then the real-kernel tier under QEMU TCG. Installs
# what a fresh Debian machine lacks; large downloads are cached in ${BUFBROKER_CACHE:-~/.cache/bufbroker}.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "host prerequisites"
missing=()
for tool in apt-get dpkg-deb python3 flock gzip; do
	command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing packages for: ${missing[*]}"
	apt-get update -q
	apt-get install -q -y python3 util-linux gzip dpkg
fi
for component in rustfmt clippy; do
	rustup component list --installed 2>/dev/null | grep -q "^$component" ||
		rustup component add "$component"
done

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "real kernel: runner self-test (QEMU 11.1, Debian 6.12, udmabuf, dma-heap, VFIO + edu)"
tests/e2e/selftest.sh

step "real VMM: QEMU 11.1 + the broker + guest-lib's driver (scenarios a-f; d = the heap tests inside the guest)"
tests/e2e/qemu-scenarios.sh --with-heaps

step "real kernel: VFIO with QEMU's edu device behind an emulated IOMMU"
tests/e2e/vfio-tests.sh

step "all tests passed"
