package agent

import (
	"context"
	"time"

	"devid/hal/clock"
)

// probeIdentity loads the identity only to see whether it exists (and
// its fingerprint), then releases it.
func (a *Agent) probeIdentity() (string, error) {
	id, err := a.opt.Identity.Load()
	if err != nil {
		return "", err
	}
	defer id.Close()
	return id.Fingerprint(), nil
}

// watchIdentity polls for an identity (installed by the jig or by hand)
// and posts kind once it exists.
func (a *Agent) watchIdentity(ctx context.Context, epoch uint64, kind EventKind) {
	go func() {
		for {
			if _, err := a.probeIdentity(); err == nil {
				a.postState(epoch, Event{Kind: kind, Identity: true})
				return
			}
			if !a.sleep(ctx, 5*time.Second) {
				return
			}
		}
	}()
}

func (a *Agent) runFactory(ctx context.Context, epoch uint64) {
	// A device that enters factory mode already programmed (the factory
	// button) stays until the jig installs a different certificate or the
	// bus has been given factoryIdle; an unprogrammed one leaves as soon
	// as it has an identity.
	entryFP, _ := a.probeIdentity()
	programmed := func() bool {
		fp, err := a.probeIdentity()
		return err == nil && fp != entryFP
	}
	if a.opt.Factory == nil {
		if entryFP != "" {
			a.log.Info("factory mode requested, but no factory port is configured; back to the field")
			a.postState(epoch, Event{Kind: EvFactoryDone, Identity: true})
			return
		}
		a.log.Info("factory mode: no factory port configured; waiting for an identity to be installed")
		a.watchIdentity(ctx, epoch, EvFactoryDone)
		return
	}
	a.log.Info("factory mode: serving the factory bus", "port", a.cfg.Factory.Port, "usb_gadget", a.cfg.Factory.USBGadget, "programmed", entryFP != "")
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.opt.Factory(fctx) }()
	finish := func(err error) {
		_, idErr := a.probeIdentity()
		a.postState(epoch, Event{Kind: EvFactoryDone, Identity: idErr == nil, Err: err})
	}
	go func() {
		defer cancel()
		deadline := a.clock.Now().Add(factoryIdle)
		for {
			if programmed() {
				// Keep answering the jig (STATUS, a repeated INSTALL) for a
				// grace period, then go to the field.
				if !a.sleep(ctx, factoryLinger) {
					return
				}
				cancel()
				<-done
				finish(nil)
				return
			}
			if entryFP != "" && !a.clock.Now().Before(deadline) {
				a.log.Info("factory mode timed out; back to the field", "after", factoryIdle.String())
				cancel()
				<-done
				finish(nil)
				return
			}
			tick, stop := clock.After(a.clock, time.Second)
			select {
			case err := <-done:
				stop()
				finish(err)
				return
			case <-ctx.Done():
				stop()
				return
			case <-tick:
			}
		}
	}()
}

// factoryLinger is how long factory mode keeps answering the jig (STATUS,
// a repeated INSTALL) after a certificate was installed.
const factoryLinger = 3 * time.Second

// factoryIdle bounds factory mode entered with the button on a device
// that is already programmed.
const factoryIdle = 10 * time.Minute
