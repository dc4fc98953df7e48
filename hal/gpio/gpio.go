// Package gpio drives the status LED and reads the factory button, each
// found by GPIO line name through periph.io's gpioioctl driver (the Linux
// GPIO character device, not sysfs).
//
// Both are optional: a board may have neither, and the agent runs the
// same without them. A nil *LED or *Button is valid and does nothing, so
// callers can keep the result of a failed Open and carry on.
//
// The LED shows one blink pattern per agent state (PatternFor). The
// button is debounced and reports a hold of a configured length, which
// the agent takes as "enter factory mode". Timers are plain time.After,
// so tests run on fake time inside testing/synctest.
package gpio

import (
	"errors"
	"fmt"
	"sync"

	"periph.io/x/conn/v3/driver/driverreg"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpioreg"
	_ "periph.io/x/host/v3/gpioioctl" // registers the character-device GPIO driver
)

// ErrLineNotFound means no GPIO line has the configured name.
var ErrLineNotFound = errors.New("GPIO line not found")

var initOnce struct {
	sync.Once
	err error
}

// Init loads periph's drivers (only gpioioctl is linked). Finding no GPIO
// chip is not an error: lookups then simply find no lines. It is safe to
// call more than once.
func Init() error {
	initOnce.Do(func() {
		if _, err := driverreg.Init(); err != nil {
			initOnce.err = fmt.Errorf("gpio: init drivers: %w", err)
		}
	})
	return initOnce.err
}

// Lookup finds a GPIO line by name (as gpioinfo shows it, or registered
// with gpioreg in tests). Init is called first.
func Lookup(name string) (gpio.PinIO, error) {
	if name == "" {
		return nil, fmt.Errorf("%w: empty name", ErrLineNotFound)
	}
	if err := Init(); err != nil {
		return nil, err
	}
	p := gpioreg.ByName(name)
	if p == nil {
		return nil, fmt.Errorf("%w: %q", ErrLineNotFound, name)
	}
	return p, nil
}
