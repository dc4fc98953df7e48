package line

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"devid/enroll/factory"
	"devid/enroll/station"
	"devid/enroll/station/ca"
	"devid/enroll/station/jig"
	"devid/hal/serial"
)

// CA is what a station needs from its certificate authority: issuing
// (with the attest step's outcome), recording refusals, and the revocation
// checks and revocations of programmed boards. The local CA
// (enroll/station/ca) is one; all slots share it, so it must be safe for
// concurrent use.
type CA interface {
	jig.AttestingIssuer
	jig.Revoker
	jig.RevocationChecker
}

// Ledger is the read side of the issuance ledger the web page searches
// (enroll/station/ca's Local).
type Ledger interface {
	Issued(deviceID string) ([]ca.Record, error)
	Refused(deviceID string) ([]ca.Record, error)
}

// Options wire a station to its CA and its outputs.
type Options struct {
	// CA signs for every slot. Required.
	CA CA
	// Ledger, if set, answers the web page's ledger search.
	Ledger Ledger
	// Jig tunes each programming run (attestation, roots of programmed
	// boards, reissue).
	Jig jig.Options
	// Events receives one JSON object per line for each event (nil: none).
	Events io.Writer
	// Terminal receives the live per-slot lines (nil: none); TTY rewrites
	// them in place instead of printing one line per event.
	Terminal io.Writer
	TTY      bool
	// Boards, if positive, ends Run once that many boards have finished
	// (programmed, left alone or failed).
	Boards int
	// Open opens a slot's port (nil: hal/serial.Open at the configured
	// baud rate).
	Open func(path string, baud int) (serial.Port, error)
	// USB finds usb:SERIAL ports (zero: in the real /dev and /sys).
	USB serial.USBResolver
}

// Event types.
const (
	EventPlugged    = "plugged"
	EventStep       = "step"
	EventProgrammed = "programmed"
	EventFailed     = "failed"
	EventUnplugged  = "unplugged"
	// EventFault: the slot's port cannot be watched (a glob matching two
	// ports); it clears when the scan succeeds again.
	EventFault = "fault"
)

// Event is one thing that happened on a slot, as the JSON events carry
// it (docs/station.md).
type Event struct {
	Time    time.Time `json:"time"`
	Station string    `json:"station"`
	Slot    string    `json:"slot"`
	Type    string    `json:"event"`
	Port    string    `json:"port,omitempty"`
	// Step is the step finished (EventStep) or failed (EventFailed).
	Step     jig.Step `json:"step,omitempty"`
	Detail   string   `json:"detail,omitempty"`
	DeviceID string   `json:"device_id,omitempty"`
	Serial   string   `json:"serial,omitempty"`
	// AlreadyProgrammed: the board held a valid certificate from this
	// CA and was left alone.
	AlreadyProgrammed bool   `json:"already_programmed,omitempty"`
	Replaced          string `json:"replaced_serial,omitempty"`
	// Cause classifies a failure (EventFailed): see Causes.
	Cause string `json:"cause,omitempty"`
	Error string `json:"error,omitempty"`
	// StepMS is the step's duration, ElapsedMS the run's so far.
	StepMS        int64 `json:"step_ms,omitempty"`
	ElapsedMS     int64 `json:"elapsed_ms,omitempty"`
	BytesSent     int   `json:"bytes_sent,omitempty"`
	BytesReceived int   `json:"bytes_received,omitempty"`
}

// Slot states, as SlotView.State and the web page show them.
const (
	StateEmpty       = "empty"
	StatePlugged     = "plugged"
	StateProgramming = "programming"
	StateProgrammed  = "programmed"
	StateFailed      = "failed"
	StateFault       = "fault"
)

// SlotView is a slot as the terminal and the web page show it.
type SlotView struct {
	Name     string   `json:"name"`
	Port     string   `json:"port"`
	State    string   `json:"state"`
	Step     jig.Step `json:"step,omitempty"`
	DeviceID string   `json:"device_id,omitempty"`
	Serial   string   `json:"serial,omitempty"`
	Detail   string   `json:"detail,omitempty"`
	Cause    string   `json:"cause,omitempty"`
	// Plugged: a board is on the slot now.
	Plugged bool      `json:"plugged"`
	Since   time.Time `json:"since"`
}

// Yield counts the boards a station finished.
type Yield struct {
	// Programmed boards got a certificate; LeftAlone ones held a valid
	// one already.
	Programmed int `json:"programmed"`
	LeftAlone  int `json:"left_alone"`
	// Failed counts failures by cause.
	Failed map[string]int `json:"failed"`
}

// FailedTotal is the number of failed boards.
func (y Yield) FailedTotal() int {
	n := 0
	for _, v := range y.Failed {
		n += v
	}
	return n
}

// Finished is every board the station finished.
func (y Yield) Finished() int { return y.Programmed + y.LeftAlone + y.FailedTotal() }

// Percent is the share of finished boards that came out programmed
// (issued or left alone), 0..100; 0 with no board.
func (y Yield) Percent() float64 {
	if y.Finished() == 0 {
		return 0
	}
	return 100 * float64(y.Programmed+y.LeftAlone) / float64(y.Finished())
}

// Snapshot is the whole visible state of a station.
type Snapshot struct {
	Station  string     `json:"station"`
	Slots    []SlotView `json:"slots"`
	Yield    Yield      `json:"yield"`
	Failures []Event    `json:"failures"`
}

// maxFailures is how many recent failures a station keeps for its page.
const maxFailures = 20

// slot is one slot's run state; the fields are guarded by Station.mu.
type slot struct {
	cfg     SlotConfig
	pattern string
	// present is the board on the slot (zero: none), as the last scan saw it.
	present presence
	fault   string
	cancel  context.CancelFunc // of the run in progress, nil if none
	done    chan struct{}      // closed when the last run started ends
	view    SlotView
}

// Station programs the boards that arrive on its slots.
type Station struct {
	cfg     Config
	o       Options
	metrics *Metrics
	term    *terminal

	scanMu sync.Mutex // one scan at a time

	mu       sync.Mutex
	slots    []*slot
	yield    Yield
	failures []Event
	subs     map[chan []byte]struct{}
	serials  map[string]string // serial -> device ID, issued by this station
	runCtx   context.Context
	runs     sync.WaitGroup
	enough   chan struct{} // closed when Options.Boards boards have finished
	emitMu   sync.Mutex    // orders the event outputs
}

// New makes a station for cfg (as LoadConfig or ParseConfig returns it).
func New(cfg *Config, o Options) (*Station, error) {
	if o.CA == nil {
		return nil, errors.New("station: no CA")
	}
	c := *cfg
	if err := c.check(); err != nil {
		return nil, fmt.Errorf("station config: %w", err)
	}
	if o.Open == nil {
		o.Open = func(path string, baud int) (serial.Port, error) { return serial.Open(path, baud) }
	}
	s := &Station{cfg: c, o: o, metrics: newMetrics(), subs: map[chan []byte]struct{}{},
		serials: map[string]string{}, enough: make(chan struct{}), yield: Yield{Failed: map[string]int{}}}
	now := time.Now()
	for _, sc := range c.Slots {
		sl := &slot{cfg: sc, pattern: sc.pattern(c.SerialDir)}
		sl.view = SlotView{Name: sc.Name, Port: sl.pattern, State: StateEmpty, Since: now}
		s.slots = append(s.slots, sl)
	}
	if o.Terminal != nil {
		s.term = &terminal{w: o.Terminal, tty: o.TTY}
	}
	return s, nil
}

// Metrics are the station's Prometheus metrics.
func (s *Station) Metrics() *Metrics { return s.metrics }

// Run watches the slots and programs boards until ctx ends or
// Options.Boards boards have finished; then it stops the runs in progress
// (they fail with cause "stopped"), waits for them and returns the yield.
func (s *Station) Run(ctx context.Context) (Yield, error) {
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.mu.Lock()
	s.runCtx = runCtx
	s.mu.Unlock()
	if s.term != nil {
		s.redraw(Event{})
	}
	trigger, stopWatch, err := watchUevents(s.cfg.Watch)
	if err != nil {
		return s.Yield(), err
	}
	defer stopWatch()
	tick := time.NewTicker(s.cfg.ScanInterval)
	defer tick.Stop()
	s.ScanNow()
	for {
		select {
		case <-runCtx.Done():
		case <-s.enough:
		case <-tick.C:
			s.ScanNow()
			continue
		case <-trigger:
			s.ScanNow()
			continue
		}
		break
	}
	cancel()
	s.mu.Lock()
	s.runCtx = nil
	s.mu.Unlock()
	s.runs.Wait()
	return s.Yield(), nil
}

// ScanNow looks at every slot once: a board that appeared starts a run, a
// board that left ends its run. Run calls it on every tick and uevent.
// Outside Run it only records (and reports) what is plugged: those boards
// count as seen, and are programmed once they leave and come back.
func (s *Station) ScanNow() {
	s.scanMu.Lock()
	defer s.scanMu.Unlock()
	for _, sl := range s.slots {
		p, err := resolve(sl.pattern, s.o.USB)
		s.mu.Lock()
		if err != nil {
			if sl.fault != err.Error() {
				sl.fault = err.Error()
				s.mu.Unlock()
				s.emit(sl, Event{Type: EventFault, Error: err.Error(), Cause: "port"})
				continue
			}
			s.mu.Unlock()
			continue
		}
		wasFault := sl.fault != ""
		sl.fault = ""
		if p == sl.present {
			s.mu.Unlock()
			if wasFault {
				st := StateEmpty
				if p.path != "" {
					st = StatePlugged
				}
				s.setState(sl, st)
			}
			continue
		}
		old := sl.present
		sl.present = p
		if sl.cancel != nil {
			sl.cancel() // the board it was programming left
		}
		runCtx := s.runCtx
		s.mu.Unlock()
		if old.path != "" {
			s.emit(sl, Event{Type: EventUnplugged, Port: old.path})
		}
		if p.path == "" {
			continue
		}
		s.emit(sl, Event{Type: EventPlugged, Port: p.path})
		if runCtx == nil || runCtx.Err() != nil {
			continue
		}
		s.start(runCtx, sl, p.path)
	}
}

// start begins a run on sl once its previous run has ended.
func (s *Station) start(parent context.Context, sl *slot, path string) {
	ctx, cancel := context.WithCancelCause(parent)
	s.mu.Lock()
	prev := sl.done
	done := make(chan struct{})
	sl.done = done
	sl.cancel = func() { cancel(errUnplugged) }
	s.mu.Unlock()
	s.runs.Add(1)
	go func() {
		defer s.runs.Done()
		defer close(done)
		defer cancel(nil)
		if prev != nil {
			<-prev
		}
		ev := s.runSlot(ctx, sl, path)
		s.mu.Lock()
		if sl.done == done {
			sl.cancel = nil
		}
		s.mu.Unlock()
		s.finish(sl, ev)
	}()
}

var errUnplugged = errors.New("board unplugged during the run")

// runSlot programs the board on path and returns the final event. A
// panic anywhere in the run is a failure of this slot only.
func (s *Station) runSlot(ctx context.Context, sl *slot, path string) (ev Event) {
	start := time.Now()
	step := jig.Step("open")
	defer func() {
		if r := recover(); r != nil {
			ev = Event{Type: EventFailed, Port: path, Step: step, Cause: "panic",
				Error: fmt.Sprintf("panic: %v\n%s", r, debug.Stack())}
		}
		ev.ElapsedMS = time.Since(start).Milliseconds()
	}()
	port, err := s.o.Open(path, s.cfg.Baud)
	if err != nil {
		cause := CausePort
		if errors.Is(err, fs.ErrNotExist) || errors.Is(context.Cause(ctx), errUnplugged) {
			// Gone between the scan that found it and the open: the
			// board left (a USB board resetting comes back elsewhere).
			cause = CauseUnplugged
		}
		return Event{Type: EventFailed, Port: path, Step: step, Cause: cause, Error: err.Error()}
	}
	defer port.Close()
	j := jig.New(port)
	j.ReplyTimeout, j.Retries = s.cfg.ReplyTimeout, s.cfg.Retries
	last := start
	step = jig.StepHello
	iss := &timedCA{CA: s.o.CA, observe: s.metrics.issuance.Observe}
	res, err := jig.ProgramWith(ctx, j, iss, s.o.Jig, func(st jig.Step, msg string) {
		now := time.Now()
		d := now.Sub(last)
		last = now
		s.metrics.step.WithLabelValues(string(st)).Observe(d.Seconds())
		s.emit(sl, Event{Type: EventStep, Port: path, Step: st, Detail: msg, StepMS: d.Milliseconds(),
			ElapsedMS: now.Sub(start).Milliseconds()})
		step = nextStep(st)
	})
	if err != nil {
		var se *jig.StepError
		if errors.As(err, &se) {
			step = se.Step
		}
		return Event{Type: EventFailed, Port: path, Step: step, Cause: causeOf(ctx, err), Error: err.Error(),
			BytesSent: j.Sent, BytesReceived: j.Received}
	}
	return Event{Type: EventProgrammed, Port: path, DeviceID: res.DeviceID, Serial: res.Serial,
		AlreadyProgrammed: res.AlreadyProgrammed, Replaced: res.Replaced,
		BytesSent: res.BytesSent, BytesReceived: res.BytesReceived}
}

// nextStep is the step that runs after s, for naming the step a panic
// happened in.
func nextStep(s jig.Step) jig.Step {
	order := []jig.Step{jig.StepHello, jig.StepCSR, jig.StepAttest, jig.StepSign, jig.StepInstall, jig.StepStatus, jig.StepRevoke}
	for i, o := range order[:len(order)-1] {
		if o == s {
			return order[i+1]
		}
	}
	return s
}

// Causes of failure, as Event.Cause and the failed-boards metric carry
// them. A device's refusal is "nak-" and its reason word when the reason
// is one docs/factory-protocol.md defines, "nak" otherwise.
const (
	CauseUnplugged = "unplugged" // the board left during its run
	CauseStopped   = "stopped"   // the station stopped during the run
	CauseNoReply   = "no-reply"  // no valid reply after every retry (dead board, garbage on the line)
	CausePort      = "port"      // the port could not be opened or failed
	// CauseAttest starts the cause of a board the attest step refused:
	// "attest:" and the refusal reason (jig.Refusal: not-offered,
	// no-ek-cert, ek-untrusted, nonce, activation-failed, ...).
	CauseAttest  = "attest:"
	CausePolicy  = "policy"   // the CA policy refused the CSR
	CauseIDTaken = "id-taken" // the device ID holds a certificate for another key
	CausePanic   = "panic"    // a bug: the slot's run panicked
	CauseError   = "error"    // anything else (the message says what)
)

var nakReasons = map[string]bool{
	factory.ReasonUnknown: true, factory.ReasonArgs: true, factory.ReasonState: true, factory.ReasonOffset: true,
	factory.ReasonSize: true, factory.ReasonDigest: true, factory.ReasonCert: true, factory.ReasonRefused: true,
	factory.ReasonToken: true, factory.ReasonInternal: true, factory.ReasonUnsupported: true, factory.ReasonAttest: true,
}

// causeOf classifies a run's error into a small, fixed set of causes (a
// metric label).
func causeOf(ctx context.Context, err error) string {
	var nk *jig.NAKError
	var r *jig.Refusal
	switch {
	case errors.Is(context.Cause(ctx), errUnplugged), errors.Is(err, serial.ErrHangup):
		return CauseUnplugged
	case ctx.Err() != nil:
		return CauseStopped
	case errors.As(err, &r):
		return CauseAttest + attestReason(r.Reason)
	case errors.Is(err, ca.ErrPolicy):
		return CausePolicy
	case errors.Is(err, ca.ErrIDTaken):
		return CauseIDTaken
	case errors.As(err, &nk):
		if nakReasons[nk.Reason] {
			return "nak-" + nk.Reason
		}
		return "nak"
	case errors.Is(err, jig.ErrNoReply):
		return CauseNoReply
	case errors.Is(err, serial.ErrClosed):
		return CausePort
	}
	return CauseError
}

// attestReason keeps the reason of an attest refusal a short word, as it
// becomes a metric label: the reasons are stable codes, but a Verifier
// is outside code.
func attestReason(r string) string {
	if r == "" || len(r) > 32 || strings.ContainsFunc(r, func(c rune) bool { return !(c == '-' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') }) {
		return "other"
	}
	return r
}

// finish records a run's final event.
func (s *Station) finish(sl *slot, ev Event) {
	s.mu.Lock()
	switch {
	case ev.Type == EventProgrammed && ev.AlreadyProgrammed:
		s.yield.LeftAlone++
		s.metrics.leftAlone.Inc()
	case ev.Type == EventProgrammed:
		s.yield.Programmed++
		s.metrics.programmed.Inc()
		s.serials[ev.Serial] = ev.DeviceID
	default:
		s.yield.Failed[ev.Cause]++
		s.metrics.failed.WithLabelValues(string(ev.Step), ev.Cause).Inc()
	}
	n := s.yield.Finished()
	s.mu.Unlock()
	s.emit(sl, ev)
	if s.o.Boards > 0 && n == s.o.Boards {
		close(s.enough)
	}
}

// emit stamps ev, applies it to the slot's view, and sends it to every
// output.
func (s *Station) emit(sl *slot, ev Event) {
	s.emitMu.Lock()
	defer s.emitMu.Unlock()
	ev.Time = time.Now().UTC()
	ev.Station, ev.Slot = s.cfg.Station, sl.cfg.Name
	s.mu.Lock()
	v := &sl.view
	switch ev.Type {
	case EventPlugged:
		*v = SlotView{Name: v.Name, Port: ev.Port, State: StatePlugged, Plugged: true, Since: ev.Time}
	case EventStep:
		v.State, v.Step, v.Detail = StateProgramming, ev.Step, ev.Detail
		if ev.Step == jig.StepHello {
			v.DeviceID = helloID(ev.Detail)
		}
		if ev.Step == jig.StepSign {
			v.Serial = serialOf(ev.Detail)
		}
	case EventProgrammed:
		v.State, v.Step, v.DeviceID, v.Serial, v.Cause, v.Since = StateProgrammed, "", ev.DeviceID, ev.Serial, "", ev.Time
		v.Detail = "programmed"
		if ev.AlreadyProgrammed {
			v.Detail = "programmed already: left alone"
		}
	case EventFailed:
		v.State, v.Step, v.Cause, v.Detail, v.Since = StateFailed, ev.Step, ev.Cause, ev.Error, ev.Time
		ev.DeviceID = v.DeviceID
		s.failures = append(s.failures, ev)
		if len(s.failures) > maxFailures {
			s.failures = s.failures[len(s.failures)-maxFailures:]
		}
	case EventUnplugged:
		// The last outcome stays visible until the next board.
		v.Plugged, v.Port = false, sl.pattern
		if v.State != StateFailed && v.State != StateProgrammed {
			*v = SlotView{Name: v.Name, Port: sl.pattern, State: StateEmpty, Since: ev.Time}
		}
	case EventFault:
		v.State, v.Detail, v.Cause, v.Since = StateFault, ev.Error, ev.Cause, ev.Time
	}
	s.mu.Unlock()
	if s.o.Events != nil {
		writeJSONLine(s.o.Events, ev)
	}
	s.redraw(ev)
	s.broadcast()
}

// setState changes a slot's state without an event (a fault cleared).
func (s *Station) setState(sl *slot, state string) {
	s.emitMu.Lock()
	defer s.emitMu.Unlock()
	s.mu.Lock()
	sl.view.State, sl.view.Detail, sl.view.Cause, sl.view.Since = state, "", "", time.Now().UTC()
	s.mu.Unlock()
	s.redraw(Event{})
	s.broadcast()
}

// Snapshot returns the station's visible state.
func (s *Station) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := Snapshot{Station: s.cfg.Station, Yield: s.yieldLocked(), Failures: append([]Event{}, s.failures...)}
	for _, sl := range s.slots {
		snap.Slots = append(snap.Slots, sl.view)
	}
	return snap
}

// Yield returns the boards finished so far.
func (s *Station) Yield() Yield {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.yieldLocked()
}

func (s *Station) yieldLocked() Yield {
	y := s.yield
	y.Failed = make(map[string]int, len(s.yield.Failed))
	for k, v := range s.yield.Failed {
		y.Failed[k] = v
	}
	return y
}

// Summary is the exit summary: the yield and the failures by cause.
func (y Yield) Summary(station string) string {
	s := fmt.Sprintf("station %s: %d boards: %d programmed, %d left alone (programmed already), %d failed; yield %.1f%%\n",
		station, y.Finished(), y.Programmed, y.LeftAlone, y.FailedTotal(), y.Percent())
	causes := make([]string, 0, len(y.Failed))
	for c := range y.Failed {
		causes = append(causes, c)
	}
	sort.Strings(causes)
	for _, c := range causes {
		s += fmt.Sprintf("  failed %-12s %d\n", c, y.Failed[c])
	}
	return s
}

// timedCA is the CA with its issuance latency (signing and the ledger's
// durable write) observed.
type timedCA struct {
	CA
	observe func(float64)
}

func (t *timedCA) Issue(ctx context.Context, req *x509.CertificateRequest) ([]*x509.Certificate, error) {
	start := time.Now()
	defer func() { t.observe(time.Since(start).Seconds()) }()
	return t.CA.Issue(ctx, req)
}

func (t *timedCA) IssueAttested(ctx context.Context, req *x509.CertificateRequest, a station.Attestation) ([]*x509.Certificate, error) {
	start := time.Now()
	defer func() { t.observe(time.Since(start).Seconds()) }()
	return t.CA.IssueAttested(ctx, req, a)
}

// helloID and serialOf pick the device ID and the serial out of the
// jig's progress lines ("device ID, protocol ...", "serial S, valid ...").
func helloID(msg string) string {
	var id string
	if _, err := fmt.Sscanf(msg, "device %s", &id); err != nil {
		return ""
	}
	return strings.TrimSuffix(id, ",")
}

func serialOf(msg string) string {
	var sn string
	if _, err := fmt.Sscanf(msg, "serial %s", &sn); err != nil {
		return ""
	}
	return strings.TrimSuffix(sn, ",")
}
