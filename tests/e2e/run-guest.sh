#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Boot one end-to-end guest (the prepared Debian kernel + an initramfs from mkinitramfs.sh) under
# QEMU TCG, wait for it to power off, and report the results its /init printed.
#
# Usage: run-guest.sh --initrd FILE [options] [-- EXTRA QEMU ARGS...]
#        run-guest.sh --parse SERIAL.LOG        (only parse a serial log and report)
# Options:
#   --initrd FILE       initramfs (mkinitramfs.sh)
#   --timeout SECS      kill QEMU after SECS seconds (default 300)
#   --log FILE          serial console log (default: a new folder under ${TMPDIR:-/tmp})
#   --memory SIZE       guest memory (default 512M)
#   --machine OPTS      -machine value (default q35)
#   --shared-mem        guest RAM in a shared memfd (memory-backend-memfd,share=on), as
#                       vhost-user devices need (e.g. -chardev socket,id=c0,path=SOCK
#                       -device vhost-user-test-device-pci,chardev=c0,virtio-id=37,num_vqs=2)
#   --iommu             emulated Intel IOMMU: -device intel-iommu,intremap=on,
#                       kernel-irqchip=split and intel_iommu=on (for VFIO in the guest)
#   --append ARGS       more kernel command-line words; NAME=value words reach the test
#                       script's environment (e.g. BUFBROKER_TEST_TIMEOUT=60); loglevel=7 shows
#                       all kernel messages on the console (default 4: errors only)
#   --kernel K          vmlinux (default, the unpacked ELF; boots faster), vmlinuz, or a path
#   --verbose           stream the serial console while the guest runs
# Prints "scenario | result | seconds" and "N passed, N failed"; exits 0 only if the guest
# printed BUFBROKER-DONE 0, at least one result, and no failure. Otherwise it prints the output
# of each failed scenario, the tail of the serial log and of the guest's kernel log, and QEMU's
# stderr.
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
	sed -n '3,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
	exit "${1:-0}"
}

initrd="" timeout_s=300 log="" memory=512M machine=q35 iommu=0 shared_mem=0 append="" kernel=vmlinux
verbose=0 parse_only=""
extra=()
while [ $# -gt 0 ]; do
	case "$1" in
	--initrd) initrd=${2:?--initrd needs a file}; shift ;;
	--timeout) timeout_s=${2:?--timeout needs seconds}; shift ;;
	--log) log=${2:?--log needs a file}; shift ;;
	--memory) memory=${2:?--memory needs a size}; shift ;;
	--machine) machine=${2:?--machine needs options}; shift ;;
	--iommu) iommu=1 ;;
	--shared-mem) shared_mem=1 ;;
	--append) append="$append ${2:?--append needs words}"; shift ;;
	--kernel) kernel=${2:?--kernel needs vmlinux, vmlinuz or a path}; shift ;;
	--verbose) verbose=1 ;;
	--parse) parse_only=${2:?--parse needs a serial log}; shift ;;
	-h | --help) usage 0 ;;
	--)
		shift
		extra=("$@")
		break
		;;
	*) e2e_die "unknown argument $1 (try --help)" ;;
	esac
	shift
done

# failure_details LOG: what a reader needs to see first when something failed.
failure_details() {
	tr -d '\r' <"$1" | awk -v logf="$1" '
		function flush_section(name) {
			if (!(name in lines)) return
			printf "---- output of %s (last %d lines) ----\n", name, (lines[name] > 40 ? 40 : lines[name])
			for (i = (lines[name] > 40 ? lines[name] - 39 : 1); i <= lines[name]; i++) print out[name, i]
		}
		/BUFBROKER-DMESG-BEGIN/ { in_dmesg = 1; next }
		/BUFBROKER-DMESG-END/ { in_dmesg = 0; next }
		in_dmesg { kmsg[++nk] = $0; next }
		{ tail[++nt] = $0 }
		match($0, /BUFBROKER-BEGIN [^ ]+/) { cur = substr($0, RSTART + 16, RLENGTH - 16); next }
		match($0, /BUFBROKER-RESULT [^ ]+ (pass|fail|skip) /) {
			split(substr($0, RSTART, RLENGTH), f, " ")
			if (f[3] == "fail") failed[f[2]] = 1
			if (f[2] == cur) cur = ""
			next
		}
		cur != "" { out[cur, ++lines[cur]] = $0 }
		END {
			if (cur != "") failed[cur] = 1
			for (name in failed) flush_section(name)
			printf "---- last 30 lines of the serial log %s (without the dmesg dump) ----\n", logf
			for (i = (nt > 30 ? nt - 29 : 1); i <= nt; i++) print tail[i]
			if (nk) {
				printf "---- last 25 lines of the guest kernel log ----\n"
				for (i = (nk > 25 ? nk - 24 : 1); i <= nk; i++) print kmsg[i]
			}
		}'
}

# report LOG [QEMU_STATUS] [QEMU_STDERR]: print the table; return 0 only on success.
report() {
	local serial=$1 qemu_status=${2:-} qemu_err=${3:-}
	local ok=0
	# Markers may share a line with kernel output; \r comes from the serial line discipline.
	tr -d '\r' <"$serial" | awk -v qemu_status="$qemu_status" '
		match($0, /BUFBROKER-BEGIN [^ ]+/) {
			name = substr($0, RSTART + 16, RLENGTH - 16)
			if (!(name in result)) { order[++n] = name; result[name] = "" }
		}
		match($0, /BUFBROKER-RESULT [^ ]+ (pass|fail|skip) [0-9.]+/) {
			split(substr($0, RSTART, RLENGTH), f, " ")
			if (!(f[2] in result)) order[++n] = f[2]
			result[f[2]] = f[3]; secs[f[2]] = f[4]
		}
		match($0, /BUFBROKER-DONE -?[0-9]+/) { done = 1; status = substr($0, RSTART + 15, RLENGTH - 15) }
		END {
			w = 8
			for (i = 1; i <= n; i++) if (length(order[i]) > w) w = length(order[i])
			printf "%-" w "s | %-6s | %s\n", "scenario", "result", "seconds"
			line = ""; for (i = 0; i < w; i++) line = line "-"
			printf "%s-+-%s-+-%s\n", line, "------", "-------"
			for (i = 1; i <= n; i++) {
				r = result[order[i]]
				if (r == "") { r = "fail"; s = "-"; unfinished++ } else s = secs[order[i]]
				printf "%-" w "s | %-6s | %7s\n", order[i], r, s
				count[r]++
			}
			failed = count["fail"] + 0
			printf "%d passed, %d failed", count["pass"] + 0, failed
			if (count["skip"]) printf ", %d skipped", count["skip"]
			printf "\n"
			bad = 0
			if (unfinished) { print "e2e: " unfinished " scenario(s) started but never reported a result"; bad = 1 }
			if (!done) { print "e2e: the guest never printed BUFBROKER-DONE" (qemu_status != "" ? " (QEMU exit status " qemu_status ")" : ""); bad = 1 }
			else if (status != 0) { print "e2e: the guest test script exited with status " status; bad = 1 }
			if (n == 0) { print "e2e: no scenario ran"; bad = 1 }
			if (failed) bad = 1
			exit bad
		}' || ok=1
	if [ "$ok" != 0 ]; then
		failure_details "$serial"
		if [ -n "$qemu_err" ] && [ -s "$qemu_err" ]; then
			echo "---- QEMU stderr ($qemu_err) ----"
			tail -n 20 "$qemu_err"
		fi
	fi
	return "$ok"
}

if [ -n "$parse_only" ]; then
	[ -f "$parse_only" ] || e2e_die "--parse $parse_only: no such file"
	report "$parse_only"
	exit
fi

[ -n "$initrd" ] || usage 2
[ -f "$initrd" ] || e2e_die "--initrd $initrd: no such file"
e2e_load_prepared
case "$kernel" in
vmlinux) kernel_path=$E2E_VMLINUX ;;
vmlinuz) kernel_path=$E2E_VMLINUZ ;;
*) kernel_path=$kernel ;;
esac
[ -f "$kernel_path" ] || e2e_die "kernel $kernel_path: no such file"

if [ -z "$log" ]; then
	log=$(mktemp -d "${TMPDIR:-/tmp}/bufbroker-e2e.XXXXXX")/serial.log
fi
mkdir -p "$(dirname "$log")"
: >"$log"
qemu_err=${log%.log}.qemu-stderr.log

# no_timer_check: under TCG on a loaded host the kernel's early check that the timer
# interrupt arrives can fail and panic ("timer doesn't work through Interrupt-remapped
# IO-APIC", seen with --iommu); the check proves nothing about an emulated timer.
cmdline="console=ttyS0 panic=-1 rdinit=/init loglevel=4 no_timer_check"
qemu_args=(-accel tcg -cpu max -smp 1 -m "$memory" -nodefaults -no-user-config
	-display none -no-reboot -serial "file:$log"
	-kernel "$kernel_path" -initrd "$initrd")
if [ "$shared_mem" = 1 ]; then
	machine="$machine,memory-backend=e2e-mem"
	qemu_args+=(-object "memory-backend-memfd,id=e2e-mem,size=$memory,share=on")
fi
if [ "$iommu" = 1 ]; then
	machine="$machine,kernel-irqchip=split"
	cmdline="$cmdline intel_iommu=on"
	qemu_args+=(-device "intel-iommu,intremap=on")
fi
qemu_args+=(-machine "$machine" -append "$cmdline${append}" "${extra[@]}")

qemu_pid=""
tail_pid=""
cleanup() {
	[ -z "$qemu_pid" ] || kill "$qemu_pid" 2>/dev/null || true
	[ -z "$tail_pid" ] || kill "$tail_pid" 2>/dev/null || true
}
trap cleanup EXIT

e2e_log "booting $(basename "$kernel_path") + $(basename "$initrd") (timeout ${timeout_s}s, serial log $log)"
t0=$(e2e_now)
timeout --kill-after=10 "$timeout_s" "$E2E_QEMU" "${qemu_args[@]}" 2>"$qemu_err" &
qemu_pid=$!
if [ "$verbose" = 1 ]; then
	tail -n +1 -f --pid="$qemu_pid" "$log" &
	tail_pid=$!
fi
status=0
wait "$qemu_pid" || status=$?
qemu_pid=""
if [ -n "$tail_pid" ]; then
	wait "$tail_pid" || true
	tail_pid=""
fi
wall=$(e2e_elapsed "$t0")
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
	e2e_log "QEMU killed after the ${timeout_s}s timeout"
fi
e2e_log "guest ran ${wall}s wall, QEMU exit status $status"
report "$log" "$status" "$qemu_err"
