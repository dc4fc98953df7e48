package agent

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"devid/agent/queue"
	"devid/hal/clock"
)

// sendWindow is how many telemetry messages may wait for a PUBACK at
// once. The window is counted from the ack cursor on disk, not from the
// last PUBACK, so a crash makes the agent send at most this many
// messages again. It must cover the hub's round trip at the rate the
// agent sustains: a hub stores a message durably before its PUBACK, and
// its store commits what arrived meanwhile with one fsync, so the more in
// flight, the fewer fsyncs per message (docs/benchmarks.md).
const sendWindow = 64

// maxSendTries is how many times in a row the oldest message in flight
// may fail (its connection lost, no PUBACK, while nothing sent after it
// succeeded) before it is set aside as one the hub refuses for good.
const maxSendTries = 5

// sendTries follows the oldest failing message across connections.
type sendTries struct {
	mu  sync.Mutex
	seq uint64
	n   int
}

// failed records a failed send of seq, the oldest in flight, and reports
// whether it has now failed maxSendTries times in a row.
func (s *sendTries) failed(seq uint64) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seq != seq {
		s.seq, s.n = seq, 0
	}
	s.n++
	return s.n, s.n >= maxSendTries
}

// succeeded records a PUBACK for seq: one after the failing message means
// the path works, so the failures were not the message's fault.
func (s *sendTries) succeeded(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq >= s.seq {
		s.seq, s.n = 0, 0
	}
}

// QueueInfoFrom is the status view of the queue's counters.
func QueueInfoFrom(qs queue.Stats) QueueInfo {
	return QueueInfo{Depth: qs.Depth, Bytes: qs.Bytes, Dropped: qs.Dropped, Corrupt: qs.Corrupt, SetAside: qs.SetAside, CursorSetAside: qs.CursorSetAside,
		Memory: qs.Memory, DiskError: qs.DiskError}
}

// setAside takes seq out of the queue for good and says so.
func (a *Agent) setAside(seq uint64, payload []byte, why string, cause error) {
	err := a.queue.SetAside(seq, payload)
	a.log.Error("telemetry message set aside: the hub refuses it", "seq", seq, "why", why, "cause", fmt.Sprint(cause),
		"kept_in", "queue/setaside.log", "err", err)
}

// sendLoop drains the durable queue to the hub with a bounded window of
// unacknowledged messages; each is acked in the queue only after PUBACK.
func (a *Agent) sendLoop(ctx context.Context, conn HubConn) {
	sem := make(chan struct{}, sendWindow)
	var after uint64
	// A Send that fails while the connection stays up (a PUBACK that
	// never came) is retried on this connection: the loop rewinds to the
	// lowest such seq instead of leaving it until the next reconnect.
	var (
		mu        sync.Mutex
		inflight  = map[uint64]bool{}
		retryFrom uint64 // 0: nothing to retry
	)
	oldestInFlight := func(seq uint64) bool {
		for s := range inflight {
			if s < seq {
				return false
			}
		}
		return true
	}
	kick := make(chan struct{}, 1)
	for ctx.Err() == nil {
		mu.Lock()
		rewind := retryFrom != 0
		if rewind && retryFrom <= after {
			after = retryFrom - 1
		}
		retryFrom = 0
		mu.Unlock()
		if rewind && !a.sleep(ctx, a.cfg.Retry.MinDelay.D()) {
			// Paced: a hub that keeps failing sends is not hammered.
			return
		}
		// Only what is within the window of the cursor on disk.
		recs, err := a.queue.NextUpTo(after, a.queue.SendLimit(sendWindow), sendWindow, 1<<20)
		if err != nil {
			a.log.Error("read telemetry queue", "err", err)
			if !a.sleep(ctx, time.Second) {
				return
			}
			continue
		}
		if len(recs) == 0 {
			// Safety net: re-scan in case a notification was consumed
			// while the window was full.
			rescan, stop := clock.After(a.clock, 5*time.Second)
			select {
			case <-a.queue.Notify():
			case <-kick:
			case <-ctx.Done():
				stop()
				return
			case <-rescan:
			}
			stop()
			continue
		}
		for _, r := range recs {
			after = r.Seq
			mu.Lock()
			busy := inflight[r.Seq]
			mu.Unlock()
			if busy {
				continue // still waiting for its PUBACK
			}
			var m Message
			if err := json.Unmarshal(r.Payload, &m); err != nil {
				a.setAside(r.Seq, r.Payload, "undecodable", err)
				continue
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			mu.Lock()
			inflight[r.Seq] = true
			mu.Unlock()
			seq, payload := r.Seq, r.Payload
			send(ctx, conn, m, func(err error) {
				defer func() { <-sem }()
				if err == nil {
					mu.Lock()
					delete(inflight, seq)
					mu.Unlock()
					a.sendTries.succeeded(seq)
					a.queue.Ack(seq)
					a.mu.Lock()
					a.sent++
					a.mu.Unlock()
					return
				}
				if ctx.Err() != nil && !closed(conn.Done()) {
					// The agent is stopping, or the state changed.
					mu.Lock()
					delete(inflight, seq)
					mu.Unlock()
					return
				}
				mu.Lock()
				oldest := oldestInFlight(seq)
				delete(inflight, seq)
				mu.Unlock()
				var n int
				var give bool
				if oldest {
					n, give = a.sendTries.failed(seq)
				}
				switch {
				case a.opt.Cloud.Classify(err) == ClassFatal:
					// Refused before it left (over the hub's limits): no
					// try can ever succeed.
					a.setAside(seq, payload, "refused by the hub client", err)
				case give:
					a.setAside(seq, payload, fmt.Sprintf("%d sends in a row failed", n), err)
				default:
					// Not acked: sent again on this connection (below) or
					// after the reconnect.
					a.log.Debug("telemetry not acknowledged", "seq", seq, "tries", n, "err", err)
					mu.Lock()
					if !closed(conn.Done()) && (retryFrom == 0 || seq < retryFrom) {
						retryFrom = seq
					}
					mu.Unlock()
				}
				select {
				case kick <- struct{}{}:
				default:
				}
			})
		}
	}
}

// sendTimeout is how long a publish may wait for its PUBACK while the
// connection stays up before it counts as failed and is sent again.
const sendTimeout = 60 * time.Second

// send publishes m and calls done with the outcome, once, on another
// goroutine: through the connection's pipeline when it has one (no
// goroutine, context or timer per message), else on a goroutine of its
// own.
func send(ctx context.Context, conn HubConn, m Message, done func(error)) {
	if as, ok := conn.(AsyncSender); ok {
		as.SendAsync(m, sendTimeout, done)
		return
	}
	go func() {
		sctx, cancel := context.WithTimeout(ctx, sendTimeout)
		defer cancel()
		done(conn.Send(sctx, m))
	}()
}

// closed reports whether ch is closed (without blocking).
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// memoryQueueBytes bounds the telemetry kept in memory while the disk
// refuses writes (agent/queue/memory.go): a quarter of the queue's disk
// bound, at most 4 MiB, so a board with little RAM is not starved.
func memoryQueueBytes(diskBytes int64) int64 {
	return min(diskBytes/4, 4<<20)
}

// newMessageID is a random UUID (version 4), the form the Azure SDKs give
// $.mid.
func newMessageID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
