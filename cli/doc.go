// Package cli is the qchain command line: it parses flags, calls the
// library packages and prints human or JSON output. It holds no format or
// protocol logic of its own.
package cli
