#!/usr/bin/env bash
# Start a VM with the bufbroker device. Usage: qemu-11.1.sh SOCKET KERNEL INITRD [QEMU]
# The broker must listen first:  bufbroker serve --socket-path SOCKET --shmem-size 64M
set -euo pipefail
socket=$1 kernel=$2 initrd=$3 qemu=${4:-qemu-system-x86_64}
exec "$qemu" \
	-machine q35,memory-backend=mem -accel tcg -m 512M -smp 1 \
	-object memory-backend-memfd,id=mem,size=512M,share=on \
	-chardev socket,id=c0,path="$socket" \
	-device vhost-user-test-device-pci,chardev=c0,virtio-id=37,num_vqs=2 \
	-kernel "$kernel" -initrd "$initrd" -append "console=ttyS0 quiet" \
	-nographic -no-reboot
