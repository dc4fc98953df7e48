package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"devid/hal/clock/clocktest"
	"devid/simulator/simproc"
)

// sim is a running devid-sim and a client for its control plane. The
// harness's verdicts come from here: what the service itself recorded.
type sim struct {
	proc  *simproc.Proc
	ready simproc.Ready
	http  *http.Client
}

func startSim(ctx context.Context, bin, dir string) (*sim, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dir, "..", "sim.log"))
	if err != nil {
		return nil, err
	}
	p, err := simproc.Start(ctx, bin, []string{"serve", "--state", dir}, simproc.Options{
		Stderr:      logFile,
		Stdout:      logFile,
		Timeout:     30 * time.Second,
		SysProcAttr: childAttr(),
	})
	if err != nil {
		return nil, fmt.Errorf("%w (see %s)", err, logFile.Name())
	}
	s := &sim{proc: p, ready: p.Ready, http: &http.Client{Timeout: 30 * time.Second}}
	if s.ready.DPS.Addr == "" || len(s.ready.Hubs) == 0 || s.ready.ControlURL == "" {
		s.stop()
		return nil, fmt.Errorf("devid-sim ready line lacks dps.addr, hubs or control_url: %+v", s.ready)
	}
	return s, nil
}

func (s *sim) stop() { s.proc.Stop() }

// call does one control-plane request. A 404 gives found=false, no error.
func (s *sim) call(ctx context.Context, method, path string, in, out any) (found bool, err error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return false, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.ready.ControlURL+path, body)
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	if err := s.ready.Authorize(req); err != nil {
		return false, err
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if resp.StatusCode == http.StatusNotFound {
		return false, nil
	}
	if resp.StatusCode/100 != 2 {
		return false, fmt.Errorf("sim %s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return true, fmt.Errorf("sim %s %s: %w", method, path, err)
		}
	}
	return true, nil
}

// enrollGroup anchors an enrollment group on the factory CA certificate.
func (s *sim) enrollGroup(ctx context.Context, id string, caPEM []byte) error {
	body := map[string]any{
		"enrollmentGroupId":  id,
		"provisioningStatus": "enabled",
		"attestation": map[string]any{"type": "x509", "x509": map[string]any{
			"signingCertificates": map[string]any{"primary": map[string]any{"certificate": string(caPEM)}}}},
	}
	_, err := s.call(ctx, "PUT", "/enrollmentGroups/"+url.PathEscape(id), body, nil)
	return err
}

type registration struct {
	RegistrationID string `json:"registrationId"`
	AssignedHub    string `json:"assignedHub"`
	DeviceID       string `json:"deviceId"`
	Status         string `json:"status"`
	LastUpdated    string `json:"lastUpdatedDateTimeUtc"`
	Etag           string `json:"etag"`
	X509           struct {
		EnrollmentGroupID string `json:"enrollmentGroupId"`
		CertificateInfo   struct {
			SHA256Thumbprint string `json:"sha256Thumbprint"`
			SerialNumber     string `json:"serialNumber"`
		} `json:"certificateInfo"`
	} `json:"x509"`
}

func (s *sim) registration(ctx context.Context, regID string) (*registration, error) {
	var r registration
	found, err := s.call(ctx, "GET", "/registrations/"+url.PathEscape(regID), nil, &r)
	if err != nil || !found {
		return nil, err
	}
	return &r, nil
}

type hubDevice struct {
	DeviceID        string `json:"deviceId"`
	ConnectionState string `json:"connectionState"`
	Status          string `json:"status"`
}

func (s *sim) device(ctx context.Context, hub, id string) (*hubDevice, error) {
	var d hubDevice
	found, err := s.call(ctx, "GET", "/hubs/"+url.PathEscape(hub)+"/devices/"+url.PathEscape(id), nil, &d)
	if err != nil || !found {
		return nil, err
	}
	return &d, nil
}

type telemetryRecord struct {
	Seq         uint64 `json:"seq"`
	Hub         string `json:"hub"`
	DeviceID    string `json:"deviceId"`
	ReceivedUtc string `json:"receivedUtc"`
	Body        string `json:"body"`
}

func (s *sim) telemetry(ctx context.Context, deviceID string, wait time.Duration) ([]telemetryRecord, error) {
	var recs []telemetryRecord
	q := url.Values{"deviceId": {deviceID}, "min": {"1"}, "wait": {wait.String()}}
	_, err := s.call(ctx, "GET", "/sim/telemetry?"+q.Encode(), nil, &recs)
	return recs, err
}

type connection struct {
	Endpoint string `json:"endpoint"`
	ID       string `json:"id"`
}

func (s *sim) connections(ctx context.Context) ([]connection, error) {
	var cs []connection
	_, err := s.call(ctx, "GET", "/sim/connections", nil, &cs)
	return cs, err
}

func (s *sim) addFault(ctx context.Context, f map[string]any) (string, error) {
	var out struct {
		ID string `json:"id"`
	}
	_, err := s.call(ctx, "POST", "/sim/faults", f, &out)
	return out.ID, err
}

// faultApplied says how often the simulator has applied fault id.
func (s *sim) faultApplied(ctx context.Context, id string) (int, error) {
	var fs []struct {
		ID      string `json:"id"`
		Applied int    `json:"applied"`
	}
	if _, err := s.call(ctx, "GET", "/sim/faults", nil, &fs); err != nil {
		return 0, err
	}
	for _, f := range fs {
		if f.ID == id {
			return f.Applied, nil
		}
	}
	return 0, fmt.Errorf("fault %s not listed", id)
}

func (s *sim) clearFaults(ctx context.Context) error {
	_, err := s.call(ctx, "DELETE", "/sim/faults", nil, nil)
	return err
}

// poll calls cond until it reports done, or d passes, or ctx ends
// (clocktest.Poll: the simulator and QEMU are real processes). An error
// from cond is remembered for the timeout message and polling goes on.
func poll(ctx context.Context, d time.Duration, what string, cond func() (bool, error)) error {
	return pollCtx(ctx, d, func() (bool, error) {
		ok, err := cond()
		return ok && err == nil, err
	}, func(last error) error {
		if last != nil {
			return fmt.Errorf("%s: not within %v (last error: %v)", what, d, last)
		}
		return fmt.Errorf("%s: not within %v", what, d)
	})
}

// pollCtx is clocktest.Poll that also stops when ctx ends (returning
// ctx.Err()); timeout builds the error from cond's last error.
func pollCtx(ctx context.Context, d time.Duration, cond func() (bool, error), timeout func(last error) error) error {
	var last error
	ok := clocktest.Poll(d, func() bool {
		if ctx.Err() != nil {
			return true
		}
		done, err := cond()
		if err != nil {
			last = err
		}
		return done
	})
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case !ok:
		return timeout(last)
	}
	return nil
}
