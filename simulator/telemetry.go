package simulator

import (
	"context"
	"sync"
	"time"

	"devid/simulator/simapi"
)

// telemetryLog is the record of device-to-cloud messages: kept in the
// store (the oldest dropped beyond max) and long-polled by the control
// plane, which wait wakes when a message arrives.
type telemetryLog struct {
	db   *store
	max  int
	cond *sync.Cond

	// mids counts recorded messages by hub, device and $.mid, so a resend
	// is marked as a duplicate. Loaded from the store on first use; it
	// keeps counting messages the store has since trimmed.
	mmu        sync.Mutex
	mids       map[string]int
	midsLoaded bool
}

func newTelemetryLog(db *store, max int) *telemetryLog {
	return &telemetryLog{db: db, max: max, cond: sync.NewCond(&sync.Mutex{})}
}

// append stores rec with the next sequence number, counting earlier
// records with its MessageID into rec.Duplicates; it is durable when
// append returns. Readers are woken by wake.
func (l *telemetryLog) append(rec *simapi.TelemetryRecord) error {
	done := make(chan error, 1)
	l.appendAsync(rec, func(err error) { done <- err })
	return <-done
}

// appendAsync is append that returns at once: then is called (on the
// store's committer, so it must not block) once rec is durable, or with
// why it could not be stored. Records of one caller are stored in the
// order of their calls. mmu is never held while waiting for the store:
// then takes it when a write fails.
func (l *telemetryLog) appendAsync(rec *simapi.TelemetryRecord, then func(error)) {
	if rec.MessageID == "" {
		l.db.appendTelemetryAsync(rec, l.max, then)
		return
	}
	l.mmu.Lock()
	if !l.midsLoaded || l.max > 0 && len(l.mids) > 2*l.max {
		if err := l.loadMids(); err != nil {
			l.mmu.Unlock()
			then(err)
			return
		}
	}
	// Counted now, in arrival order; taken back if the write fails.
	k := midKey(rec)
	rec.Duplicates = l.mids[k]
	l.mids[k]++
	l.mmu.Unlock()
	l.db.appendTelemetryAsync(rec, l.max, func(err error) {
		if err != nil {
			l.mmu.Lock()
			if l.mids != nil && l.mids[k] > 0 {
				l.mids[k]--
			}
			l.mmu.Unlock()
		}
		then(err)
	})
}

func midKey(r *simapi.TelemetryRecord) string {
	return r.Hub + "\x00" + r.DeviceID + "\x00" + r.MessageID
}

// loadMids counts the stored records by message ID; the caller holds mmu.
func (l *telemetryLog) loadMids() error {
	mids := map[string]int{}
	if _, err := l.db.telemetry(0, 0, func(r *simapi.TelemetryRecord) bool {
		if r.MessageID != "" {
			mids[midKey(r)]++
		}
		return false
	}); err != nil {
		return err
	}
	l.mids, l.midsLoaded = mids, true
	return nil
}

// query returns up to limit records after seq that satisfy match.
func (l *telemetryLog) query(after uint64, limit int, match func(*simapi.TelemetryRecord) bool) ([]simapi.TelemetryRecord, error) {
	return l.db.telemetry(after, limit, match)
}

// clear drops every record and every duplicate count; sequence numbers
// keep increasing.
func (l *telemetryLog) clear() error {
	l.mmu.Lock()
	defer l.mmu.Unlock()
	l.mids, l.midsLoaded = nil, false
	return l.db.clearTelemetry()
}

// wake wakes every wait.
func (l *telemetryLog) wake() {
	l.cond.L.Lock()
	l.cond.Broadcast()
	l.cond.L.Unlock()
}

// wait blocks until new telemetry arrives, at most d (and at most a
// second, so callers re-check their deadline) or until ctx ends.
func (l *telemetryLog) wait(ctx context.Context, d time.Duration) {
	done := make(chan struct{})
	t := time.AfterFunc(min(d, time.Second), l.wake)
	defer t.Stop()
	go func() {
		select {
		case <-ctx.Done():
			l.wake()
		case <-done:
		}
	}()
	l.cond.L.Lock()
	l.cond.Wait()
	l.cond.L.Unlock()
	close(done)
}
