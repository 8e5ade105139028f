#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Download and unpack what the real-kernel end-to-end runner needs, pinned by versions.env:
#   - QEMU 11.1.x (trixie-backports) with its runtime closure, started through its own ld.so;
#   - Debian trixie's 6.12 kernel: vmlinuz, vmlinux (unpacked ELF), config, modules tree with a
#     generated modules.dep (so an initramfs can carry vfio, vfio_pci, vfio_iommu_type1);
#   - busybox-static.
# Nothing outside the cache changes: apt runs with a private configuration (own sources, lists,
# archive cache and an empty dpkg status), packages are unpacked with dpkg -x, no root needed.
#
# Cache: ${BUFBROKER_CACHE:-$HOME/.cache/bufbroker}/e2e (refused if inside the checkout).
# Idempotent: with a warm cache matching versions.env it only checks files and prints them,
# without touching the network.
#
# Usage: prepare.sh [--force] [--quiet]
#   --force   re-resolve and re-unpack even if the cache is complete
#   --quiet   print only warnings and errors
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=versions.env
. "$E2E_DIR/versions.env"

force=0
quiet=0
for arg in "$@"; do
	case "$arg" in
	--force) force=1 ;;
	--quiet) quiet=1 ;;
	-h | --help)
		sed -n '3,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*) e2e_die "unknown argument: $arg (try --help)" ;;
	esac
done

say() { [ "$quiet" = 1 ] || e2e_log "$@"; }

CACHE=$(e2e_cache_dir)
PINS_SHA256=$(sha256sum <"$E2E_DIR/versions.env" | cut -d' ' -f1)
CURRENT=$CACHE/current.env

# One prepare at a time per cache (several worktrees may share it).
exec 9>"$CACHE/.lock"
flock 9

# summary [--no-warnings]: print what the cache holds (from current.env) and repeat any
# fallback warning recorded when it was prepared.
summary() {
	# shellcheck source=/dev/null
	. "$CURRENT"
	local w
	if [ "${1:-}" != --no-warnings ]; then
		while IFS= read -r w; do
			[ -n "$w" ] && e2e_warn "$w"
		done <<<"${E2E_FALLBACK_WARNINGS:-}"
	fi
	[ "$quiet" = 1 ] && return 0
	cat >&2 <<EOF
e2e: cache       $CACHE
e2e: qemu        $E2E_QEMU_VERSION  $E2E_QEMU
e2e: kernel      $E2E_KERNEL_PACKAGE $E2E_KERNEL_VERSION  (uname -r $E2E_KVER)
e2e:   vmlinuz   $E2E_VMLINUZ
e2e:   vmlinux   $E2E_VMLINUX
e2e:   modules   $E2E_MODULES_DIR
e2e: busybox     $E2E_BUSYBOX_VERSION  $E2E_BUSYBOX
EOF
}

# Is the cache complete for the current pins? (No network, no hashing: near-instant.)
warm() {
	[ -f "$CURRENT" ] || return 1
	(
		# shellcheck source=/dev/null
		. "$CURRENT"
		[ "${E2E_PINS_SHA256:-}" = "$PINS_SHA256" ] || exit 1
		for f in "$E2E_QEMU" "$E2E_VMLINUZ" "$E2E_VMLINUX" "$E2E_MODULES_DIR/modules.dep" "$E2E_BUSYBOX"; do
			[ -e "$f" ] || exit 1
		done
	)
}

if [ "$force" = 0 ] && warm; then
	summary
	exit 0
fi

t_start=$(e2e_now)
for tool in apt-get apt-cache dpkg dpkg-deb python3 sha256sum flock; do
	command -v "$tool" >/dev/null || e2e_die "needs $tool (a Debian host with python3)"
done
[ -r "$E2E_DEBIAN_KEYRING" ] || e2e_die "keyring $E2E_DEBIAN_KEYRING missing (package debian-archive-keyring)"

# --- private apt configuration -------------------------------------------------------------
APT=$CACHE/apt
mkdir -p "$APT/lists/partial" "$APT/archives/partial" "$APT/debs"
: >"$APT/status"
{
	for suite in $E2E_DEBIAN_SUITES; do
		echo "deb [signed-by=$E2E_DEBIAN_KEYRING] $E2E_DEBIAN_MIRROR $suite main"
	done
} >"$APT/sources.list"
cat >"$APT/apt.conf" <<EOF
Dir::Etc::SourceList "$APT/sources.list";
Dir::Etc::SourceParts "/dev/null";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "/dev/null";
Dir::Etc::Parts "/dev/null";
Dir::State "$APT";
Dir::State::Lists "$APT/lists";
Dir::State::status "$APT/status";
Dir::Cache "$APT";
Dir::Cache::archives "$APT/archives";
Debug::NoLocking "1";
APT::Install-Recommends "0";
APT::Install-Suggests "0";
APT::Sandbox::User "root";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
Acquire::AllowInsecureRepositories "0";
Acquire::Languages "none";
EOF
export APT_CONFIG=$APT/apt.conf

say "apt-get update (private config $APT/apt.conf)"
apt-get -q=2 update >"$APT/update.log" 2>&1 || {
	cat "$APT/update.log" >&2
	e2e_die "apt-get update failed"
}

# versions_in_suite PKG SUITE: versions of PKG that SUITE offers, one per line.
versions_in_suite() {
	apt-cache madison "$1" 2>/dev/null |
		awk -F'|' -v p="$1" -v s=" $2/" '{ gsub(/ /, "", $1); gsub(/ /, "", $2) } $1 == p && index($3, s) { print $2 }'
}
# newest: the highest Debian version among stdin lines.
newest() {
	local best="" v
	while IFS= read -r v; do
		if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then best=$v; fi
	done
	printf '%s\n' "$best"
}
# index_sha256 PKG VERSION: the SHA256 the signed index gives for that .deb.
index_sha256() {
	apt-cache show "$1=$2" 2>/dev/null | awk '/^SHA256:/ { print $2; exit }'
}

FALLBACK_WARNINGS=""
fallback() {
	local msg="$1"
	e2e_warn "$msg"
	FALLBACK_WARNINGS+="$msg"$'\n'
}

# resolve VAR PKG PINNED SERIES SUITE: set VAR to the version to use (pinned, or the newest of
# the series with a warning).
resolve() {
	local var=$1 pkg=$2 pinned=$3 series=$4 suite=$5 offered chosen
	offered=$(versions_in_suite "$pkg" "$suite")
	if grep -qxF -- "$pinned" <<<"$offered"; then
		printf -v "$var" '%s' "$pinned"
		return
	fi
	chosen=$(grep -E -- "$series" <<<"$offered" | newest)
	[ -n "$chosen" ] || e2e_die "$pkg: neither the pinned $pinned nor any version matching $series is offered by $suite"
	fallback "$pkg $pinned is no longer offered by $suite; using the newest of the series, $chosen (checked against the signed index only). Update versions.env."
	printf -v "$var" '%s' "$chosen"
}

resolve QEMU_USE qemu-system-x86 "$QEMU_VERSION" "$QEMU_SERIES" "$QEMU_SUITE"
resolve BUSYBOX_USE "$BUSYBOX_PACKAGE" "$BUSYBOX_VERSION" "$BUSYBOX_SERIES" "$BUSYBOX_SUITE"

# The kernel's ABI is part of its package name: the series is a pattern on names.
if grep -qxF -- "$KERNEL_VERSION" <<<"$(versions_in_suite "$KERNEL_PACKAGE" "$KERNEL_SUITE")"; then
	KERNEL_PKG_USE=$KERNEL_PACKAGE
	KERNEL_USE=$KERNEL_VERSION
else
	KERNEL_PKG_USE="" KERNEL_USE=""
	while IFS= read -r name; do
		v=$(versions_in_suite "$name" "$KERNEL_SUITE" | newest)
		[ -n "$v" ] || continue
		if [ -z "$KERNEL_USE" ] || dpkg --compare-versions "$v" gt "$KERNEL_USE"; then
			KERNEL_PKG_USE=$name KERNEL_USE=$v
		fi
	done < <(apt-cache pkgnames linux-image- | grep -E -- "$KERNEL_SERIES" | sort)
	[ -n "$KERNEL_USE" ] || e2e_die "no kernel package matching $KERNEL_SERIES in $KERNEL_SUITE"
	fallback "$KERNEL_PACKAGE $KERNEL_VERSION is no longer offered by $KERNEL_SUITE; using the newest of the series, $KERNEL_PKG_USE $KERNEL_USE (checked against the signed index only). Update versions.env."
fi

# --- download and verify ------------------------------------------------------------------------
# deb_file DIR PKG VERSION: the downloaded .deb of exactly PKG=VERSION in DIR.
deb_file() {
	local f
	for f in "$1/$2"_*.deb; do
		[ -e "$f" ] || continue
		if [ "$(dpkg-deb -f "$f" Package)" = "$2" ] && [ "$(dpkg-deb -f "$f" Version)" = "$3" ]; then
			printf '%s\n' "$f"
			return 0
		fi
	done
	return 1
}

# verify FILE PKG VERSION PINNED_VERSION PINNED_SHA256
verify() {
	local file=$1 pkg=$2 ver=$3 pinned_ver=$4 pinned_sha=$5 actual expected
	actual=$(sha256sum "$file" | cut -d' ' -f1)
	if [ "$ver" = "$pinned_ver" ]; then
		expected=$pinned_sha
		[ "$actual" = "$expected" ] || e2e_die "$file: sha256 $actual, but versions.env pins $expected for $pkg $ver"
	else
		expected=$(index_sha256 "$pkg" "$ver")
		if [ -z "$expected" ] || [ "$actual" != "$expected" ]; then
			e2e_die "$file: sha256 $actual does not match the signed index (${expected:-none found})"
		fi
		e2e_warn "new pin for versions.env: $pkg $ver sha256 $actual"
	fi
}

# download_one PKG VERSION: apt-get download into $APT/debs (skipped if already there).
download_one() {
	local f
	if f=$(deb_file "$APT/debs" "$1" "$2"); then
		printf '%s\n' "$f"
		return
	fi
	say "downloading $1 $2"
	(cd "$APT/debs" && apt-get -q=2 download "$1=$2") >&2 || e2e_die "apt-get download $1=$2 failed"
	deb_file "$APT/debs" "$1" "$2" || e2e_die "apt-get download $1=$2 left no .deb"
}

KERNEL_DEB=$(download_one "$KERNEL_PKG_USE" "$KERNEL_USE")
verify "$KERNEL_DEB" "$KERNEL_PKG_USE" "$KERNEL_USE" "$KERNEL_VERSION" "$KERNEL_SHA256"
BUSYBOX_DEB=$(download_one "$BUSYBOX_PACKAGE" "$BUSYBOX_USE")
verify "$BUSYBOX_DEB" "$BUSYBOX_PACKAGE" "$BUSYBOX_USE" "$BUSYBOX_VERSION" "$BUSYBOX_SHA256"

# QEMU and its run-time closure: an empty dpkg status makes apt resolve all of it.
qemu_req=("qemu-system-x86=$QEMU_USE" "qemu-system-data=$QEMU_USE")
mapfile -t QEMU_CLOSURE < <(apt-get -s -q=2 -t "$QEMU_SUITE" install "${qemu_req[@]}" |
	awk '$1 == "Inst" { v = $3; gsub(/^\(/, "", v); print $2 "=" v }' | sort)
[ "${#QEMU_CLOSURE[@]}" -gt 0 ] || e2e_die "apt could not resolve ${qemu_req[*]}"
say "downloading QEMU $QEMU_USE and its closure (${#QEMU_CLOSURE[@]} packages)"
apt-get -q=2 -y -t "$QEMU_SUITE" install --download-only "${qemu_req[@]}" >&2 ||
	e2e_die "apt-get install --download-only ${qemu_req[*]} failed"
QEMU_DEBS=()
for pv in "${QEMU_CLOSURE[@]}"; do
	f=$(deb_file "$APT/archives" "${pv%%=*}" "${pv#*=}") || e2e_die "missing .deb for $pv after download"
	QEMU_DEBS+=("$f")
done
verify "$(deb_file "$APT/archives" qemu-system-x86 "$QEMU_USE")" qemu-system-x86 "$QEMU_USE" "$QEMU_VERSION" "$QEMU_SYSTEM_X86_SHA256"
verify "$(deb_file "$APT/archives" qemu-system-data "$QEMU_USE")" qemu-system-data "$QEMU_USE" "$QEMU_VERSION" "$QEMU_SYSTEM_DATA_SHA256"

# --- unpack ---------------------------------------------------------------------------------------
unpack() { dpkg-deb -x "$1" "$2" || e2e_die "dpkg-deb -x $1 failed"; }
slug() { printf '%s\n' "${1//:/_}"; }

# Each product is built in a temporary folder and renamed into place, so an interrupted run
# leaves no half-made product behind.
stage() { mktemp -d "$CACHE/.stage.XXXXXX"; }
rm -rf "$CACHE"/.stage.*

QEMU_DIR=$CACHE/qemu-$(slug "$QEMU_USE")
if [ ! -x "$QEMU_DIR/bin/qemu-system-x86_64" ]; then
	say "unpacking QEMU into $QEMU_DIR"
	s=$(stage)
	mkdir -p "$s/root" "$s/bin"
	for f in "${QEMU_DEBS[@]}"; do unpack "$f" "$s/root"; done
	printf '%s\n' "${QEMU_CLOSURE[@]}" >"$s/packages.txt"
	cat >"$s/bin/qemu-system-x86_64" <<'EOF'
#!/bin/sh
# QEMU from Debian .debs unpacked by tests/e2e/prepare.sh, started through the unpacked dynamic
# loader. -L is needed: run via ld.so, QEMU cannot find its data directory from /proc/self/exe.
R=$(cd "$(dirname "$0")/.." && pwd)/root
L=$R/usr/lib/x86_64-linux-gnu
export QEMU_MODULE_DIR="$L/qemu"
exec "$R/usr/lib64/ld-linux-x86-64.so.2" --library-path "$L" "$R/usr/bin/qemu-system-x86_64" \
	-L "$R/usr/share/qemu" -L "$R/usr/share/seabios" "$@"
EOF
	chmod +x "$s/bin/qemu-system-x86_64"
	"$s/bin/qemu-system-x86_64" --version | grep -q 'QEMU emulator version' ||
		e2e_die "unpacked QEMU does not start"
	rm -rf "$QEMU_DIR"
	mv "$s" "$QEMU_DIR"
fi

KERNEL_DIR=$CACHE/kernel-$(slug "$KERNEL_PKG_USE")_$(slug "$KERNEL_USE")
if [ ! -f "$KERNEL_DIR/vmlinux" ] || [ ! -f "$KERNEL_DIR/kver" ]; then
	say "unpacking the kernel into $KERNEL_DIR"
	s=$(stage)
	unpack "$KERNEL_DEB" "$s/deb"
	vmlinuz=$(find "$s/deb/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n1)
	[ -n "$vmlinuz" ] || e2e_die "$KERNEL_DEB has no boot/vmlinuz-*"
	kver=${vmlinuz##*/vmlinuz-}
	mods=""
	for d in "$s/deb/usr/lib/modules/$kver" "$s/deb/lib/modules/$kver"; do
		[ -d "$d" ] && mods=$d && break
	done
	[ -n "$mods" ] || e2e_die "$KERNEL_DEB has no modules for $kver"
	mkdir -p "$s/out/lib/modules"
	mv "$vmlinuz" "$s/out/vmlinuz"
	mv "$s/deb/boot/config-$kver" "$s/out/config"
	mv "$mods" "$s/out/lib/modules/$kver"
	rm -rf "$s/deb"
	say "generating modules.dep for $kver"
	python3 "$E2E_DIR/e2e_tool.py" depmod "$s/out/lib/modules/$kver" >/dev/null
	python3 "$E2E_DIR/e2e_tool.py" extract-vmlinux "$s/out/vmlinuz" "$s/out/vmlinux"
	printf '%s\n' "$kver" >"$s/out/kver"
	rm -rf "$KERNEL_DIR"
	mv "$s/out" "$KERNEL_DIR"
	rmdir "$s"
fi
KVER=$(cat "$KERNEL_DIR/kver")

BUSYBOX_DIR=$CACHE/busybox-$(slug "$BUSYBOX_USE")
if [ ! -x "$BUSYBOX_DIR/busybox" ]; then
	say "unpacking busybox into $BUSYBOX_DIR"
	s=$(stage)
	unpack "$BUSYBOX_DEB" "$s/deb"
	bb=""
	for f in "$s/deb/usr/bin/busybox" "$s/deb/bin/busybox"; do
		[ -f "$f" ] && bb=$f && break
	done
	[ -n "$bb" ] || e2e_die "$BUSYBOX_DEB has no busybox binary"
	mkdir -p "$s/out"
	mv "$bb" "$s/out/busybox"
	rm -rf "$s/deb"
	rm -rf "$BUSYBOX_DIR"
	mv "$s/out" "$BUSYBOX_DIR"
	rmdir "$s"
fi

# --- record what was resolved ----------------------------------------------------------------------
tmp=$CURRENT.tmp
{
	echo "# Written by tests/e2e/prepare.sh; sourced by the other tests/e2e scripts."
	printf 'E2E_PINS_SHA256=%q\n' "$PINS_SHA256"
	printf 'E2E_CACHE=%q\n' "$CACHE"
	printf 'E2E_QEMU=%q\n' "$QEMU_DIR/bin/qemu-system-x86_64"
	printf 'E2E_QEMU_VERSION=%q\n' "$QEMU_USE"
	printf 'E2E_KERNEL_PACKAGE=%q\n' "$KERNEL_PKG_USE"
	printf 'E2E_KERNEL_VERSION=%q\n' "$KERNEL_USE"
	printf 'E2E_KVER=%q\n' "$KVER"
	printf 'E2E_VMLINUZ=%q\n' "$KERNEL_DIR/vmlinuz"
	printf 'E2E_VMLINUX=%q\n' "$KERNEL_DIR/vmlinux"
	printf 'E2E_KERNEL_CONFIG=%q\n' "$KERNEL_DIR/config"
	printf 'E2E_MODULES_DIR=%q\n' "$KERNEL_DIR/lib/modules/$KVER"
	printf 'E2E_BUSYBOX=%q\n' "$BUSYBOX_DIR/busybox"
	printf 'E2E_BUSYBOX_VERSION=%q\n' "$BUSYBOX_USE"
	printf 'E2E_FALLBACK_WARNINGS=%q\n' "${FALLBACK_WARNINGS%$'\n'}"
} >"$tmp"
mv "$tmp" "$CURRENT"

say "prepared in $(e2e_elapsed "$t_start") s"
summary --no-warnings # the warnings were printed above
