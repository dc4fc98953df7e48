package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// configureNet brings lo and ifname up, gives ifname the address and adds a
// default route, over raw rtnetlink (the kernel has no ip= autoconfig and the
// image carries no ip(8)).
func configureNet(ifname, cidr, gw string) error {
	prefix, err := netip.ParsePrefix(cidr)
	if err != nil || !prefix.Addr().Is4() {
		return fmt.Errorf("devid.ip=%q: want an IPv4 address/prefix such as 10.0.2.15/24", cidr)
	}
	var gwAddr netip.Addr
	if gw != "" {
		if gwAddr, err = netip.ParseAddr(gw); err != nil || !gwAddr.Is4() {
			return fmt.Errorf("devid.gw=%q: want an IPv4 address", gw)
		}
	}
	// virtio_net registers eth0 shortly after the module loads.
	var ifi *net.Interface
	deadline := time.Now().Add(5 * time.Second)
	for {
		if ifi, err = net.InterfaceByName(ifname); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear: %w", ifname, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	nl, err := newNetlink()
	if err != nil {
		return err
	}
	defer unix.Close(nl.fd)
	if lo, err := net.InterfaceByName("lo"); err == nil {
		if err := nl.linkUp(lo.Index); err != nil {
			return fmt.Errorf("lo up: %w", err)
		}
	}
	if err := nl.addAddr(ifi.Index, prefix); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("address %s on %s: %w", prefix, ifname, err)
	}
	if err := nl.linkUp(ifi.Index); err != nil {
		return fmt.Errorf("%s up: %w", ifname, err)
	}
	if gwAddr.IsValid() {
		if err := nl.addDefaultRoute(ifi.Index, gwAddr); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("default route via %s: %w", gwAddr, err)
		}
	}
	return nil
}

type netlinkConn struct {
	fd  int
	seq uint32
}

func newNetlink() (*netlinkConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	return &netlinkConn{fd: fd}, nil
}

func align4(n int) int { return (n + 3) &^ 3 }

// attr encodes one rtattr.
func attr(typ uint16, data []byte) []byte {
	b := make([]byte, align4(unix.SizeofRtAttr+len(data)))
	binary.NativeEndian.PutUint16(b[0:], uint16(unix.SizeofRtAttr+len(data)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[unix.SizeofRtAttr:], data)
	return b
}

func structBytes[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

// request sends one message and waits for its ACK (an NLMSG_ERROR with errno 0).
func (c *netlinkConn) request(typ uint16, flags uint16, body []byte) error {
	c.seq++
	msg := make([]byte, unix.SizeofNlMsghdr+len(body))
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], typ)
	binary.NativeEndian.PutUint16(msg[6:], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], c.seq)
	copy(msg[unix.SizeofNlMsghdr:], body)
	if err := unix.Sendto(c.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Seq != c.seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			if len(m.Data) < 4 {
				return errors.New("short netlink error message")
			}
			if errno := int32(binary.NativeEndian.Uint32(m.Data[:4])); errno != 0 {
				return unix.Errno(-errno)
			}
			return nil
		}
	}
}

func (c *netlinkConn) linkUp(index int) error {
	ifi := unix.IfInfomsg{Family: unix.AF_UNSPEC, Index: int32(index), Flags: unix.IFF_UP, Change: unix.IFF_UP}
	return c.request(unix.RTM_NEWLINK, 0, structBytes(&ifi))
}

func (c *netlinkConn) addAddr(index int, p netip.Prefix) error {
	ifa := unix.IfAddrmsg{Family: unix.AF_INET, Prefixlen: uint8(p.Bits()), Index: uint32(index)}
	a := p.Addr().As4()
	body := append(append(structBytes(&ifa), attr(unix.IFA_LOCAL, a[:])...), attr(unix.IFA_ADDRESS, a[:])...)
	return c.request(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body)
}

func (c *netlinkConn) addDefaultRoute(index int, gw netip.Addr) error {
	rt := unix.RtMsg{Family: unix.AF_INET, Table: unix.RT_TABLE_MAIN, Protocol: unix.RTPROT_BOOT,
		Scope: unix.RT_SCOPE_UNIVERSE, Type: unix.RTN_UNICAST}
	g := gw.As4()
	oif := make([]byte, 4)
	binary.NativeEndian.PutUint32(oif, uint32(index))
	body := append(append(structBytes(&rt), attr(unix.RTA_GATEWAY, g[:])...), attr(unix.RTA_OIF, oif)...)
	return c.request(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body)
}
