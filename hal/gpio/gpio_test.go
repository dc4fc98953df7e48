package gpio

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpioreg"
	"periph.io/x/conn/v3/gpio/gpiotest"
)

// All tests run inside synctest bubbles: time.After and gpiotest's clock
// are fake, and time.Sleep advances them instantly once every goroutine
// in the bubble is blocked. Nothing waits on the wall clock.

func level(t *testing.T, p *gpiotest.Pin, want gpio.Level, at string) {
	t.Helper()
	synctest.Wait()
	if got := p.Read(); got != want {
		t.Errorf("%s: LED %v, want %v", at, got, want)
	}
}

func TestLEDPatterns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &gpiotest.Pin{N: "LED"}
		l := NewLED(p)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- l.Run(ctx) }()
		level(t, p, gpio.Low, "start")

		l.Set("factory") // 100 on / 100 off
		level(t, p, gpio.High, "factory t=0")
		time.Sleep(50 * time.Millisecond)
		level(t, p, gpio.High, "factory t=50ms")
		time.Sleep(100 * time.Millisecond)
		level(t, p, gpio.Low, "factory t=150ms")
		time.Sleep(100 * time.Millisecond)
		level(t, p, gpio.High, "factory t=250ms")

		l.Set("connected")
		level(t, p, gpio.High, "connected")
		time.Sleep(time.Minute)
		level(t, p, gpio.High, "connected after a minute")

		l.Set("unenrolled") // 100 on / 1900 off
		time.Sleep(150 * time.Millisecond)
		level(t, p, gpio.Low, "unenrolled t=150ms")
		time.Sleep(1900 * time.Millisecond)
		level(t, p, gpio.High, "unenrolled t=2050ms")

		// Set never blocks, even with nobody running the LED.
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		level(t, p, gpio.Low, "after Run")
		for range 5 {
			l.Set("error")
		}
	})
}

func TestLEDActiveLow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &gpiotest.Pin{N: "LED"}
		l := NewLED(p, ActiveLow())
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- l.Run(ctx) }()
		level(t, p, gpio.High, "off, active low")
		l.Set("connected")
		level(t, p, gpio.Low, "on, active low")
		cancel()
		<-done
	})
}

// TestPatternsDistinct: every state a user can see has its own pattern.
func TestPatternsDistinct(t *testing.T) {
	seen := map[string]string{}
	for state, p := range byState {
		if state == "reprovisioning" {
			continue // deliberately the same as provisioning
		}
		key := fmt.Sprint(p.Steps)
		if other, dup := seen[key]; dup {
			t.Errorf("states %s and %s share a pattern", state, other)
		}
		seen[key] = state
	}
	if PatternFor("no-such-state").Name != "error" {
		t.Error("unknown states should show the error pattern")
	}
}

func newButtonPin(t *testing.T) *gpiotest.Pin {
	return &gpiotest.Pin{N: "BTN", EdgesChan: make(chan gpio.Level)}
}

func runButton(t *testing.T, b *Button) (*atomic.Int32, context.CancelFunc) {
	var held atomic.Int32
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- b.Run(ctx, func() { held.Add(1) }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	synctest.Wait()
	return &held, cancel
}

func wantHeld(t *testing.T, held *atomic.Int32, n int32, at string) {
	t.Helper()
	synctest.Wait()
	if got := held.Load(); got != n {
		t.Errorf("%s: %d holds reported, want %d", at, got, n)
	}
}

func TestButtonHold(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newButtonPin(t)
		b, err := NewButton(p, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if p.P != gpio.PullUp {
			t.Errorf("pull %v, want pull-up for an active-low button", p.P)
		}
		held, _ := runButton(t, b)

		p.EdgesChan <- gpio.Low // press
		time.Sleep(2900 * time.Millisecond)
		wantHeld(t, held, 0, "held 2.9 s")
		time.Sleep(200 * time.Millisecond)
		wantHeld(t, held, 1, "held 3.1 s")
		time.Sleep(10 * time.Second)
		wantHeld(t, held, 1, "still held")
		p.EdgesChan <- gpio.High // release

		// A short press does nothing.
		time.Sleep(time.Second)
		p.EdgesChan <- gpio.Low
		time.Sleep(time.Second)
		p.EdgesChan <- gpio.High
		time.Sleep(5 * time.Second)
		wantHeld(t, held, 1, "after a 1 s press")

		// Bouncing contacts: the hold counts from the settled press.
		for _, l := range []gpio.Level{gpio.Low, gpio.High, gpio.Low, gpio.High, gpio.Low} {
			p.EdgesChan <- l
			time.Sleep(3 * time.Millisecond)
		}
		time.Sleep(3050 * time.Millisecond)
		wantHeld(t, held, 2, "after a bouncy 3 s press")

		// A bounce that ends released is no press at all.
		p.EdgesChan <- gpio.High
		time.Sleep(time.Second)
		for _, l := range []gpio.Level{gpio.Low, gpio.High, gpio.Low, gpio.High} {
			p.EdgesChan <- l
			time.Sleep(3 * time.Millisecond)
		}
		time.Sleep(5 * time.Second)
		wantHeld(t, held, 2, "after noise")

		// A held button whose contact glitches open for 5 ms every
		// second is still held.
		p.EdgesChan <- gpio.Low
		for range 4 {
			time.Sleep(time.Second)
			p.EdgesChan <- gpio.High
			time.Sleep(5 * time.Millisecond)
			p.EdgesChan <- gpio.Low
		}
		wantHeld(t, held, 3, "held through glitches")
	})
}

func TestButtonHeldAtStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newButtonPin(t)
		b, err := NewButton(p, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		p.Out(gpio.Low) // held while powering on
		held, _ := runButton(t, b)
		time.Sleep(4 * time.Second)
		wantHeld(t, held, 0, "4 s after start")
		time.Sleep(2 * time.Second)
		wantHeld(t, held, 1, "6 s after start")
	})
}

func TestButtonActiveHigh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newButtonPin(t)
		b, err := NewButton(p, time.Second, ActiveHigh(), WithDebounce(10*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		if p.P != gpio.PullDown {
			t.Errorf("pull %v, want pull-down", p.P)
		}
		held, _ := runButton(t, b)
		p.EdgesChan <- gpio.High
		time.Sleep(1100 * time.Millisecond)
		wantHeld(t, held, 1, "active-high hold")
	})
}

// TestByName registers fake lines under names, as the gpioioctl driver
// registers real ones, and opens them the way the agent does.
func TestByName(t *testing.T) {
	led := &gpiotest.Pin{N: "TEST_STATUS_LED"}
	btn := &gpiotest.Pin{N: "TEST_FACTORY_BTN", EdgesChan: make(chan gpio.Level)}
	for _, p := range []*gpiotest.Pin{led, btn} {
		if err := gpioreg.Register(p); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { gpioreg.Unregister(p.N) })
	}
	l, err := OpenLED("TEST_STATUS_LED")
	if err != nil || l == nil {
		t.Fatalf("OpenLED = %v, %v", l, err)
	}
	b, err := OpenButton("TEST_FACTORY_BTN", time.Second)
	if err != nil || b == nil {
		t.Fatalf("OpenButton = %v, %v", b, err)
	}
	if _, err := OpenLED("NO_SUCH_LINE"); !errors.Is(err, ErrLineNotFound) {
		t.Errorf("OpenLED(missing) = %v, want ErrLineNotFound", err)
	}
	if _, err := OpenButton("NO_SUCH_LINE", time.Second); !errors.Is(err, ErrLineNotFound) {
		t.Errorf("OpenButton(missing) = %v, want ErrLineNotFound", err)
	}
	if _, err := OpenButton("TEST_FACTORY_BTN", 0); err == nil {
		t.Error("OpenButton accepted a zero hold time")
	}
}

// TestNone: no LED and no button configured; the agent's calls are no-ops.
func TestNone(t *testing.T) {
	l, err := OpenLED("")
	if l != nil || err != nil {
		t.Fatalf("OpenLED(\"\") = %v, %v", l, err)
	}
	b, err := OpenButton("", time.Second)
	if b != nil || err != nil {
		t.Fatalf("OpenButton(\"\") = %v, %v", b, err)
	}
	l.Set("connected")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := l.Run(ctx); err != nil {
		t.Error(err)
	}
	if err := b.Run(ctx, func() { t.Error("nil button reported a hold") }); err != nil {
		t.Error(err)
	}
}

func TestPanel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		led := &gpiotest.Pin{N: "PANEL_LED"}
		btn := &gpiotest.Pin{N: "PANEL_BTN", EdgesChan: make(chan gpio.Level)}
		for _, p := range []*gpiotest.Pin{led, btn} {
			if err := gpioreg.Register(p); err != nil {
				t.Fatal(err)
			}
			defer gpioreg.Unregister(p.N)
		}
		p, err := OpenPanel("PANEL_LED", "PANEL_BTN", 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		p.Show("connected")
		synctest.Wait()
		if led.Read() != gpio.High {
			t.Error("LED not on for connected")
		}
		btn.EdgesChan <- gpio.Low
		time.Sleep(2100 * time.Millisecond)
		select {
		case <-p.Button():
		default:
			t.Error("no factory request after a 2 s hold")
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if led.Read() != gpio.Low {
			t.Error("LED left on after Close")
		}

		// A missing line is reported, and the rest still works.
		p2, err := OpenPanel("PANEL_LED", "NO_SUCH_BUTTON", time.Second)
		if !errors.Is(err, ErrLineNotFound) {
			t.Errorf("OpenPanel with a missing button = %v", err)
		}
		p2.Show("factory")
		synctest.Wait()
		if led.Read() != gpio.High {
			t.Error("LED not driven when the button is missing")
		}
		p2.Close()

		var none *Panel
		none.Show("error")
		if none.Button() != nil || none.Close() != nil {
			t.Error("nil panel misbehaves")
		}
	})
}
