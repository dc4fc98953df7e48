package dps

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "CA")
	cred := ca.credential(t, "dev-7")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherCSR, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "someone-else"}}, key)
	cases := []struct {
		name  string
		mod   func(*Config)
		field string
	}{
		{"no scope", func(c *Config) { c.IDScope = "" }, "id_scope"},
		{"scope with slash", func(c *Config) { c.IDScope = "a/b" }, "id_scope"},
		{"registration id differs from CN", func(c *Config) { c.RegistrationID = "dev-8" }, "registration_id"},
		{"bad registration id", func(c *Config) { c.RegistrationID = "dev 7" }, "registration_id"},
		{"payload not JSON", func(c *Config) { c.Payload = json.RawMessage("{") }, "payload"},
		{"csr CN mismatch", func(c *Config) { c.CSR = otherCSR }, "csr"},
		{"csr garbage", func(c *Config) { c.CSR = []byte("nope") }, "csr"},
		{"no signer", func(c *Config) { c.Certificate.PrivateKey = nil }, "credential"},
	}
	for _, tc := range cases {
		cfg := Config{IDScope: "0ne00000001", Certificate: cred}
		tc.mod(&cfg)
		_, err := Register(context.Background(), cfg)
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != tc.field || Retryable(err) {
			t.Errorf("%s: got %v, want config error on %s", tc.name, err, tc.field)
		}
	}
	// Defaults.
	cfg := Config{IDScope: "0ne00000001", Certificate: cred, CSR: mustCSR(t, "dev-7")}
	if err := cfg.defaults(); err != nil {
		t.Fatal(err)
	}
	if cfg.Endpoint != DefaultEndpoint || cfg.RegistrationID != "dev-7" || cfg.APIVersion != "2025-07-01-preview" || cfg.KeepAlive != 240*time.Second {
		t.Errorf("defaults %+v", cfg)
	}
	ws := Config{IDScope: "s", Certificate: cred, Network: Network{WebSocket: true}}
	ws.defaults()
	if !strings.HasSuffix(ws.Endpoint, ":443") || ws.APIVersion != "2019-03-31" {
		t.Errorf("websocket defaults %q %q", ws.Endpoint, ws.APIVersion)
	}
}

func mustCSR(t *testing.T, cn string) []byte {
	key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func TestRegisterStopsAtDeadline(t *testing.T) {
	t.Parallel()
	cred := newTestCA(t, "CA").credential(t, "dev-9")
	clk := newFakeClock()
	// Nothing listens: every attempt is a TCP error; the deadline ends it
	// with a TimeoutError that carries the last cause.
	cfg := Config{IDScope: "s", Certificate: cred, Endpoint: "dps.example.test:1",
		Network: Network{Resolve: map[string]string{"dps.example.test": "127.0.0.1:1"}},
		Now:     clk.Now, Sleep: clk.Sleep, Timeout: 200 * time.Millisecond}
	_, err := Register(context.Background(), cfg)
	var te *TimeoutError
	if !errors.As(err, &te) || !errors.Is(err, ErrTCP) || !errors.Is(err, context.DeadlineExceeded) || te.Attempts < 2 {
		t.Errorf("got %v, want a timeout after several TCP errors", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Register(ctx, cfg); !errors.Is(err, context.Canceled) || errors.Is(err, ErrTimeout) {
		t.Errorf("cancelled: %v", err)
	}
}

func TestHubConfigValidation(t *testing.T) {
	t.Parallel()
	cred := newTestCA(t, "CA").credential(t, "dev-10")
	for _, id := range []string{"", "a/b", "a#b", "a+b", strings.Repeat("x", 129)} {
		_, err := ConnectHub(context.Background(), HubConfig{Host: "h.azure-devices.net", DeviceID: id, Certificate: cred})
		if !errors.Is(err, ErrConfig) {
			t.Errorf("device id %q: %v", id, err)
		}
	}
	cfg := HubConfig{Host: "h", DeviceID: "d", Certificate: cred, KeepAlive: 2 * time.Hour}
	cfg.defaults()
	if cfg.KeepAlive != MaxKeepAlive || cfg.CleanSession {
		t.Errorf("keepalive %v clean %v", cfg.KeepAlive, cfg.CleanSession)
	}
}
