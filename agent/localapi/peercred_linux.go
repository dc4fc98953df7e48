package localapi

import (
	"net"
	"syscall"
)

// peerUID is the user id of the process at the other end of a Unix
// socket, as the kernel recorded it at connect (SO_PEERCRED); -1 when it
// cannot be told.
func peerUID(c net.Conn) int64 {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return -1
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return -1
	}
	uid := int64(-1)
	raw.Control(func(fd uintptr) {
		if cred, err := syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED); err == nil {
			uid = int64(cred.Uid)
		}
	})
	return uid
}
