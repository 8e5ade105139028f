# shellcheck shell=sh
# In-guest part of tests/e2e/heap-tests.sh: the broker's heap tests against the real kernel.
# Devices must exist here: a test that would skip for a missing device fails.

export BUFBROKER_REQUIRE_DEVICES=1
e2e_test dev-udmabuf test -c /dev/udmabuf
e2e_test dev-dma-heap-system test -c /dev/dma_heap/system
e2e_libtest broker /bin/broker-tests heap::
