package gpio

import (
	"context"
	"fmt"
	"time"

	"periph.io/x/conn/v3/gpio"
)

// DefaultDebounce is how long the level must stay put after an edge
// before it counts. Mechanical buttons bounce for a few milliseconds.
const DefaultDebounce = 50 * time.Millisecond

// edgePoll bounds each wait for an edge so Run notices ctx ending; the
// periph API has no cancellable wait.
const edgePoll = 250 * time.Millisecond

// Button is a debounced push button that reports being held. By default
// it is active low with the internal pull-up on (a button to ground).
// A nil *Button never reports anything.
type Button struct {
	pin        gpio.PinIn
	hold       time.Duration
	debounce   time.Duration
	activeHigh bool
}

// ButtonOption configures NewButton.
type ButtonOption func(*Button)

// ActiveHigh says the button pulls the line high when pressed (pull-down on).
func ActiveHigh() ButtonOption { return func(b *Button) { b.activeHigh = true } }

// WithDebounce replaces DefaultDebounce.
func WithDebounce(d time.Duration) ButtonOption { return func(b *Button) { b.debounce = d } }

// NewButton configures pin as an input with both edges and returns a
// button that reports holds of at least hold.
func NewButton(pin gpio.PinIn, hold time.Duration, opts ...ButtonOption) (*Button, error) {
	if hold <= 0 {
		return nil, fmt.Errorf("factory button: hold time %v must be positive", hold)
	}
	b := &Button{pin: pin, hold: hold, debounce: DefaultDebounce}
	for _, o := range opts {
		o(b)
	}
	pull := gpio.PullUp
	if b.activeHigh {
		pull = gpio.PullDown
	}
	if err := pin.In(pull, gpio.BothEdges); err != nil {
		return nil, fmt.Errorf("factory button %s: %w", pin, err)
	}
	return b, nil
}

// OpenButton finds the line called name and returns a button on it. With
// an empty name it returns nil and no error: no button is configured.
func OpenButton(name string, hold time.Duration, opts ...ButtonOption) (*Button, error) {
	if name == "" {
		return nil, nil
	}
	p, err := Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("factory button: %w", err)
	}
	return NewButton(p, hold, opts...)
}

func (b *Button) pressed() bool { return (b.pin.Read() == gpio.High) == b.activeHigh }

// Run watches the button until ctx ends and calls onHold once per press
// that lasts at least the hold time (counted from the debounced press).
// A button already held when Run starts counts from then, so holding it
// while powering on works.
func (b *Button) Run(ctx context.Context, onHold func()) error {
	if b == nil {
		<-ctx.Done()
		return nil
	}
	edges := make(chan struct{}, 1)
	pumpDone := make(chan struct{})
	go func() {
		defer close(pumpDone)
		for ctx.Err() == nil {
			if b.pin.WaitForEdge(edgePoll) {
				select {
				case edges <- struct{}{}:
				default: // an edge is already pending; debounce reads the level anyway
				}
			}
		}
	}()
	defer func() { <-pumpDone }()

	pressed := b.pressed()
	var settle, held <-chan time.Time
	if pressed {
		held = time.After(b.hold)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-edges:
			settle = time.After(b.debounce) // restart on every bounce
		case <-settle:
			settle = nil
			now := b.pressed()
			if now == pressed {
				continue
			}
			pressed = now
			held = nil
			if pressed {
				held = time.After(b.hold)
			}
		case <-held:
			held = nil
			onHold()
		}
	}
}
