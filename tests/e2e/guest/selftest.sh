# shellcheck shell=sh
# In-guest part of tests/e2e/selftest.sh: proves the kernel offers what the broker's heap and
# VFIO tests need, and that a static Rust binary runs. Run by /init with guest/helpers.sh.

e2e_test dev-udmabuf test -c /dev/udmabuf
e2e_test dev-dma-heap-system test -c /dev/dma_heap/system

e2e_test modprobe-vfio-pci modprobe vfio-pci
e2e_test modprobe-vfio-iommu-type1 modprobe vfio_iommu_type1

# Bind QEMU's edu device (1234:11e8) to vfio-pci behind the emulated IOMMU: its IOMMU group
# must appear as /dev/vfio/N.
bind_edu() {
	for d in /sys/bus/pci/devices/*; do
		if [ "$(cat "$d/vendor")" != 0x1234 ] || [ "$(cat "$d/device")" != 0x11e8 ]; then
			continue
		fi
		group=$(basename "$(readlink "$d/iommu_group")") || return 1
		echo vfio-pci >"$d/driver_override" || return 1
		echo "${d##*/}" >/sys/bus/pci/drivers_probe || return 1
		echo "edu ${d##*/}: driver $(basename "$(readlink "$d/driver")"), iommu group $group"
		test -c "/dev/vfio/$group"
		return
	done
	echo "no edu device (1234:11e8) found"
	return 1
}
e2e_test vfio-bind-edu bind_edu

e2e_test rust-static-probe /bin/bufbroker-e2e-probe

# The probe's own #[test]s, from a static `cargo test` binary: one result per test.
e2e_libtest probe-tests /bin/probe-tests
