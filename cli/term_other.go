//go:build !linux

package cli

// isTerminalFd reports false: progress is shown as plain lines.
func isTerminalFd(uintptr) bool { return false }
