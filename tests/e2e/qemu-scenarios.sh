#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# bufbroker end to end with a real QEMU 11.1 (TCG) and a real Debian 6.12 guest kernel: builds
# the broker and the host helpers, the static guest self-test and an initramfs, starts
# `bufbroker serve` with two guest sockets and a local socket, boots guests through
# qemu-configs/qemu-11.1.sh (the documented command line, so the docs cannot drift from what
# is tested) and checks the guests' serial logs, the broker's log and its accounting.
#
# Scenarios (see tests/e2e/README.md):
#   a  guest <-> broker zero copy: the guest's userspace driver allocates NV12 1080p in the host
#      window, writes a pattern, exports and grants it; a host client imports it over the local
#      socket and reads the same bytes; round-trip timings (ratios to an echo)
#   b  shared objects: SHARED_OBJECT_ADD on export and REMOVE on free acked by QEMU
#   c  guest-RAM placement (skipped while the broker refuses it)
#   d  real dmabuf heaps: tests/e2e/heap-tests.sh (with --with-heaps; otherwise referenced)
#   e  teardown: driver reset, then SIGKILL of QEMU: the guest's buffers, bytes and the broker's
#      open fds return to their baseline; a new QEMU is served on the same socket
#   f  two VMs on one broker with separate quotas
#   g  bufbroker-guestd owns the device; two guest processes run the self-test through it at once
#
# Usage: qemu-scenarios.sh [--verbose] [--keep] [--with-heaps] [--timeout SECS] [--only LETTERS]
#   --verbose     print the guests' serial logs and the broker log at the end
#   --keep        keep the work folder (always kept when something failed)
#   --with-heaps  also run tests/e2e/heap-tests.sh as scenario d
#   --timeout     per-guest limit in seconds (default 240)
#   --only LETTERS  run only these scenarios (e.g. --only ae; default abcdefg)
# Environment: E2E_BROKER_WRAPPER (see below), RUST_LOG (the broker's, default info),
# BUFBROKER_STATIC_TARGET (cargo target folder of the static guest build).
# Prints "scenario | result | seconds" and exits non-zero if any scenario failed.
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

verbose=0 keep=0 with_heaps=0 guest_timeout=240 only=abcdefg
while [ $# -gt 0 ]; do
	case "$1" in
	--verbose) verbose=1 ;;
	--keep) keep=1 ;;
	--with-heaps) with_heaps=1 ;;
	--only) only=${2:?--only needs scenario letters}; shift ;;
	--timeout) guest_timeout=${2:?--timeout needs seconds}; shift ;;
	-h | --help)
		sed -n '3,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*) e2e_die "unknown argument $1 (try --help)" ;;
	esac
	shift
done

t_all=$(e2e_now)
"$E2E_DIR/prepare.sh" --quiet
e2e_load_prepared

work=$(mktemp -d "${TMPDIR:-/tmp}/bufbroker-qemu.XXXXXX")
uid=$(id -u)
broker_pid=""
vm_pids=() other_pids=()
cleanup() {
	local p
	for p in "${vm_pids[@]}" "${other_pids[@]}"; do kill "$p" 2>/dev/null || true; done
	[ -z "$broker_pid" ] || kill "$broker_pid" 2>/dev/null || true
}
trap cleanup EXIT

# --- results ----------------------------------------------------------------------------------
names=() outcomes=() seconds=() notes=()
record() { # NAME pass|fail|skip SECONDS NOTE
	names+=("$1") outcomes+=("$2") seconds+=("$3") notes+=("$4")
	e2e_log "scenario $1: $2 ($3 s) $4"
}
# check WHAT CMD...: run a check inside a scenario; on failure say what and return 1.
check() {
	local what=$1
	shift
	if "$@"; then return 0; fi
	e2e_log "FAILED: $what"
	return 1
}

# --- build ------------------------------------------------------------------------------------
t=$(e2e_now)
host_target=${CARGO_TARGET_DIR:-$E2E_REPO_ROOT/target}
cargo build --quiet --locked --manifest-path "$E2E_REPO_ROOT/Cargo.toml" --target-dir "$host_target" \
	-p bufbroker --bin bufbroker -p bufbroker-tests --bin bufbroker-e2e-host --bin bufbroker-e2e-consumer
bufbroker=$host_target/debug/bufbroker
host_client=$host_target/debug/bufbroker-e2e-host
consumer=$host_target/debug/bufbroker-e2e-consumer
# BUFBROKER_STATIC_TARGET: another target folder for the static build (see vfio-tests.sh).
static_target=${BUFBROKER_STATIC_TARGET:-$E2E_CACHE/target-static}
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --locked \
	--manifest-path "$E2E_REPO_ROOT/Cargo.toml" --target-dir "$static_target" \
	--target x86_64-unknown-linux-gnu -p bufbroker-guest --bin bufbroker-guest-selftest \
	--bin bufbroker-guestd
selftest=$static_target/x86_64-unknown-linux-gnu/debug/bufbroker-guest-selftest
guestd=$static_target/x86_64-unknown-linux-gnu/debug/bufbroker-guestd
"$E2E_DIR/mkinitramfs.sh" "$work/initrd.cpio.gz" --bin "$selftest" --bin "$guestd" \
	--init-script "$E2E_DIR/guest/qemu-scenarios.sh" >/dev/null
e2e_log "build + initramfs: $(e2e_elapsed "$t") s"

# --- helpers ----------------------------------------------------------------------------------
# wait_line FILE REGEX SECS [NTH [PID]]: print the NTH line of FILE matching REGEX once it
# is there (fails after SECS, or when PID ends first).
wait_line() { python3 "$E2E_DIR/e2e_tool.py" wait-line "$@"; }

# boot NAME ROLE SOCKET [QEMU ARGS...]: start a guest in the background through
# qemu-configs/qemu-11.1.sh; its serial console goes to $work/NAME.serial.log, its second serial
# port (/dev/ttyS1) reads from the FIFO $work/NAME.sync.in (sync_done). Sets vm_pid.
boot() {
	local name=$1 role=$2 socket=$3
	shift 3
	rm -f "$work/$name.sync.in" "$work/$name.sync.out" "$work/$name.pid"
	mkfifo "$work/$name.sync.in" "$work/$name.sync.out"
	: >"$work/$name.serial.log"
	timeout --kill-after=10 "$guest_timeout" "$E2E_REPO_ROOT/qemu-configs/qemu-11.1.sh" \
		--qemu "$E2E_QEMU" --socket "$socket" --kernel "$E2E_VMLINUX" \
		--initrd "$work/initrd.cpio.gz" --memory 512M --serial "file:$work/$name.serial.log" \
		--append "console=ttyS0 panic=-1 rdinit=/init loglevel=4 no_timer_check E2E_ROLE=$role E2E_GRANTEE=uid:$uid" \
		-- -nodefaults -no-user-config -cpu max -pidfile "$work/$name.pid" \
		-chardev "pipe,id=sync,path=$work/$name.sync" -serial chardev:sync "$@" \
		2>"$work/$name.qemu-stderr.log" &
	vm_pid=$!
	vm_pids+=("$vm_pid")
}

# sync_done NAME: tell guest NAME to go on (a line on its /dev/ttyS1).
sync_done() {
	# The FIFO's reader is QEMU; if it is gone, opening would block: bound it.
	# shellcheck disable=SC2016 # $1 is the inner shell's
	timeout 10 sh -c 'printf "done\n" >"$1"' sh "$work/$1.sync.in"
}

# guest_result NAME PID: wait for the guest to power off; print its table (run-guest.sh's
# parser); 0 if every step passed and /init finished.
guest_result() {
	local name=$1 pid=$2 status=0
	wait "$pid" || status=$?
	if [ "$status" != 0 ]; then
		e2e_log "$name: QEMU exit status $status"
		tail -n 5 "$work/$name.qemu-stderr.log" >&2 || true
	fi
	"$E2E_DIR/run-guest.sh" --parse "$work/$name.serial.log" | sed "s/^/  $name: /" >&2 &&
		[ "$status" = 0 ]
}

# stat_of OWNER FIELD: bytes or buffers the broker reports for OWNER (0 if it lists none).
stat_of() {
	"$host_client" stats --socket "$work/local.sock" |
		awk -v o="$1" -v f="$2" '$1 == o { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == f) v = kv[2] } } END { print v + 0 }'
}
# broker_fds: the broker's open fds, counted once every local client it logged as connected has
# also been logged as disconnected (its connection is closed by then).
broker_fds() {
	local n
	n=$(count_lines "$blog" 'client pid [0-9]+ connected')
	[ "$n" = 0 ] || wait_line "$blog" 'client pid [0-9]+ disconnected' 10 "$n" >/dev/null
	find "/proc/$broker_pid/fd" -mindepth 1 -maxdepth 1 -printf '%f -> %l\n' | sort -n >"$work/fds.${1:-now}"
	wc -l <"$work/fds.${1:-now}"
}
# absent FILE REGEX: true if no line of FILE matches.
absent() { ! grep -qE "$2" "$1"; }
# count_lines FILE REGEX: matching lines so far.
count_lines() { grep -cE "$2" "$1" || true; }

# --- the broker -------------------------------------------------------------------------------
cat >"$work/broker.toml" <<EOF
# Written by tests/e2e/qemu-scenarios.sh.
[owners."uid:$uid"]
admin = true                      # the host client reads every owner's stats

[owners."vm.sock1"]
bytes = 8388608                   # 8 MiB: two NV12 1080p buffers fit, a third does not
EOF
# E2E_BROKER_WRAPPER="strace -f -o FILE -xx -e trace=recvmsg,sendmsg" runs the broker under a
# tool (words split on spaces); its pid is then the wrapper's, so scenario e's fd count is off.
read -r -a wrapper <<<"${E2E_BROKER_WRAPPER:-}"
RUST_LOG=${RUST_LOG:-info} "${wrapper[@]}" "$bufbroker" serve --socket-path "$work/vm.sock" --socket-count 2 \
	--local-socket "$work/local.sock" --config "$work/broker.toml" >"$work/broker.log" 2>&1 &
broker_pid=$!
wait_line "$work/broker.log" 'serving host processes' 30 1 "$broker_pid" >/dev/null
wait_line "$work/broker.log" 'vm\.sock1: listening' 30 1 "$broker_pid" >/dev/null
blog=$work/broker.log

# ratio_of SERIAL_LOG NAME: the "Nx" ratio to the echo the self-test's --bench printed.
ratio_of() { tr -d '\r' <"$1" | awk -v n="$2" '$1 == n && $3 ~ /x$/ { print $3; exit }'; }

# arena_bench: the round trips again against a second broker whose [arenas] mode is "always"
# (this host has no /dev/udmabuf, so the default "auto" maps every buffer on its own); prints
# the allocation's ratio to the echo.
arena_bench() {
	local apid
	printf '[arenas]\nmode = "always"\nkeep_warm = true\n' >"$work/arena.toml"
	RUST_LOG=${RUST_LOG:-info} "$bufbroker" serve --socket-path "$work/arena.sock" \
		--config "$work/arena.toml" >"$work/arena-broker.log" 2>&1 &
	apid=$!
	other_pids+=("$apid")
	wait_line "$work/arena-broker.log" 'arena\.sock: listening' 30 1 "$apid" >/dev/null || return 1
	boot arena bench "$work/arena.sock"
	if ! check "round trips with arenas" guest_result arena "$vm_pid"; then
		kill "$apid" 2>/dev/null || true
		return 1
	fi
	kill "$apid" 2>/dev/null || true
	wait "$apid" 2>/dev/null || true
	sed -n '/round trips x/,/free /p' "$work/arena.serial.log" | tr -d '\r' | sed 's/^/  arena: /' >&2
	ratio_of "$work/arena.serial.log" allocate
}

# --- a + b: zero copy, shared objects ------------------------------------------------------------
# A second vhost-user device in the same VM, served by bufbroker-e2e-consumer, looks the
# exported UUID up through QEMU (broken in QEMU 11.1.3: docs/qemu-11.1-shared-object-lookup.md;
# the broker must survive QEMU's payload-less GET_SHARED_OBJECT) and then resolves it through
# the broker's local socket, as a host backend does today.
scenario_share() {
	local t line uuid="" size ok=1 tb cpid lookup
	t=$(e2e_now)
	rm -f "$work/consumer.requests"
	mkfifo "$work/consumer.requests"
	"$consumer" --socket "$work/consumer.sock" --local-socket "$work/local.sock" \
		--requests "$work/consumer.requests" >"$work/consumer.log" 2>&1 &
	cpid=$!
	other_pids+=("$cpid")
	wait_line "$work/consumer.log" 'CONSUMER-LISTENING' 30 1 "$cpid" >/dev/null
	boot share share "$work/vm.sock0" \
		-chardev "socket,id=c1,path=$work/consumer.sock" \
		-device vhost-user-test-device-pci,chardev=c1,virtio-id=37,num_vqs=1,addr=0x10
	local pid=$vm_pid
	if line=$(wait_line "$work/share.serial.log" 'BUFBROKER-EXPORT ' "$guest_timeout" 1 "$pid"); then
		read -r uuid size _ <<<"${line##*BUFBROKER-EXPORT }"
		e2e_log "guest exported $uuid ($size bytes)"
		check "host import of $uuid" "$host_client" import --socket "$work/local.sock" \
			--uuid "$uuid" --size "$size" >"$work/host-import.log" 2>&1 || ok=0
		sed 's/^/  host: /' "$work/host-import.log" >&2
		# shellcheck disable=SC2016 # $1.. are the inner shell's
		timeout 10 sh -c 'printf "%s %s\n" "$1" "$2" >"$3"' sh "$uuid" "$size" "$work/consumer.requests" || true
		wait_line "$work/consumer.log" 'CONSUMER-RESULT' 60 1 "$cpid" >/dev/null || true
		check "guest waiting on its sync port" \
			wait_line "$work/share.serial.log" 'BUFBROKER-WAITING' 60 1 "$pid" >/dev/null || ok=0
		sync_done share || ok=0
	else
		ok=0
		# shellcheck disable=SC2016 # $1 is the inner shell's
		timeout 10 sh -c ': >"$1"' sh "$work/consumer.requests" || true
	fi
	check "guest self-test" guest_result share "$pid" || ok=0
	sed -n '/round trips x/,/free /p' "$work/share.serial.log" | tr -d '\r' | sed 's/^/  /' >&2
	tb=$(e2e_elapsed "$t")
	local own arena
	own=$(ratio_of "$work/share.serial.log" allocate)
	arena=$(arena_bench) || ok=0
	record a.zero-copy "$([ "$ok" = 1 ] && echo pass || echo fail)" "$(e2e_elapsed "$t")" \
		"NV12 1080p in the host window, guest pattern read by a host client; allocate = ${own:-?} echo (own SHMEM_MAP), ${arena:-?} (arena)"

	ok=1
	check "consumer backend ended with QEMU" wait "$cpid" || ok=0
	sed 's/^/  consumer: /' "$work/consumer.log" >&2
	check "SHARED_OBJECT_ADD acked" grep -q "SHARED_OBJECT_ADD ${uuid:-none} acked" "$blog" || ok=0
	check "SHARED_OBJECT_REMOVE acked" grep -q "SHARED_OBJECT_REMOVE ${uuid:-none} acked" "$blog" || ok=0
	check "consumer read the pattern through the broker" grep -q 'CONSUMER-RESULT pass' "$work/consumer.log" || ok=0
	check "the broker kept serving the guest (no failed connection)" \
		absent "$blog" 'vm\.sock0#[0-9]+: connection failed' || ok=0
	lookup=$(sed -n 's/^CONSUMER-LOOKUP [^ ]*: //p' "$work/consumer.log" | head -n 1)
	record b.shared-objects "$([ "$ok" = 1 ] && echo pass || echo fail)" "$tb" \
		"ADD/REMOVE acked; lookup via QEMU: ${lookup:-none}; via local socket: read"
}

wanted() { case "$only" in *"$1"*) return 0 ;; *) return 1 ;; esac }
if wanted a || wanted b; then scenario_share; fi

# --- c: guest-RAM placement ---------------------------------------------------------------------
# An NV12 320x240 buffer made of the guest process's own locked pages: the broker checks the
# guest-physical ranges against QEMU's memory table and records the buffer. Sharing it needs
# /dev/udmabuf on the host (the export's answer is printed, not required).
scenario_guest_ram() {
	local t ok=1 note="" line uuid size pid
	t=$(e2e_now)
	boot guestram guestram "$work/vm.sock0"
	pid=$vm_pid
	if line=$(wait_line "$work/guestram.serial.log" 'BUFBROKER-GUESTRAM-EXPORT ' "$guest_timeout" 1 "$pid"); then
		read -r uuid size _ <<<"${line##*BUFBROKER-GUESTRAM-EXPORT }"
		# Host clients get a dmabuf over the guest's pages where the host has /dev/udmabuf;
		# without it the broker refuses the import with UNSUPPORTED.
		if "$host_client" import --socket "$work/local.sock" --uuid "$uuid" --size "$size" \
			>"$work/guestram-import.log" 2>&1; then
			note="host client read the pattern from the guest's own pages"
		elif grep -q UNSUPPORTED "$work/guestram-import.log"; then
			note="host import refused with UNSUPPORTED ($([ -e /dev/udmabuf ] && echo "although" || echo "no") /dev/udmabuf on this host)"
			[ -e /dev/udmabuf ] && ok=0
		else
			ok=0 note="host import failed"
		fi
		sed 's/^/  host: /' "$work/guestram-import.log" >&2
		check "guest waiting on its sync port" \
			wait_line "$work/guestram.serial.log" 'BUFBROKER-WAITING' 60 1 "$pid" >/dev/null || ok=0
		sync_done guestram || ok=0
	else
		ok=0
	fi
	check "guest-RAM allocation" guest_result guestram "$pid" || ok=0
	tr -d '\r' <"$work/guestram.serial.log" | grep -a '^guest-ram:' | sed 's/^/  /' >&2 || true
	record c.guest-ram "$([ "$ok" = 1 ] && echo pass || echo fail)" "$(e2e_elapsed "$t")" \
		"Placement::GuestRam over the guest's own pages, exported; ${note:-no export}"
}

if wanted c; then scenario_guest_ram; fi

# --- d: real dmabuf heaps -----------------------------------------------------------------------
if ! wanted d; then
	:
elif [ "$with_heaps" = 1 ]; then
	t=$(e2e_now)
	if "$E2E_DIR/heap-tests.sh" >"$work/heap-tests.log" 2>&1; then r=pass; else r=fail; fi
	grep -E 'passed, [0-9]+ failed' "$work/heap-tests.log" | sed 's/^/  heap-tests: /' >&2 || true
	record d.dmabuf-heaps "$r" "$(e2e_elapsed "$t")" "tests/e2e/heap-tests.sh: udmabuf, dma-heap system in the guest kernel"
else
	record d.dmabuf-heaps skip 0 "run by tests/e2e/heap-tests.sh (or pass --with-heaps)"
fi

# --- e: teardown -------------------------------------------------------------------------------
# The guest holds 3 buffers and exits without freeing them (the driver resets the device when
# the process ends), then holds 2; QEMU is killed with SIGKILL. The broker must free
# everything of that guest and serve a new QEMU on the same socket.
scenario_teardown() {
	local t ok=1 g=vm.sock0 base_bytes base_fds resets disconnects pid qpid n st
	t=$(e2e_now)
	base_bytes=$(stat_of "$g" bytes)
	base_fds=$(broker_fds baseline)
	resets=$(count_lines "$blog" "$g: guest state freed \\(Reset\\)")
	disconnects=$(count_lines "$blog" "$g: guest state freed \\(Disconnect\\)")
	e2e_log "baseline: $g $base_bytes bytes, broker $base_fds open fds"
	boot teardown hold "$work/$g"
	pid=$vm_pid
	if check "guest holds 3 buffers" wait_line "$work/teardown.serial.log" 'BUFBROKER-WAITING' "$guest_timeout" 1 "$pid" >/dev/null; then
		n=$(stat_of "$g" buffers)
		check "broker counts 3 buffers for $g (it says $n)" [ "$n" = 3 ] || ok=0
		sync_done teardown || ok=0
	else
		ok=0
	fi
	if check "guest holds 2 buffers after the reset" wait_line "$work/teardown.serial.log" 'BUFBROKER-WAITING' 120 2 "$pid" >/dev/null; then
		check "broker log: state freed on reset" \
			wait_line "$blog" "$g: guest state freed \\(Reset\\)" 10 $((resets + 1)) >/dev/null || ok=0
		n=$(stat_of "$g" buffers)
		check "broker counts 2 buffers for $g after the reset (it says $n)" [ "$n" = 2 ] || ok=0
	else
		ok=0
	fi
	qpid=$(cat "$work/teardown.pid" 2>/dev/null || true)
	if check "QEMU pid file" [ -n "$qpid" ]; then
		kill -KILL "$qpid" || true
	fi
	st=0
	wait "$pid" || st=$?
	# 137: our SIGKILL (through timeout); anything else means QEMU ended on its own first.
	check "QEMU ended by our SIGKILL (exit status $st)" [ "$st" = 137 ] || ok=0
	check "broker log: state freed on disconnect" \
		wait_line "$blog" "$g: guest state freed \\(Disconnect\\)" 30 $((disconnects + 1)) >/dev/null || ok=0
	n=$(stat_of "$g" bytes)
	check "bytes of $g back to $base_bytes (now $n)" [ "$n" = "$base_bytes" ] || ok=0
	n=$(stat_of "$g" buffers)
	check "buffers of $g back to 0 (now $n)" [ "$n" = 0 ] || ok=0
	n=$(broker_fds)
	if ! check "broker open fds back to $base_fds (now $n)" [ "$n" = "$base_fds" ]; then
		ok=0
		diff "$work/fds.baseline" "$work/fds.now" | sed 's/^/  fds: /' >&2 || true
	fi
	boot after-kill smoke "$work/$g"
	check "a new QEMU on the same socket" guest_result after-kill "$vm_pid" || ok=0
	record e.teardown "$([ "$ok" = 1 ] && echo pass || echo fail)" "$(e2e_elapsed "$t")" \
		"reset + SIGKILL: buffers, bytes, fds to baseline; next QEMU served"
}

if wanted e; then scenario_teardown; fi

# --- f: two VMs, separate quotas ------------------------------------------------------------------
# vm.sock1 has an 8 MiB quota: it allocates until the broker refuses with
# QUOTA_EXCEEDED and holds what it got; meanwhile vm.sock0 (default quota) allocates 4.
scenario_two_vms() {
	local t ok=1 pid_over pid_under n
	t=$(e2e_now)
	boot over over "$work/vm.sock1"
	pid_over=$vm_pid
	boot under under "$work/vm.sock0"
	pid_under=$vm_pid
	if check "vm.sock1 at its quota" wait_line "$work/over.serial.log" 'BUFBROKER-WAITING' "$guest_timeout" 1 "$pid_over" >/dev/null; then
		grep -a 'fill:' "$work/over.serial.log" | tr -d '\r' | sed 's/^/  vm.sock1: /' >&2
		n=$(stat_of vm.sock1 buffers)
		check "broker counts 2 buffers for vm.sock1 (it says $n)" [ "$n" = 2 ] || ok=0
		check "vm.sock0 waiting" wait_line "$work/under.serial.log" 'BUFBROKER-WAITING' "$guest_timeout" 1 "$pid_under" >/dev/null || ok=0
		sync_done under || ok=0
		check "vm.sock0 allocates 4 while vm.sock1 is at its quota" guest_result under "$pid_under" || ok=0
		sync_done over || ok=0
	else
		ok=0
	fi
	check "vm.sock1 refused with QUOTA_EXCEEDED" guest_result over "$pid_over" || ok=0
	record f.two-vms "$([ "$ok" = 1 ] && echo pass || echo fail)" "$(e2e_elapsed "$t")" \
		"vm.sock1 (8 MiB quota) refused with QUOTA_EXCEEDED; vm.sock0 unaffected"
}

if wanted f; then scenario_two_vms; fi

# --- g: the guest agent ---------------------------------------------------------------------------
# bufbroker-guestd owns the device; two self-tests run at once as its clients (HostWindow
# buffers mapped through the BAR fd the agent passes with HelloReply).
scenario_agent() {
	local t ok=1
	t=$(e2e_now)
	boot agent agent "$work/vm.sock0"
	check "two self-tests through bufbroker-guestd" guest_result agent "$vm_pid" || ok=0
	check "both clients ran every step" [ "$(count_lines "$work/agent.serial.log" 'BUFBROKER-RESULT agent[12]:free pass')" = 2 ] || ok=0
	record g.agent "$([ "$ok" = 1 ] && echo pass || echo fail)" "$(e2e_elapsed "$t")" \
		"two guest processes share the device through bufbroker-guestd"
}

if wanted g; then scenario_agent; fi

# --- report -----------------------------------------------------------------------------------
{
	w=8
	for n in "${names[@]}"; do [ "${#n}" -gt "$w" ] && w=${#n}; done
	printf "%-${w}s | %-6s | %7s | %s\n" scenario result seconds notes
	printf '%s\n' "$(printf -- '-%.0s' $(seq 1 $((w + 40))))"
	failed=0 passed=0 skipped=0
	for i in "${!names[@]}"; do
		printf "%-${w}s | %-6s | %7s | %s\n" "${names[$i]}" "${outcomes[$i]}" "${seconds[$i]}" "${notes[$i]}"
		case "${outcomes[$i]}" in
		pass) passed=$((passed + 1)) ;;
		fail) failed=$((failed + 1)) ;;
		*) skipped=$((skipped + 1)) ;;
		esac
	done
	echo "$passed passed, $failed failed, $skipped skipped; whole run $(e2e_elapsed "$t_all") s"
}
if [ "$verbose" = 1 ]; then
	for f in "$work"/*.serial.log "$blog"; do
		echo "---- $f ----"
		tr -d '\r' <"$f"
	done
fi
if [ "$failed" != 0 ]; then
	e2e_log "work folder kept: $work (broker log, serial logs, QEMU stderr)"
	echo "---- last 30 lines of the broker log ----"
	tail -n 30 "$blog"
	exit 1
fi
if [ "$keep" = 1 ]; then e2e_log "work folder kept: $work"; else rm -rf "$work"; fi
