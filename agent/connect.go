package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"devid/hal/clock"
)

// cacheUsable says whether the cached assignment belongs to this config
// and this certificate.
func (a *Agent) cacheUsable() bool {
	as := a.assignment
	if as == nil || as.Hub == "" || as.DeviceID == "" {
		return false
	}
	if as.IDScope != a.cfg.DPS.IDScope || as.Endpoint != a.cfg.DPS.Endpoint {
		return false
	}
	if a.renewal.Deciding() {
		// Renewal path auto learns from a registration whether DPS
		// issues certificates: one registration, then the cache again.
		return false
	}
	if a.id != nil && as.CertFingerprint != "" && as.CertFingerprint != a.id.Fingerprint() {
		return false
	}
	return true
}

// loadIdentity loads the factory credential and, with renewal through
// DPS or the hub, the installed operational credential the hub gets. The
// previous ones are closed: nothing uses them any more (their
// connections are closed by now).
func (a *Agent) loadIdentity() error {
	// The boot probe's credential, when this is the load right after it.
	id := a.bootID
	a.bootID = nil
	if id == nil {
		var err error
		if id, err = a.opt.Identity.Load(); err != nil {
			return err
		}
	}
	if a.id != id {
		a.id.Close()
	}
	a.op.Close()
	a.id, a.op = id, a.renewal.Operational()
	a.anchorCredentials()
	return nil
}

// startEnrolled loads the identity and waits for a sane clock; pause
// (after a TLS time error, cause) delays the first check.
func (a *Agent) startEnrolled(ctx context.Context, epoch uint64, pause time.Duration, cause error) {
	if err := a.loadIdentity(); err != nil {
		if errors.Is(err, ErrNoIdentity) {
			a.postState(epoch, Event{Kind: EvFatal, Err: fmt.Errorf("identity disappeared: %w", err)})
		} else {
			a.postState(epoch, Event{Kind: EvFatal, Err: err})
		}
		return
	}
	id := a.id
	a.mu.Lock()
	a.status.KeyBackend = id.Backend()
	a.mu.Unlock()
	a.showCertInUse()
	if a.cfg.DPS.IDScope == "" && !a.cacheUsable() {
		a.postState(epoch, Event{Kind: EvFatal, Err: errors.New("dps.id_scope is not set in the config and no DPS assignment is cached")})
		return
	}
	floor := a.clockFloor()
	cached := a.cacheUsable()
	go func() {
		start := a.clock.Now()
		if pause > 0 {
			at, why := floor.blocking(start)
			a.setClockWait(&ClockWait{Since: start.UTC(), Floor: at, Source: why,
				Reason: "a server rejected our clock (" + errString(cause) + "); waiting for it to be corrected"})
			if !a.sleep(ctx, pause) {
				return
			}
		}
		// Re-check every 1 s, doubling to 32 s.
		checks := clock.Backoff{Min: time.Second, Max: 32 * time.Second}
		for n := 1; ; n++ {
			now := a.clock.Now()
			ntp := a.ntpSynced()
			synced := !a.cfg.Clock.RequireSync || a.opt.ClockSynced == nil || ntp
			if floor.savedOnly(now) && ntp {
				// Real time contradicts the saved floor: the Run
				// goroutine lowers it (correctSavedFloor), no waiting.
				a.postState(epoch, Event{Kind: EvClockOK, Cached: cached, WrongFloor: true})
				return
			}
			if !now.Before(floor.at) && synced {
				a.postState(epoch, Event{Kind: EvClockOK, Cached: cached})
				return
			}
			reason := a.clockWaitReason(floor, now)
			if !synced && !now.Before(floor.at) {
				reason = "waiting for the kernel to report NTP synchronisation"
			}
			exceeded := now.Sub(start) >= a.cfg.Clock.MaxWait.D() || now.Before(start)
			at, why := floor.blocking(now)
			a.setClockWait(&ClockWait{Since: start.UTC(), Floor: at, Source: why, Reason: reason, Exceeded: exceeded})
			if exceeded && !now.Before(floor.hard.Add(-24*time.Hour)) {
				// Bounded wait: within a day of the hard floor, try
				// anyway, however far the saved floor is (a session that
				// succeeds corrects it, confirmLastKnownGood); TLS time
				// errors are then treated as clock problems.
				a.log.Warn("clock wait exceeded; proceeding", "reason", reason)
				a.postState(epoch, Event{Kind: EvClockOK, Cached: cached})
				return
			}
			if n == 1 {
				a.log.Warn("waiting for a sane clock before any TLS", "reason", reason, "max_wait", a.cfg.Clock.MaxWait.String())
			}
			if !a.sleep(ctx, checks.Delay(n, 0)) {
				return
			}
		}
	}()
}

func (a *Agent) setClockWait(cw *ClockWait) {
	a.mu.Lock()
	a.status.ClockWait = cw
	a.mu.Unlock()
}

func (a *Agent) startProvisioning(ctx context.Context, epoch uint64) {
	if a.id == nil {
		// Booted straight into a resumed revoked wait: load it now.
		if err := a.loadIdentity(); err != nil {
			a.postState(epoch, Event{Kind: EvFatal, Err: err})
			return
		}
	}
	id := a.id
	register := a.opt.Cloud.Register
	if a.renewal.IssuesAtRegistration() {
		// Every registration carries a CSR, so re-provisioning (a hub
		// refusing a revoked or expired operational certificate, a moved
		// device) also renews the operational credential.
		register = a.renewal.Register
	}
	go func() {
		rctx, cancel := context.WithTimeout(ctx, a.cfg.DPS.Timeout.D())
		defer cancel()
		as, err := register(rctx, id)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			switch a.opt.Cloud.Classify(err) {
			case ClassRefused, ClassAuth:
				// Disabled, failed, or the credential refused (401, e.g. a
				// revoked certificate): retrying at network pace would
				// hammer DPS with a credential it has already refused.
				a.postState(epoch, Event{Kind: EvDPSRefused, Err: err})
			case ClassClock:
				a.postState(epoch, Event{Kind: EvClockBad, Err: err})
			case ClassFatal:
				a.postState(epoch, Event{Kind: EvFatal, Err: err})
			default:
				a.postState(epoch, Event{Kind: EvDPSError, Err: err})
			}
			return
		}
		as.IDScope, as.Endpoint = a.cfg.DPS.IDScope, a.cfg.DPS.Endpoint
		if as.CertFingerprint == "" {
			as.CertFingerprint = id.Fingerprint()
		}
		if as.AssignedAt.IsZero() {
			as.AssignedAt = a.clock.Now().UTC()
		}
		a.log.Info("DPS assigned a hub", "hub", as.Hub, "device_id", as.DeviceID, "substatus", as.Substatus)
		a.postState(epoch, Event{Kind: EvAssigned, payload: as})
	}()
}

func (a *Agent) startConnecting(ctx context.Context, epoch uint64) {
	// Reload the credential on every connect: a renewal may have
	// committed a new one meanwhile (also while provisioning). Nothing
	// uses the previous one any more: its connection is closed.
	if err := a.loadIdentity(); err != nil {
		a.log.Warn("reloading the identity before connecting; using the loaded one", "err", err)
		if op := a.renewal.Operational(); op != nil {
			// Still take an operational credential a registration just
			// installed.
			a.op.Close()
			a.op = op
		}
	}
	id, as := a.id, a.assignment
	if a.op != nil {
		// The hub gets the operational credential (DPS-issued or
		// renewed); DPS keeps the factory onboarding credential.
		id = a.op
	}
	a.showCertInUse()
	h := Handlers{C2D: a.onC2D, Method: a.onMethod, Desired: a.onDesired, MethodNames: a.methodNames()}
	go func() {
		cctx, cancel := context.WithTimeout(ctx, a.cfg.Hub.ConnectTimeout.D())
		defer cancel()
		conn, err := a.opt.Cloud.Connect(cctx, id, as, h)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			switch a.opt.Cloud.Classify(err) {
			case ClassAuth:
				a.postState(epoch, Event{Kind: EvHubFailed, AuthRefused: true, Err: err})
			case ClassClock:
				a.postState(epoch, Event{Kind: EvClockBad, Err: err})
			default:
				a.postState(epoch, Event{Kind: EvHubFailed, Err: err})
			}
			return
		}
		a.postState(epoch, Event{Kind: EvHubConnected, payload: conn})
	}()
}

func (a *Agent) startConnected(ctx context.Context, epoch uint64, conn HubConn) {
	a.mu.Lock()
	a.hub = conn
	a.mu.Unlock()
	a.log.Info("connected", "hub", a.hubName(), "device_id", a.assignment.DeviceID)
	go func() {
		select {
		case <-conn.Done():
			err := conn.Err()
			if err == nil {
				err = errors.New("connection closed")
			}
			a.postState(epoch, Event{Kind: EvHubFailed, Err: fmt.Errorf("hub connection lost: %w", err)})
		case <-ctx.Done():
		}
	}()
	go a.sendLoop(ctx, conn)
	go a.healthLoop(ctx, conn)
	// Keep the clock floor fresh on a device that stays connected for
	// months: the next boot then refuses a clock that went far back
	// (confirmLastKnownGood bounds it by real time).
	go func() {
		for a.sleep(ctx, lkgInterval) {
			a.postState(epoch, Event{Kind: evLKG})
		}
	}()
}

// lkgInterval is how often a connected agent refreshes last_known_good.
const lkgInterval = time.Hour

// showCertInUse puts the certificate the hub gets in status: the
// operational one when there is one, else the factory one. A status that
// showed the factory certificate's expiry (years away) while the hub used
// an operational one that expires in weeks would mislead the operator.
func (a *Agent) showCertInUse() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.status.CertKind, a.status.FactoryCertExpiry = "", time.Time{}
	inUse := a.id
	if a.op != nil {
		inUse = a.op
		a.status.CertKind = "operational"
		if leaf := a.id.Leaf(); leaf != nil {
			a.status.FactoryCertExpiry = leaf.NotAfter
		}
	} else if a.id != nil {
		a.status.CertKind = "factory"
	}
	if leaf := inUse.Leaf(); leaf != nil {
		a.status.CertExpiry = leaf.NotAfter
		a.status.CertSerial = fmt.Sprintf("%x", leaf.SerialNumber)
	}
}
