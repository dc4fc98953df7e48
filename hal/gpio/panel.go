package gpio

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Panel is the status LED and the factory button together, each running
// in its own goroutine: what the agent needs. Either may be absent. A nil
// *Panel is a valid panel with neither.
type Panel struct {
	led     *LED
	presses chan struct{}
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	errMu   sync.Mutex
	err     error
}

// OpenPanel opens the LED and the button by line name (empty = not
// fitted) and starts them. If a named line is missing or cannot be set
// up, the error says so, and the returned panel still works with
// whatever was found, so the agent can log the error and carry on.
func OpenPanel(ledName, buttonName string, hold time.Duration, opts ...PanelOption) (*Panel, error) {
	var o panelOptions
	for _, opt := range opts {
		opt(&o)
	}
	led, lerr := OpenLED(ledName, o.led...)
	btn, berr := OpenButton(buttonName, hold, o.button...)
	ctx, cancel := context.WithCancel(context.Background())
	p := &Panel{led: led, presses: make(chan struct{}, 1), cancel: cancel}
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		p.setErr(led.Run(ctx))
	}()
	go func() {
		defer p.wg.Done()
		p.setErr(btn.Run(ctx, func() {
			select {
			case p.presses <- struct{}{}:
			default: // one pending request is enough
			}
		}))
	}()
	return p, errors.Join(lerr, berr)
}

// PanelOption configures OpenPanel.
type PanelOption func(*panelOptions)

type panelOptions struct {
	led    []LEDOption
	button []ButtonOption
}

// WithLEDOptions passes options to the LED.
func WithLEDOptions(o ...LEDOption) PanelOption {
	return func(p *panelOptions) { p.led = append(p.led, o...) }
}

// WithButtonOptions passes options to the button.
func WithButtonOptions(o ...ButtonOption) PanelOption {
	return func(p *panelOptions) { p.button = append(p.button, o...) }
}

func (p *Panel) setErr(err error) {
	if err == nil {
		return
	}
	p.errMu.Lock()
	defer p.errMu.Unlock()
	if p.err == nil {
		p.err = err
	}
}

// Show sets the LED pattern for an agent state name.
func (p *Panel) Show(state string) {
	if p == nil {
		return
	}
	p.led.Set(state)
}

// Button delivers one value per completed hold of the factory button.
// A nil panel's channel never delivers.
func (p *Panel) Button() <-chan struct{} {
	if p == nil {
		return nil
	}
	return p.presses
}

// Close stops the goroutines and turns the LED off. It returns the first
// error driving the pins, if any.
func (p *Panel) Close() error {
	if p == nil {
		return nil
	}
	p.cancel()
	p.wg.Wait()
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.err
}
