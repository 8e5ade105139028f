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
