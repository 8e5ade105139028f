#!/usr/bin/env bash
# Boots the e2e guest with QEMU 11.1's vhost-user-test-device-pci (virtio id 37, 2 queues,
# 32-byte config, 64 MiB shared memory) connected to the reference Python stub backend, and runs
# bufbroker-guest-selftest in it. The stub answers the vhost-user handshake but serves no
# rings, so the expected result is guest:open pass (device init through the userspace
# virtio-pci driver: unbind, caps, features, both queues, DRIVER_OK, config, window mapping)
# and guest:hello fail (no reply within the timeout). Needs tests/e2e/prepare.sh's cache.
# Usage: guest-lib/e2e/stub-selftest.sh [WORKDIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-$(mktemp -d)}
stub=${BUFBROKER_STUB:-$root/../shared/reference/qemu-guest/vhost_user_stub.py}
[ -f "$stub" ] || stub=/work/shared/reference/qemu-guest/vhost_user_stub.py
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release -p bufbroker-guest \
	--bin bufbroker-guest-selftest --target x86_64-unknown-linux-gnu --target-dir "$work/target"
bin=$work/target/x86_64-unknown-linux-gnu/release/bufbroker-guest-selftest
printf '/bin/bufbroker-guest-selftest --pings 3 --timeout 3\n' >"$work/test.sh"
"$root/tests/e2e/mkinitramfs.sh" "$work/initrd.cpio.gz" --bin "$bin" --init-script "$work/test.sh"
rm -f "$work/vu.sock"
python3 "$stub" --socket "$work/vu.sock" --shmem-size 0x4000000 --map-delay 0 --map-after-start \
	--log "$work/stub.log" &
stub_pid=$!
trap 'kill $stub_pid 2>/dev/null || true' EXIT
sleep 1
"$root/tests/e2e/run-guest.sh" --initrd "$work/initrd.cpio.gz" --shared-mem --timeout 150 \
	--log "$work/serial.log" -- -chardev "socket,id=c0,path=$work/vu.sock" \
	-device vhost-user-test-device-pci,chardev=c0,virtio-id=37,num_vqs=2,config_size=32 || true
grep -E 'SET_VRING_(NUM|ADDR)|SHMEM_MAP' "$work/stub.log" || true
