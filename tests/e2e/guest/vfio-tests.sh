# shellcheck shell=sh
# In-guest part of tests/e2e/vfio-tests.sh: bufbroker-vfio against QEMU's edu device behind
# the emulated Intel IOMMU. The device must exist here: a test that would skip fails.

export BUFBROKER_REQUIRE_DEVICES=1
e2e_test modprobe-vfio-pci modprobe vfio-pci
e2e_test modprobe-vfio-iommu-type1 modprobe vfio_iommu_type1

# Prints the recorded DeviceInfo and derived participant (--nocapture) into the serial log.
e2e_test vfio::edu_info_derives_28_bit_constraints \
	/bin/vfio-tests --exact edu_info_derives_28_bit_constraints --nocapture
e2e_libtest vfio /bin/vfio-tests --skip edu_info_derives_28_bit_constraints --skip dma_limit
# The broker with edu as a named participant, a local-socket client, edu's DMA engine.
e2e_libtest broker-vfio /bin/broker-vfio-tests --skip dma_limit

# The DMA mapping limit, with room for 4 mappings per container (read when a container gets
# its IOMMU, so it applies to the containers the tests open next).
limit=/sys/module/vfio_iommu_type1/parameters/dma_entry_limit
e2e_test set-dma-entry-limit sh -c "echo 4 >$limit"
e2e_libtest vfio-limit4 /bin/vfio-tests dma_limit
e2e_libtest broker-vfio-limit4 /bin/broker-vfio-tests dma_limit
