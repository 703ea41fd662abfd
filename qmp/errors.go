package qmp

import (
	"errors"
	"fmt"
)

// Sentinel errors callers branch on with errors.Is. Each is wrapped with
// the cause and the names involved.
var (
	// ErrClosed reports that the connection is closed: by Disconnect, by the
	// peer, or by a protocol failure. Every call still waiting when the
	// connection closes fails with an error that wraps both ErrClosed and the
	// cause (for example io.EOF).
	ErrClosed = errors.New("qmp: connection closed")

	// ErrDisconnected is the cause recorded when the connection was closed
	// by Disconnect (or Close) on this side.
	ErrDisconnected = errors.New("disconnected by client")

	// ErrProtocol reports a peer that does not speak QMP as expected: a
	// missing greeting, a line that is not a JSON object, or a reply that is
	// neither a return nor an error.
	ErrProtocol = errors.New("qmp: protocol error")

	// ErrNotReady reports a monitor that sent an event before its greeting,
	// or (from Dial) left a handshake unanswered: QEMU is still starting
	// and has not set the connection up. Dial connects again; callers of
	// ConnectContext may do the same.
	ErrNotReady = errors.New("qmp: monitor not ready")

	// ErrLineTooLong reports a reply or event line longer than
	// Options.MaxLineSize. The connection is closed when it happens, since
	// the rest of the stream cannot be trusted to be in step.
	ErrLineTooLong = errors.New("qmp: line too long")

	// ErrJobAborted reports a job that was cancelled on request (Job.Abort,
	// ReadyCancel, or the context of Wait being cancelled).
	ErrJobAborted = errors.New("qmp: job aborted")

	// ErrNoBinary reports that a QEMU program to run was not found.
	ErrNoBinary = errors.New("qmp: program not found")

	// ErrJobNotFound reports a job id that query-jobs does not list, for
	// example because it was dismissed by someone else.
	ErrJobNotFound = errors.New("qmp: job not found")
)

// Error is an error returned by QEMU (or by the guest agent) in reply to a
// command: {"error": {"class": ..., "desc": ...}}. Callers inspect it with
// errors.As. Class is one of QEMU's ErrorClass names ("GenericError",
// "CommandNotFound", "DeviceNotFound", "DeviceNotActive", "KVMMissingCap").
type Error struct {
	// Command is the name of the command that failed, when known.
	Command string
	// Class is QEMU's error class.
	Class string
	// Desc is QEMU's human-readable description.
	Desc string
}

// Error implements the error interface.
func (e *Error) Error() string {
	if e.Command == "" {
		return fmt.Sprintf("qmp: %s (%s)", e.Desc, e.Class)
	}
	return fmt.Sprintf("qmp: %s: %s (%s)", e.Command, e.Desc, e.Class)
}

// Error classes QEMU uses (qapi/error.json).
const (
	ClassGenericError    = "GenericError"
	ClassCommandNotFound = "CommandNotFound"
	ClassDeviceNotActive = "DeviceNotActive"
	ClassDeviceNotFound  = "DeviceNotFound"
	ClassKVMMissingCap   = "KVMMissingCap"
)

// IsClass reports whether err is (or wraps) an *Error of the given class.
func IsClass(err error, class string) bool {
	var qe *Error
	return errors.As(err, &qe) && qe.Class == class
}

// JobError is the error a job concluded with, as query-jobs reports it.
type JobError struct {
	// ID is the job id.
	ID string
	// Type is the job type ("commit", "stream", "mirror", "create", ...).
	Type string
	// Msg is QEMU's error text from query-jobs.
	Msg string
}

// Error implements the error interface.
func (e *JobError) Error() string {
	return fmt.Sprintf("qmp: %s job %s failed: %s", e.Type, e.ID, e.Msg)
}
