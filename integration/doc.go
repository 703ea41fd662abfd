// Package integration holds the end-to-end tests of the qchain binary
// against the real qemu-img, qemu-io, qemu-storage-daemon and
// qemu-system-x86_64: the same image goes to both, and the parsed JSON,
// exit codes and exported bytes must be equal. The comparisons are in
// jsondiff.go (parsed JSON), rawfiles.go (exported bytes) and
// fingerprint.go (files an operation must not touch); the tests are in
// *_test.go, bench/ is `make bench`.
package integration
