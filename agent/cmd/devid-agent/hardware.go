package main

import (
	"log/slog"

	"devid/agent"
	"devid/agent/config"
	"devid/hal/gpio"
)

// panel adapts hal/gpio's LED + button panel to the agent.
type panel struct{ p *gpio.Panel }

func (p panel) Show(s agent.State)      { p.p.Show(s.String()) }
func (p panel) Button() <-chan struct{} { return p.p.Button() }
func (p panel) Close()                  { p.p.Close() }

// openHardware opens the GPIO lines named in [hardware]. With none
// configured it returns nil: boards without LED or button run the same.
// A missing line is logged and the rest keeps working.
func openHardware(cfg *config.Config, log *slog.Logger) *panel {
	if cfg.Hardware.LED == "" && cfg.Hardware.Button == "" {
		return nil
	}
	p, err := gpio.OpenPanel(cfg.Hardware.LED, cfg.Hardware.Button, cfg.Hardware.ButtonHold.D())
	if err != nil {
		log.Warn("status LED / factory button not fully available; carrying on without the missing part",
			"led", cfg.Hardware.LED, "button", cfg.Hardware.Button, "err", err)
	}
	return &panel{p: p}
}
