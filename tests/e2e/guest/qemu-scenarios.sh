# shellcheck shell=sh
# Guest side of tests/e2e/qemu-scenarios.sh (run by /init with helpers.sh loaded). The host
# picks the role with E2E_ROLE=... on the kernel command line; /dev/ttyS1 is a serial port the
# host writes "done" into when the guest may go on. The self-test prints the
# BUFBROKER-RESULT markers itself.
st=/bin/bufbroker-guest-selftest
# The broker's device is the first 1af4:1065 (a second one, in scenario b, is the consumer's).
case "${E2E_ROLE:-}" in
share)
	# a + b: negotiate, solve, allocate NV12 1080p in the host window, write the pattern,
	# export and grant it to the host, hold it until the host has checked it, free it, then
	# time the round trips.
	$st --pings 100 --grant "${E2E_GRANTEE:?}" --wait /dev/ttyS1 --bench "${E2E_BENCH:-30}"
	;;
hold)
	# e: hold 3 buffers; exit without freeing (the driver resets the device); then hold 2 and
	# wait for the host to kill QEMU.
	$st --hold 3 --wait /dev/ttyS1 && $st --hold 2 --wait /dev/ttyS1
	;;
smoke)
	$st --pings 10
	;;
bench)
	# a, second broker with arenas: the same round trips, allocations carved from an arena.
	$st --pings 10 --bench "${E2E_BENCH:-30}"
	;;
guestram)
	# c: a buffer of the guest's own pages (Placement::GuestRam).
	$st --guest-ram --grant "${E2E_GRANTEE:?}" --wait /dev/ttyS1
	;;
over)
	# f: allocate until the quota refuses; hold the buffers until the host has checked.
	$st --fill 10 --expect-quota --wait /dev/ttyS1
	;;
under)
	# f: wait until the other VM sits at its quota, then allocate.
	# (The host writes only after this marker: bytes reaching a closed port are lost.)
	exec 3</dev/ttyS1
	echo "BUFBROKER-WAITING /dev/ttyS1"
	read -r _ <&3
	exec 3<&-
	$st --fill 4
	;;
agent)
	# g: bufbroker-guestd owns the device; two self-tests at once through its socket, their
	# result names renamed agent1:/agent2: so the table keeps both.
	sock=/run/bufbroker-guestd.sock
	/bin/bufbroker-guestd --socket $sock >/tmp/guestd.log 2>&1 &
	gpid=$!
	i=0
	while [ ! -S $sock ] && [ $i -lt 300 ] && kill -0 $gpid 2>/dev/null; do
		sleep 0.1
		i=$((i + 1))
	done
	cat /tmp/guestd.log
	$st --socket $sock --pings 10 >/tmp/agent1.log 2>&1 &
	p1=$!
	$st --socket $sock --pings 10 >/tmp/agent2.log 2>&1 &
	p2=$!
	r1=0 r2=0
	wait $p1 || r1=$?
	wait $p2 || r2=$?
	sed 's/BUFBROKER-RESULT guest:/BUFBROKER-RESULT agent1:/' /tmp/agent1.log
	sed 's/BUFBROKER-RESULT guest:/BUFBROKER-RESULT agent2:/' /tmp/agent2.log
	kill $gpid
	wait $gpid || true
	cat /tmp/guestd.log
	[ $r1 = 0 ] && [ $r2 = 0 ]
	;;
*)
	echo "unknown E2E_ROLE '${E2E_ROLE:-}'"
	e2e_result role fail 0
	false
	;;
esac
