#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Checks run-guest.sh's result parser on canned serial logs (no guest is booted): passes,
# failures, a missing BUFBROKER-DONE, a scenario that never finished, markers mixed with kernel
# output and carriage returns, a failing test script, and a log without any result.
# Usage: check-report.sh
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

# case NAME EXPECTED_STATUS EXPECTED_SUMMARY_LINE  (log on stdin)
case_() {
	local name=$1 want_status=$2 want_summary=$3 status=0
	cat >"$work/$name.log"
	"$E2E_DIR/run-guest.sh" --parse "$work/$name.log" >"$work/$name.out" 2>&1 || status=$?
	if [ "$status" != "$want_status" ] || ! grep -qxF -- "$want_summary" "$work/$name.out"; then
		echo "check-report: $name: status $status (want $want_status), output:" >&2
		sed 's/^/    /' "$work/$name.out" >&2
		failures=$((failures + 1))
	fi
}

case_ all-pass 0 "2 passed, 0 failed" <<'LOG'
BUFBROKER-BOOT kernel=6.12 uptime=4.80
BUFBROKER-BEGIN a
BUFBROKER-RESULT a pass 0.10
BUFBROKER-BEGIN b
BUFBROKER-RESULT b pass 1.25
BUFBROKER-DONE 0
LOG

case_ one-fail 1 "1 passed, 1 failed, 1 skipped" <<'LOG'
BUFBROKER-RESULT a pass 0.10
BUFBROKER-RESULT b fail 0.20
BUFBROKER-RESULT c skip 0.00
BUFBROKER-DONE 0
LOG

case_ no-done 1 "1 passed, 1 failed" <<'LOG'
BUFBROKER-BEGIN a
BUFBROKER-RESULT a pass 0.10
BUFBROKER-BEGIN hangs
[   60.000000] watchdog: BUG: soft lockup
LOG

case_ interleaved 0 "2 passed, 0 failed" < <(printf '%s\r\n' \
	'BUFBROKER-BEGIN a' \
	'[    5.1] vfio-pci 0000:00:01.0: enabling deviceBUFBROKER-RESULT a pass 0.30' \
	'BUFBROKER-RESULT b pass 0.01[    5.2] random kernel line' \
	'BUFBROKER-DONE 0')

case_ script-failed 1 "1 passed, 1 failed" <<'LOG'
BUFBROKER-RESULT a pass 0.10
BUFBROKER-RESULT test-script fail 0
BUFBROKER-DONE 2
LOG

case_ nothing-ran 1 "0 passed, 0 failed" <<'LOG'
BUFBROKER-DONE 0
LOG

if [ "$failures" != 0 ]; then
	e2e_die "check-report: $failures case(s) failed"
fi
e2e_log "check-report: 6 parser cases ok"
