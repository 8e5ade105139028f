# shellcheck shell=bash
# Helpers shared by the tests/e2e scripts. Source it; it defines functions and E2E_DIR only.

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E_REPO_ROOT=$(cd "$E2E_DIR/../.." && pwd)

e2e_log() { printf 'e2e: %s\n' "$*" >&2; }
e2e_warn() { printf 'e2e: WARNING: %s\n' "$*" >&2; }
e2e_die() {
	printf 'e2e: error: %s\n' "$*" >&2
	exit 1
}

# Seconds since the epoch with millisecond resolution, for measurements.
e2e_now() { date +%s.%3N; }
# e2e_elapsed START -> seconds since START with two decimals.
e2e_elapsed() { awk -v a="$1" -v b="$(e2e_now)" 'BEGIN { printf "%.2f", b - a }'; }

# The runner's cache: ${BUFBROKER_CACHE:-$HOME/.cache/bufbroker}/e2e, never inside the checkout.
e2e_cache_dir() {
	local base=${BUFBROKER_CACHE:-${HOME:?HOME is not set}/.cache/bufbroker}
	mkdir -p "$base/e2e"
	local dir
	dir=$(cd "$base/e2e" && pwd -P)
	local root
	root=$(cd "$E2E_REPO_ROOT" && pwd -P)
	case "$dir/" in
	"$root"/*) e2e_die "cache $dir is inside the checkout $root; set BUFBROKER_CACHE elsewhere" ;;
	esac
	printf '%s\n' "$dir"
}

# Load what prepare.sh resolved (paths to QEMU, kernel, modules, busybox) into the environment.
e2e_load_prepared() {
	local cache
	cache=$(e2e_cache_dir)
	[ -f "$cache/current.env" ] || e2e_die "nothing prepared in $cache; run $E2E_DIR/prepare.sh first"
	# shellcheck source=/dev/null
	. "$cache/current.env"
	if [ "${E2E_PINS_SHA256:-}" != "$(sha256sum <"$E2E_DIR/versions.env" | cut -d' ' -f1)" ]; then
		e2e_die "versions.env changed since the last prepare; run $E2E_DIR/prepare.sh"
	fi
}

# e2e_parse_args DEFAULT_TIMEOUT "$@": the options every guest-test script takes
# (--verbose, --timeout SECS, --out DIR, --help). Sets `verbose_args` (for run-guest.sh),
# `timeout_s` and `out`. --help prints the calling script's header comment.
# shellcheck disable=SC2034 # verbose_args, timeout_s and out are for the calling script
e2e_parse_args() {
	timeout_s=$1
	shift
	verbose_args=() out=""
	while [ $# -gt 0 ]; do
		case "$1" in
		--verbose) verbose_args=(--verbose) ;;
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
}

# e2e_out_dir NAME: makes `out` (a new temporary folder when --out was not given) and sets
# `cleanup_out` (1: remove it after a passing run).
e2e_out_dir() {
	if [ -z "$out" ]; then
		out=$(mktemp -d "${TMPDIR:-/tmp}/bufbroker-e2e-$1.XXXXXX")
		cleanup_out=1
	else
		mkdir -p "$out"
		cleanup_out=0
	fi
}

# e2e_finish STATUS: removes `out` after a passing run that made it, else says where it is;
# exits with STATUS.
e2e_finish() {
	if [ "$1" = 0 ] && [ "$cleanup_out" = 1 ]; then
		rm -rf "$out"
	else
		e2e_log "initramfs and serial log kept in $out"
	fi
	exit "$1"
}

# e2e_static_test_bin CARGO-TEST-ARGS...: builds `cargo test ARGS --no-run` statically linked
# (for the initramfs) and prints the test executable's path. The static builds share a target
# folder in the cache ($BUFBROKER_STATIC_TARGET overrides it): static linking changes RUSTFLAGS,
# which would otherwise rebuild the normal debug build every time. Cargo records workspace
# paths relatively, so two checkouts (git worktrees) building into one folder at the same time
# can link each other's crates: give each its own folder then.
e2e_static_test_bin() {
	RUSTFLAGS="-C target-feature=+crt-static" cargo test --quiet --locked "$@" \
		--no-run --message-format=json --target x86_64-unknown-linux-gnu \
		--manifest-path "$E2E_REPO_ROOT/Cargo.toml" \
		--target-dir "${BUFBROKER_STATIC_TARGET:-$E2E_CACHE/target-static}" |
		python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])'
}
