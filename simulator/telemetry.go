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
}

func newTelemetryLog(db *store, max int) *telemetryLog {
	return &telemetryLog{db: db, max: max, cond: sync.NewCond(&sync.Mutex{})}
}

// append stores rec with the next sequence number; it is durable when
// append returns. Readers are woken by wake.
func (l *telemetryLog) append(rec *simapi.TelemetryRecord) error {
	return l.db.appendTelemetry(rec, l.max)
}

// query returns up to limit records after seq that satisfy match.
func (l *telemetryLog) query(after uint64, limit int, match func(*simapi.TelemetryRecord) bool) ([]simapi.TelemetryRecord, error) {
	return l.db.telemetry(after, limit, match)
}

// clear drops every record; sequence numbers keep increasing.
func (l *telemetryLog) clear() error { return l.db.clearTelemetry() }

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
