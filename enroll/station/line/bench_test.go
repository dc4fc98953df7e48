package line_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"devid/enroll/station/jig"
	"devid/enroll/station/line"
	"devid/hal/serial"
	"devid/hal/serial/serialtest"
)

// uartBytesPerSecond is 115200 baud 8N1 (serialtest.UARTBytesPerSecond).
const uartBytesPerSecond = serialtest.UARTBytesPerSecond

// BenchmarkStation programs 1, 4 and 8 boards at once with one station,
// over pty pairs joined by a relay that throttles each way to 11,520 B/s
// (115200 baud), and unthrottled. boards/min is the figure for a line;
// wire-floor-ms is one board's bytes at 115200 baud.
func BenchmarkStation(b *testing.B) {
	for _, uart := range []bool{true, false} {
		for _, n := range []int{1, 4, 8} {
			name := fmt.Sprintf("slots=%d/pty", n)
			if uart {
				name = fmt.Sprintf("slots=%d/115200", n)
			}
			b.Run(name, func(b *testing.B) { benchStation(b, n, uart) })
		}
	}
}

func benchStation(b *testing.B, n int, uart bool) {
	l := newCA(b)
	roots := rootPool(l)
	var total time.Duration
	var boards, wire int
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		serialDir := b.TempDir()
		var ports []string
		ttys := map[string]string{}
		for s := 0; s < n; s++ {
			link := serialtest.NewLink(b)
			if uart {
				link.SetTamper(serialtest.Throttled(uartBytesPerSecond))
			}
			p, err := serial.Open(link.DeviceTTY, 115200)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { p.Close() })
			serveDevice(b, p, fmt.Sprintf("bench-%d-%d", i, s), roots, 0)
			name := fmt.Sprintf("slot%d", s)
			ttys[name] = link.JigTTY
			ports = append(ports, "by-id/"+name)
		}
		ev := newEvents(b)
		st, err := line.New(slotsConfig(serialDir, ports...), line.Options{CA: l, Jig: jig.Options{Roots: roots}, Events: ev, Boards: n})
		if err != nil {
			b.Fatal(err)
		}
		for name, tty := range ttys {
			plug(b, filepath.Join(serialDir, "by-id"), name, tty)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		b.StartTimer()
		start := time.Now()
		y, err := st.Run(ctx)
		elapsed := time.Since(start)
		b.StopTimer()
		cancel()
		if err != nil || y.Programmed != n {
			b.Fatalf("yield %+v, %v", y, err)
		}
		for _, e := range ev.drain() {
			if e.Type == line.EventProgrammed {
				wire = e.BytesSent + e.BytesReceived
			}
		}
		total += elapsed
		boards += n
	}
	b.ReportMetric(float64(boards)/total.Minutes(), "boards/min")
	b.ReportMetric(float64(wire)/uartBytesPerSecond*1000, "wire-floor-ms/board")
	b.ReportMetric(0, "ns/op")
}
