package qmp

import (
	"errors"
	"syscall"
)

// PeerPID returns the process id of the QMP server at the other end of a
// unix socket connection (SO_PEERCRED): which qemu answers, whatever
// process holds the socket's path now.
func (c *Conn) PeerPID() (int, error) {
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return 0, errors.New("qmp: the connection is not a socket")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *syscall.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, serr
	}
	if cred.Pid <= 0 {
		return 0, errors.New("qmp: the peer's process id is unknown")
	}
	return int(cred.Pid), nil
}
