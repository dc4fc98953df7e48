//go:build !linux

package line

import "fmt"

// watchUevents: without netlink only the periodic scan finds boards.
func watchUevents(mode string) (<-chan struct{}, func(), error) {
	if mode == WatchNetlink {
		return nil, nil, fmt.Errorf("watch = %q: uevents are a Linux facility (use watch = %q)", mode, WatchPoll)
	}
	return make(chan struct{}), func() {}, nil
}
