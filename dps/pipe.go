package dps

import (
	"errors"
	"fmt"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// pipe is a session's QoS 1 telemetry pipeline for SendTelemetryAsync:
// one goroutine hands the publishes to paho in order, another waits for
// their PUBACKs oldest first (a QoS 1 broker acknowledges in the order it
// received, MQTT 3.1.1 section 4.6) and calls each done. Under load this
// costs two goroutines per connection instead of one goroutine, one
// context and one timer per message, which was a fifth of the agent's
// CPU per message (docs/benchmarks.md).
type pipe struct {
	s *session

	mu     sync.Mutex
	queue  []*pubReq // accepted, not handed to paho yet
	flight []*pubReq // handed to paho, oldest first
	err    error     // once set (the session is lost), every request fails with it

	pubWake chan struct{}
	ackWake chan struct{}
}

// pubReq is one SendTelemetryAsync call.
type pubReq struct {
	topic   string
	payload []byte
	timeout time.Duration
	done    func(error)

	tok      mqtt.Token
	deadline time.Time
}

func newPipe(s *session) *pipe {
	p := &pipe{s: s, pubWake: make(chan struct{}, 1), ackWake: make(chan struct{}, 1)}
	go p.publisher()
	go p.acker()
	return p
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// submit queues r, or fails it at once (from another goroutine: done
// never runs on the caller's) when the session is gone.
func (p *pipe) submit(r *pubReq) {
	p.mu.Lock()
	if err := p.err; err != nil {
		p.mu.Unlock()
		go r.done(err)
		return
	}
	p.queue = append(p.queue, r)
	p.mu.Unlock()
	wake(p.pubWake)
}

// publisher hands queued requests to paho, in order. paho's Publish
// waits until its writer takes the packet, so this goroutine is where a
// dying connection holds a publish (up to writeTimeout), not the caller.
func (p *pipe) publisher() {
	for {
		select {
		case <-p.pubWake:
		case <-p.s.lost:
			return
		}
		p.mu.Lock()
		batch := p.queue
		p.queue = nil
		p.mu.Unlock()
		for i, r := range batch {
			r.tok = p.s.cli.Publish(r.topic, 1, false, r.payload)
			r.deadline = time.Now().Add(r.timeout)
			p.mu.Lock()
			if err := p.err; err != nil {
				p.mu.Unlock()
				for _, r := range batch[i:] {
					r.done(err)
				}
				return
			}
			p.flight = append(p.flight, r)
			p.mu.Unlock()
			wake(p.ackWake)
		}
	}
}

// acker waits for the oldest publish's PUBACK, its timeout, or the loss
// of the session, which fails everything left.
func (p *pipe) acker() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		p.mu.Lock()
		var head *pubReq
		if len(p.flight) > 0 {
			head = p.flight[0]
		}
		p.mu.Unlock()
		if head == nil {
			select {
			case <-p.ackWake:
				continue
			case <-p.s.lost:
				p.fail(p.s.lostErr)
				return
			}
		}
		timer.Reset(time.Until(head.deadline))
		var err error
		select {
		case <-head.tok.Done():
			if err = head.tok.Error(); err != nil {
				// paho's word for a lost connection: report the loss
				// once the session knows it, or paho's at the deadline.
				select {
				case <-p.s.lost:
					p.fail(p.s.lostErr)
					return
				case <-timer.C:
				}
			}
		case <-timer.C:
			err = fmt.Errorf("%w: no PUBACK within %v", ErrPublishTimeout, head.timeout)
		case <-p.s.lost:
			p.fail(p.s.lostErr)
			return
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		p.mu.Lock()
		p.flight = p.flight[1:]
		p.mu.Unlock()
		head.done(err)
	}
}

// fail ends the pipe: every request accepted and not answered gets err,
// and so does every later one.
func (p *pipe) fail(err error) {
	p.mu.Lock()
	p.err = err
	left := append(p.flight, p.queue...)
	p.flight, p.queue = nil, nil
	p.mu.Unlock()
	for _, r := range left {
		r.done(err)
	}
}

// ErrPublishTimeout: a QoS 1 publish got no PUBACK in time while the
// connection stayed up (SendTelemetryAsync).
var ErrPublishTimeout = errors.New("dps: publish not acknowledged")

// SendTelemetryAsync publishes m at QoS 1 and returns at once; done is
// called once, never on the caller's goroutine: with nil after the hub's
// PUBACK, with an ErrPublishTimeout error when none came within timeout
// while the connection stayed up, or with the cause when the connection
// dropped first (the message may or may not have arrived: send it again
// on the next connection). Publishes go out in call order. The caller
// bounds how many are outstanding.
func (h *Hub) SendTelemetryAsync(m *Message, timeout time.Duration, done func(error)) {
	topic, err := h.telemetryTopic(m)
	if err != nil {
		go done(err)
		return
	}
	s, err := h.session()
	if err != nil {
		go done(err)
		return
	}
	h.stats.inflight.Add(1)
	s.pipeOnce.Do(func() { s.pipe = newPipe(s) })
	s.pipe.submit(&pubReq{topic: topic, payload: m.Payload, timeout: timeout, done: func(err error) {
		h.stats.inflight.Add(-1)
		if err == nil {
			h.stats.sent.Add(1)
		}
		done(err)
	}})
}
