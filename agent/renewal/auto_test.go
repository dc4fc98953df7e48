package renewal

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"devid/agent/config"
	"devid/agent/statedir"
	"devid/dps"
	"devid/enroll/credential"
	"devid/enroll/rotate"
	"devid/simulator/simtest"
)

type factoryIdentity struct{ c *credential.Credential }

func (f factoryIdentity) Load() (*credential.Credential, error) {
	c := *f.c
	return &c, nil
}

// TestAutoPathOnSim: renewal.path "auto" (the default) registers with a
// CSR and chooses by DPS's answer: an enrollment that issues gives path
// dps and an operational certificate; one that does not (DPS ignoring the
// CSR or refusing it, the two variants docs/dps.md accepts) gives est
// when est_url is set, else none, with the assignment all the same, and
// no renewal failure recorded. The choice is kept across restarts.
func TestAutoPathOnSim(t *testing.T) {
	if testing.Short() {
		t.Skip("runs devid-sim")
	}
	t.Parallel()
	for _, tc := range []struct {
		name     string
		issuing  bool
		simArgs  []string
		estURL   string
		wantPath string
		wantWhy  string
	}{
		{"enrollment issues", true, nil, "", "dps-csr", "DPS issued a certificate"},
		{"csr ignored", false, nil, "", "", "without issuing a certificate"},
		{"csr refused", false, []string{"--csr-without-policy", "reject"}, "", "", "DPS refused the CSR"},
		{"no issuance, est_url set", false, nil, "https://est.example/.well-known/est", "est", "renewal.est_url is set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sim := simtest.Start(t, simtest.WithArgs(tc.simArgs...))
			ca := simtest.NewDeviceCA(t)
			var opts []simtest.EnrollmentOption
			if tc.issuing {
				opts = append(opts, simtest.IssueCertificates())
			}
			sim.EnrollGroup(t, "g", ca.Root, opts...)
			id := "auto-" + strings.ReplaceAll(tc.name, " ", "-")
			id = strings.ReplaceAll(id, ",", "")
			dev := ca.Issue(t, id)
			state := t.TempDir()
			os.WriteFile(filepath.Join(state, "device.key"), dev.KeyPEM(t), 0o600)
			os.WriteFile(filepath.Join(state, "device-chain.pem"), dev.ChainPEM(), 0o600)
			cfg := config.Default()
			cfg.StateDir = state
			cfg.Key.Backend = "file:" + filepath.Join(state, "device.key")
			cfg.DPS.Endpoint = sim.Ready.DPS.Host + ":8883"
			cfg.DPS.IDScope = sim.Ready.IDScope
			cfg.Renewal.ESTURL = tc.estURL
			if cfg.Renewal.Path != "auto" {
				t.Fatalf("default renewal.path %q", cfg.Renewal.Path)
			}
			b, _ := os.ReadFile(sim.Ready.ServerCA)
			bundle, err := dps.ParseTrustBundle(b)
			if err != nil {
				t.Fatal(err)
			}
			net := dps.Network{Resolve: sim.Resolve(), TrustBundle: bundle}
			factory := &credential.Credential{Signer: dev.Key, Chain: dev.Chain}
			plainRegisters := 0
			newRenewal := func() *Renewal {
				dir, err := statedir.Open(state)
				if err != nil {
					t.Fatal(err)
				}
				r, err := New(Deps{Config: cfg, Dir: dir, Identity: factoryIdentity{factory}, Network: net,
					Register: func(ctx context.Context, c *credential.Credential) (*statedir.Assignment, error) {
						plainRegisters++
						res, err := dps.Register(ctx, dps.Config{Endpoint: cfg.DPS.Endpoint, IDScope: cfg.DPS.IDScope,
							Certificate: c.TLSCertificate(), Network: net, Timeout: 30 * time.Second})
						if err != nil {
							return nil, err
						}
						return &statedir.Assignment{Hub: res.AssignedHub, DeviceID: res.DeviceID}, nil
					},
					Connect: func(ctx context.Context, c *credential.Credential, as *statedir.Assignment) error {
						h, err := dps.ConnectHub(ctx, dps.HubConfig{Host: as.Hub, DeviceID: as.DeviceID, Certificate: c.TLSCertificate(),
							Network: net, ConnectTimeout: 15 * time.Second})
						if err != nil {
							return err
						}
						return h.Close()
					}})
				if err != nil {
					t.Fatal(err)
				}
				return r
			}
			r := newRenewal()
			if !r.Deciding() || !r.IssuesAtRegistration() {
				t.Fatal("a fresh device with path auto is not deciding at its first registration")
			}
			if st := r.Status(); st.Path != "auto" || st.Configured != "auto" || !strings.Contains(st.Why, "has not happened yet") {
				t.Errorf("undecided status %+v", st)
			}
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			as, err := r.Register(ctx, factory)
			if err != nil {
				t.Fatalf("first registration: %v", err)
			}
			if as == nil || as.Hub == "" || as.DeviceID == "" {
				t.Fatalf("assignment %+v", as)
			}
			if r.Deciding() {
				t.Fatal("still deciding after the first registration")
			}
			st := r.Status()
			if st.Path != tc.wantPath || st.Configured != "auto" || !strings.Contains(st.Why, tc.wantWhy) {
				t.Errorf("status path %q configured %q why %q; want path %q, why containing %q", st.Path, st.Configured, st.Why, tc.wantPath, tc.wantWhy)
			}
			if st.Failures != 0 || st.LastError != "" {
				t.Errorf("finding out recorded a renewal failure: %+v", st)
			}
			op := r.Operational()
			if tc.issuing != (op != nil) {
				t.Errorf("operational credential installed: %v, want %v", op != nil, tc.issuing)
			}
			if op != nil {
				op.Close()
			}
			if want := map[bool]int{true: 1, false: 0}[strings.Contains(tc.name, "refused")]; plainRegisters != want {
				t.Errorf("%d registrations without a CSR, want %d", plainRegisters, want)
			}
			// A restart keeps the choice, and asks DPS nothing.
			r2 := newRenewal()
			if r2.Deciding() {
				t.Error("deciding again after a restart")
			}
			if st2 := r2.Status(); st2.Path != st.Path || st2.Why != st.Why {
				t.Errorf("after restart: %+v, want path %q why %q", st2, st.Path, st.Why)
			}
			if got := StatusFromFiles(cfg, time.Now()); got.Path != st.Path || got.Why != st.Why {
				t.Errorf("status from files: path %q why %q; want %q %q", got.Path, got.Why, st.Path, st.Why)
			}
		})
	}
}

// TestAutoWithoutIDScope: with no DPS to ask, auto decides at once.
func TestAutoWithoutIDScope(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	cfg.Key.Backend = "file:" + filepath.Join(cfg.StateDir, "device.key")
	dir, err := statedir.Open(cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Deps{Config: cfg, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if r.Deciding() || r.IssuesAtRegistration() {
		t.Error("deciding without a DPS to ask")
	}
	if st := r.Status(); st.Path != rotate.PathNone || !strings.Contains(st.Why, "dps.id_scope is not set") {
		t.Errorf("status %+v", st)
	}
}
