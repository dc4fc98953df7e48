package gpio

import (
	"context"
	"fmt"
	"time"

	"periph.io/x/conn/v3/gpio"
)

// Step is one phase of a blink pattern.
type Step struct {
	On  bool
	For time.Duration
}

// Pattern is a repeating sequence of steps. A single step with For == 0
// is a steady level.
type Pattern struct {
	Name  string
	Steps []Step
}

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func blink(name string, onOff ...int) Pattern {
	p := Pattern{Name: name}
	for i, d := range onOff {
		p.Steps = append(p.Steps, Step{On: i%2 == 0, For: ms(d)})
	}
	return p
}

// The patterns, one per agent state. Each is distinct at a glance:
// steady, fast, slow, or 1-4 short blips per period.
var (
	PatternOff            = Pattern{Name: "off", Steps: []Step{{On: false}}}
	PatternOn             = Pattern{Name: "on", Steps: []Step{{On: true}}}
	PatternUnenrolled     = blink("unenrolled", 100, 1900)                          // 1 blip / 2 s
	PatternFactory        = blink("factory", 100, 100)                              // fast blink
	PatternEnrolled       = blink("enrolled", 1000, 1000)                           // slow blink: waiting for the clock
	PatternProvisioning   = blink("provisioning", 100, 150, 100, 1650)              // 2 blips
	PatternConnecting     = blink("connecting", 400, 400)                           // medium blink
	PatternBackoff        = blink("backoff", 1900, 100)                             // on, short gap
	PatternRevoked        = blink("revoked", 100, 150, 100, 150, 100, 1400)         // 3 blips
	PatternError          = blink("error", 100, 150, 100, 150, 100, 150, 100, 1150) // 4 blips
	PatternReprovisioning = PatternProvisioning
)

var byState = map[string]Pattern{
	"off":            PatternOff,
	"unenrolled":     PatternUnenrolled,
	"factory":        PatternFactory,
	"enrolled":       PatternEnrolled,
	"provisioning":   PatternProvisioning,
	"reprovisioning": PatternReprovisioning,
	"connecting":     PatternConnecting,
	"connected":      PatternOn,
	"backoff":        PatternBackoff,
	"revoked":        PatternRevoked,
	"error":          PatternError,
}

// PatternFor returns the pattern for an agent state name (agent.State's
// String). Unknown states show the error pattern.
func PatternFor(state string) Pattern {
	if p, ok := byState[state]; ok {
		return p
	}
	return PatternError
}

// LED blinks a status LED. Set may be called from any goroutine; Run
// drives the pin. A nil *LED does nothing.
type LED struct {
	pin       gpio.PinOut
	activeLow bool
	set       chan Pattern // capacity 1: holds the latest pattern only
}

// LEDOption configures NewLED.
type LEDOption func(*LED)

// ActiveLow says the LED lights when the line is driven low.
func ActiveLow() LEDOption { return func(l *LED) { l.activeLow = true } }

// NewLED returns an LED on pin, initially off.
func NewLED(pin gpio.PinOut, opts ...LEDOption) *LED {
	l := &LED{pin: pin, set: make(chan Pattern, 1)}
	for _, o := range opts {
		o(l)
	}
	return l
}

// OpenLED finds the line called name and returns an LED on it. With an
// empty name it returns nil and no error: no LED is configured.
func OpenLED(name string, opts ...LEDOption) (*LED, error) {
	if name == "" {
		return nil, nil
	}
	p, err := Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("status LED: %w", err)
	}
	return NewLED(p, opts...), nil
}

// Set shows the pattern for an agent state (see PatternFor).
func (l *LED) Set(state string) { l.SetPattern(PatternFor(state)) }

// SetPattern shows p from its first step. It never blocks.
func (l *LED) SetPattern(p Pattern) {
	if l == nil {
		return
	}
	for {
		select {
		case l.set <- p:
			return
		default:
			select {
			case <-l.set: // drop the pattern Run has not picked up yet
			default:
			}
		}
	}
}

// Run drives the LED until ctx ends, then turns it off. It returns the
// first error writing the pin, if any.
func (l *LED) Run(ctx context.Context) error {
	if l == nil {
		<-ctx.Done()
		return nil
	}
	cur := PatternOff
	step := 0
	var next <-chan time.Time
	apply := func() error {
		s := cur.Steps[step]
		if err := l.write(s.On); err != nil {
			return err
		}
		next = nil
		if s.For > 0 && len(cur.Steps) > 0 {
			next = time.After(s.For)
		}
		return nil
	}
	if err := apply(); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return l.write(false)
		case p := <-l.set:
			if len(p.Steps) == 0 {
				p = PatternOff
			}
			cur, step = p, 0
		case <-next:
			step = (step + 1) % len(cur.Steps)
		}
		if err := apply(); err != nil {
			return err
		}
	}
}

func (l *LED) write(on bool) error {
	level := gpio.Level(on != l.activeLow)
	if err := l.pin.Out(level); err != nil {
		return fmt.Errorf("status LED %s: %w", l.pin, err)
	}
	return nil
}
