package agent

import (
	"context"
	"encoding/json"
	"time"
)

// LocalSink delivers what the hub pushes to local applications (the
// local API). Method reports ok=false when no application handles name.
type LocalSink interface {
	// MethodNames lists the direct methods local apps handle.
	MethodNames() []string
	C2D(m Message)
	Desired(patch []byte)
	Method(ctx context.Context, name string, payload []byte) (status int, response []byte, ok bool)
}

// SetLocal attaches the local API. Call it before Run.
func (a *Agent) SetLocal(l LocalSink) {
	a.mu.Lock()
	a.local = l
	a.mu.Unlock()
}

func (a *Agent) localSink() LocalSink {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.local
}

// builtinMethods are direct methods the agent answers itself.
var builtinMethods = []string{"reprovision", "devid.status"}

func (a *Agent) methodNames() []string {
	names := append([]string(nil), builtinMethods...)
	names = append(names, a.renewal.MethodNames()...)
	if l := a.localSink(); l != nil {
		names = append(names, l.MethodNames()...)
	}
	return names
}

// MethodAdded is called by the local API when an app subscribes to a new
// direct method, so a live connection starts routing it.
func (a *Agent) MethodAdded(name string) {
	a.mu.Lock()
	hub := a.hub
	a.mu.Unlock()
	if ma, ok := hub.(MethodAdder); ok {
		ma.AddMethod(name, a.onMethod)
	}
}

func (a *Agent) onC2D(m Message) {
	a.log.Debug("c2d message", "bytes", len(m.Body), "message_id", m.MessageID)
	if l := a.localSink(); l != nil {
		l.C2D(m)
	}
}

func (a *Agent) onDesired(patch []byte) {
	a.log.Debug("desired properties", "bytes", len(patch))
	if rep := a.renewal.Desired(patch); rep != nil {
		// Not from the hub's callback: Report waits for the hub's answer.
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := a.Report(ctx, rep); err != nil {
				a.log.Debug("renewal: report policy", "err", err)
			}
		}()
	}
	if l := a.localSink(); l != nil {
		l.Desired(patch)
	}
}

// methodTimeout stays below IoT Hub's default 30 s method timeout.
const methodTimeout = 25 * time.Second

// onMethod handles built-in direct methods and forwards the rest to the
// local applications.
func (a *Agent) onMethod(name string, payload []byte) (int, []byte) {
	a.log.Info("direct method", "name", name)
	switch name {
	case "reprovision":
		a.RequestReprovision()
		return 200, []byte(`{"result":"reprovisioning"}`)
	case "devid.status":
		b, _ := json.Marshal(a.Status())
		return 200, b
	}
	if st, resp, ok := a.renewal.Method(name, payload); ok {
		return st, resp
	}
	if l := a.localSink(); l != nil {
		ctx, cancel := context.WithTimeout(context.Background(), methodTimeout)
		defer cancel()
		if st, resp, ok := l.Method(ctx, name, payload); ok {
			return st, resp
		}
	}
	return 501, []byte(`{"error":"no handler for this method on the device"}`)
}

// Health is the built-in health report, sent as the reported property
// "devid" and as telemetry with the application property devid-health=1.
type Health struct {
	Version       string      `json:"version"`
	UptimeSeconds int64       `json:"uptime_s"`
	State         string      `json:"state"`
	CertExpiry    time.Time   `json:"cert_expiry,omitzero"`
	KeyBackend    string      `json:"key_backend,omitempty"`
	LastProvision interface{} `json:"last_provisioning,omitempty"`
	QueueDepth    uint64      `json:"queue_depth"`
	QueueDropped  uint64      `json:"queue_dropped"`
	// QueueCorrupt and QueueSetAside count damaged records skipped and
	// messages the hub refused for good (docs/agent.md).
	QueueCorrupt  uint64 `json:"queue_corrupt,omitempty"`
	QueueSetAside uint64 `json:"queue_set_aside,omitempty"`
	// RenewalPath is the renewal path in force (renewal.path, or what
	// "auto" chose; "auto" while it has not decided): "none" tells the
	// operator the certificate will simply expire (docs/field-problems.md,
	// row 3).
	RenewalPath string `json:"renewal_path"`
}

func (a *Agent) health() Health {
	s := a.Status()
	h := Health{
		Version:       s.Version,
		UptimeSeconds: int64(a.clock.Now().Sub(s.StartedAt) / time.Second),
		State:         s.State,
		CertExpiry:    s.CertExpiry,
		KeyBackend:    s.KeyBackend,
		QueueDepth:    s.Queue.Depth,
		QueueDropped:  s.Queue.Dropped,
		QueueCorrupt:  s.Queue.Corrupt,
		QueueSetAside: s.Queue.SetAside,
		RenewalPath:   a.renewal.PathName(),
	}
	if h.RenewalPath == "" {
		h.RenewalPath = "none"
	}
	if s.LastProvision != nil {
		h.LastProvision = s.LastProvision
	}
	return h
}

// healthLoop reports health on connect and then every health.interval.
func (a *Agent) healthLoop(ctx context.Context, conn HubConn) {
	for {
		h := a.health()
		h.State = Connected.String() // this loop runs only while connected
		body, _ := json.Marshal(h)
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if err := conn.Report(rctx, []byte(`{"devid":`+string(body)+`}`)); err != nil && ctx.Err() == nil {
			a.log.Warn("health reported properties not accepted", "err", err)
		}
		if err := conn.Send(rctx, Message{Body: body, ContentType: "application/json", ContentEncoding: "utf-8",
			Properties: map[string]string{"devid-health": "1"}}); err != nil && ctx.Err() == nil {
			a.log.Warn("health telemetry not accepted", "err", err)
		}
		cancel()
		iv := a.cfg.Health.Interval.D()
		if iv <= 0 || !a.sleep(ctx, iv) {
			return
		}
	}
}
