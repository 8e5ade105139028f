#!/usr/bin/env bash
# Start a VM with the bufbroker device (QEMU >= 11.1, TCG). The broker must listen first:
#   bufbroker serve --socket-path SOCKET --shmem-size 64M
#
# Usage: qemu-11.1.sh SOCKET KERNEL INITRD [QEMU]
#        qemu-11.1.sh --socket SOCKET --kernel KERNEL --initrd INITRD [options] [-- QEMU ARGS...]
# Options:
#   --qemu BIN        QEMU binary (default qemu-system-x86_64 from PATH)
#   --memory SIZE     guest RAM, a shared memfd as vhost-user needs (default 512M)
#   --append WORDS    kernel command line (default "console=ttyS0 quiet")
#   --serial SPEC     first serial port (e.g. file:serial.log) and no monitor, no display;
#                     without it: -nographic (console and monitor on this terminal)
#   --dry-run         print the command (one argument per line) instead of running it
# Arguments after -- are appended to the command line (more devices, chardevs, -nodefaults).
# tests/e2e/qemu-scenarios.sh boots its guests through this script, so the line below is the
# one that is tested.
set -euo pipefail
socket="" kernel="" initrd="" qemu=qemu-system-x86_64 memory=512M append="console=ttyS0 quiet"
serial="" dry_run=0
extra=()
if [ $# -ge 3 ] && [ "${1#--}" = "$1" ]; then
	socket=$1 kernel=$2 initrd=$3 qemu=${4:-$qemu}
	shift $(($# < 4 ? $# : 4))
fi
while [ $# -gt 0 ]; do
	case "$1" in
	--socket) socket=${2:?--socket needs a path}; shift ;;
	--kernel) kernel=${2:?--kernel needs a file}; shift ;;
	--initrd) initrd=${2:?--initrd needs a file}; shift ;;
	--qemu) qemu=${2:?--qemu needs a binary}; shift ;;
	--memory) memory=${2:?--memory needs a size}; shift ;;
	--append) append=${2?--append needs words}; shift ;;
	--serial) serial=${2:?--serial needs a chardev spec}; shift ;;
	--dry-run) dry_run=1 ;;
	--)
		shift
		extra=("$@")
		break
		;;
	*)
		echo "qemu-11.1.sh: unknown argument $1" >&2
		exit 2
		;;
	esac
	shift
done
if [ -z "$socket" ] || [ -z "$kernel" ] || [ -z "$initrd" ]; then
	echo "usage: qemu-11.1.sh --socket SOCKET --kernel KERNEL --initrd INITRD [options] [-- QEMU ARGS]" >&2
	exit 2
fi
if [ -n "$serial" ]; then
	console=(-display none -monitor none -serial "$serial")
else
	console=(-nographic)
fi
# The device: QEMU's generic vhost-user device as virtio-dmabuf (id 37, PCI 1af4:1065) with a
# request and an event queue and the broker's 32-byte configuration space. The shared-memory
# window (BAR 4) takes the size the broker reports (GET_SHMEM_CONFIG).
# shellcheck disable=SC2054 # the commas separate QEMU's sub-options
cmd=("$qemu"
	-machine q35,memory-backend=mem -accel tcg -m "$memory" -smp 1
	-object "memory-backend-memfd,id=mem,size=$memory,share=on"
	-chardev "socket,id=c0,path=$socket"
	-device vhost-user-test-device-pci,chardev=c0,virtio-id=37,num_vqs=2,config_size=32
	-kernel "$kernel" -initrd "$initrd" -append "$append"
	"${console[@]}" -no-reboot
	"${extra[@]}")
if [ "$dry_run" = 1 ]; then
	printf '%s\n' "${cmd[@]}"
	exit 0
fi
exec "${cmd[@]}"
