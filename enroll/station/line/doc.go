// Package line is the factory station: it watches N serial slots, programs
// every board that arrives on one (through enroll/station/jig, one
// goroutine per slot, all sharing one issuer), and reports what happens as
// live terminal lines, JSON events, a web page with server-sent events and
// Prometheus metrics. A fault on one slot (a dead board, a panic, a
// refusal) ends that slot's run only.
//
// A slot is a serial port given by path or by a glob, relative to the
// station's serial directory (/dev/serial, where udev keeps by-id and
// by-path links). A board arrives when its slot's path appears (or points
// at a different device) and leaves when it disappears; the station
// notices through kernel/udev uevents (netlink) where it can, and by a
// periodic scan in any case. A board that stays plugged after its run is
// not programmed again until it leaves and comes back.
//
// docs/station.md describes the configuration, the events and the page.
package line
