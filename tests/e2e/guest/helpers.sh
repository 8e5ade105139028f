# shellcheck shell=sh
# Helpers for test scripts inside the e2e guest (busybox sh). Sourced by /init and before
# /etc/e2e/test.sh, so a test script can call:
#   e2e_test NAME CMD [ARG...]   run CMD, print BEGIN/RESULT markers with pass/fail and seconds
#   e2e_skip NAME REASON         report NAME as skipped
#   e2e_result NAME pass|fail|skip SECONDS
# Names: letters, digits and . _ : / - (no spaces). Commands run with stdin from /dev/null.
# BUFBROKER_TEST_TIMEOUT=N (kernel command line) kills a test command after N seconds (not a
# shell function: those run without it; the host-side --timeout still applies).

# Centiseconds since boot.
e2e_uptime_cs() {
	read -r e2e_up _ </proc/uptime
	echo "${e2e_up%.*}${e2e_up#*.}" | sed 's/^0*\([0-9]\)/\1/'
}

e2e_result() {
	[ "$2" = fail ] && : >/tmp/e2e-failed
	echo "BUFBROKER-RESULT $1 $2 $3"
}

e2e_skip() {
	echo "e2e: skip $1: $2"
	e2e_result "$1" skip 0.00
}

e2e_test() {
	e2e_name=$1
	shift
	echo "BUFBROKER-BEGIN $e2e_name"
	e2e_t0=$(e2e_uptime_cs)
	if [ -n "${BUFBROKER_TEST_TIMEOUT:-}" ] && ! type "$1" 2>/dev/null | grep -q function; then
		timeout -s KILL "$BUFBROKER_TEST_TIMEOUT" "$@" </dev/null
	else
		"$@" </dev/null
	fi
	e2e_rc=$?
	e2e_dt=$(($(e2e_uptime_cs) - e2e_t0))
	e2e_secs=$(printf '%d.%02d' $((e2e_dt / 100)) $((e2e_dt % 100)))
	if [ "$e2e_rc" = 0 ]; then
		e2e_result "$e2e_name" pass "$e2e_secs"
	else
		echo "e2e: $e2e_name exited with status $e2e_rc"
		e2e_result "$e2e_name" fail "$e2e_secs"
	fi
	return 0
}

# Load the modules listed (paths under /lib/modules/$(uname -r), dependencies first).
e2e_load_modules() {
	e2e_ok=0
	while read -r e2e_mod; do
		[ -n "$e2e_mod" ] || continue
		insmod "/lib/modules/$(uname -r)/$e2e_mod" || {
			echo "e2e: insmod $e2e_mod failed"
			e2e_ok=1
		}
	done <"$1"
	return $e2e_ok
}

# e2e_libtest PREFIX BIN [FILTER...]: run every test of a Rust libtest binary (a statically
# linked `cargo test` executable) in its own process, one result line "PREFIX::test_name" each;
# #[ignore] tests are reported as skipped. A crash or hang (BUFBROKER_TEST_TIMEOUT) fails only
# that test. FILTERs are passed to libtest's --list, as to the test binary itself.
e2e_libtest() {
	e2e_prefix=$1
	e2e_bin=$2
	shift 2
	if ! "$e2e_bin" --list --format terse "$@" >/tmp/e2e-libtest-all </dev/null ||
		! "$e2e_bin" --list --format terse --ignored "$@" >/tmp/e2e-libtest-ignored </dev/null; then
		echo "e2e: $e2e_bin --list failed"
		e2e_result "$e2e_prefix" fail 0.00
		return 0
	fi
	sed -n 's/: test$//p' /tmp/e2e-libtest-all >/tmp/e2e-libtest-names
	if [ ! -s /tmp/e2e-libtest-names ]; then
		echo "e2e: $e2e_bin lists no test"
		e2e_result "$e2e_prefix" fail 0.00
		return 0
	fi
	while read -r e2e_t; do
		if grep -qxF "$e2e_t: test" /tmp/e2e-libtest-ignored; then
			e2e_skip "$e2e_prefix::$e2e_t" "#[ignore]"
		else
			e2e_test "$e2e_prefix::$e2e_t" "$e2e_bin" --exact "$e2e_t" --test-threads=1 --quiet </dev/null
		fi
	done </tmp/e2e-libtest-names
}
