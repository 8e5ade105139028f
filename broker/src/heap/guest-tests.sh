#!/bin/bash
# Runs the broker's unit tests (the heap tests are the point: real /dev/udmabuf,
# /dev/dma_heap/system and a 2 MiB huge-page pool) inside the Debian 6.12 guest kernel under QEMU
# TCG, with the kernel, QEMU and busybox from the e2e cache (tests/e2e/prepare.sh), read-only.
#
#   RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=/tmp/heaps-static-target \
#     cargo test -p bufbroker --lib --no-run --target x86_64-unknown-linux-gnu
#   broker/src/heap/guest-tests.sh /tmp/heaps-static-target/x86_64-unknown-linux-gnu/debug/deps/bufbroker-<hash> [test args]
#
# About 10 s. Prints the guest console from the first guest line; exit status is the test run's.
set -euo pipefail
. "${E2E_ENV:-$HOME/.cache/bufbroker/e2e/current.env}"
BIN=${1:?usage: guest-tests.sh STATIC-TEST-BINARY [test args]}; shift
W=$(mktemp -d "${TMPDIR:-/tmp}/bufbroker-heap-guest.XXXXXX")
mkdir -p $W/root/{bin,proc,sys,dev,tmp}
cp "$E2E_BUSYBOX" $W/root/bin/busybox
cp "$BIN" $W/root/heaptest
cat > $W/root/init <<'I'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
echo "=== GUEST $(uname -r)"; ls -l /dev/udmabuf /dev/dma_heap/; cat /sys/module/udmabuf/parameters/*
ARGS=$(sed -n 's/.*heapargs=\([^ ]*\).*/\1/p' /proc/cmdline | tr , ' ')
RUST_BACKTRACE=1 /heaptest --test-threads=1 $ARGS; echo "=== HEAPTEST rc=$?"
poweroff -f
I
chmod +x $W/root/init
(cd $W/root && find . | "$E2E_BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -1 > $W/initrd.gz)
timeout ${TMO:-300} "$E2E_QEMU" -accel tcg -smp 1 -m 512M -nic none -display none -no-reboot \
  -kernel "$E2E_VMLINUZ" -initrd $W/initrd.gz \
  -append "console=ttyS0 loglevel=4 panic=-1 hugepages=8 rdinit=/init heapargs=$(IFS=,; echo "$*")" \
  -serial stdio > $W/console.txt 2>$W/qemu.err || true
rm -rf $W/root $W/initrd.gz
echo "console: $W/console.txt"
sed -n '/=== GUEST/,$p' $W/console.txt
grep -q "=== HEAPTEST rc=0" $W/console.txt
