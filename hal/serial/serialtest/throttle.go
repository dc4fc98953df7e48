package serialtest

import (
	"sync"
	"time"
)

// UARTBytesPerSecond is 115200 baud 8N1: ten bit times per byte.
const UARTBytesPerSecond = 11520

// Throttled returns a Tamper that paces a Link to bytesPerSecond each way:
// each chunk is delivered when the bytes before it and it would have
// finished on the wire, each direction on its own (the pumps of a Link run
// one per direction). Use it to measure a protocol at a UART's rate over a
// pty, e.g. link.SetTamper(serialtest.Throttled(serialtest.UARTBytesPerSecond)).
func Throttled(bytesPerSecond int) Tamper {
	var mu sync.Mutex
	var free [2]time.Time
	return func(dir Direction, _ int, b []byte) []byte {
		d := time.Duration(len(b)) * time.Second / time.Duration(bytesPerSecond)
		mu.Lock()
		start := time.Now()
		if free[dir].After(start) {
			start = free[dir]
		}
		end := start.Add(d)
		free[dir] = end
		mu.Unlock()
		time.Sleep(time.Until(end))
		return b
	}
}
