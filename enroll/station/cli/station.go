package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"devid/enroll/certstore"
	"devid/enroll/est"
	"devid/enroll/station/ca"
	"devid/enroll/station/jig"
	"devid/enroll/station/line"
	"devid/hal/cmdline"
)

// stationCommand runs a station of many slots (enroll/station/line,
// docs/station.md).
var stationCommand = command{name: "station", args: "--config FILE [--json-events FILE|-] [--listen ADDR] [--boards N] [--ledger URL]",
	required: []string{"config"}, bind: stationCmd,
	purpose: "run a station: program every board that arrives on its serial slots, many at once",
	example: "devid-jig station --config /etc/devid/station.toml --listen 127.0.0.1:8080"}

func stationCmd(fs *flag.FlagSet, out streams) func(context.Context) error {
	config := fs.String("config", "", "station configuration `FILE` (TOML: CA, slots; docs/station.md)")
	events := fs.String("json-events", "", "write one JSON object per event to `FILE` (appended; - for standard output)")
	listen := fs.String("listen", "", "serve the web page and /metrics on `ADDR` (overrides listen in the configuration)")
	boards := fs.Int("boards", 0, "exit after `N` boards have finished (programmed, left alone or failed); 0: run until SIGINT or SIGTERM")
	ledger := addLedgerFlag(fs)
	reissue := fs.Bool("reissue", false, "give boards that hold a valid certificate from this CA a new one and revoke the old serial")
	return func(ctx context.Context) error {
		if *boards < 0 {
			return cmdline.Usage(errors.New("--boards must be 0 or more"))
		}
		cfg, err := line.LoadConfig(*config)
		if err != nil {
			return cmdline.Usage(err)
		}
		if cfg.CADir == "" && cfg.ESTURL == "" {
			return cmdline.Usage(fmt.Errorf("%s: no ca_dir nor est_url: the station signs with a local CA (devid-jig ca init) or an EST server", *config))
		}
		if cfg.Station == "" {
			cfg.Station, _ = os.Hostname()
		}
		if *listen != "" {
			cfg.Listen = *listen
		}
		if *ledger != "" {
			cfg.Ledger = *ledger
		}
		jo := jig.Options{Reissue: *reissue, RequireAttestation: cfg.RequireAttestation}
		var o line.Options
		if cfg.ESTURL != "" {
			if *reissue {
				return cmdline.Usage(errors.New("--reissue needs a local CA (ca_dir): the EST CA revokes its own certificates"))
			}
			rec, roots, err := stationEST(ctx, cfg)
			if err != nil {
				return err
			}
			defer rec.Ledger.Close()
			jo.Roots = roots
			o.CA, o.Ledger = rec, rec
		} else {
			local, err := ca.OpenWith(cfg.CADir, ca.OpenOptions{Station: cfg.Station, Ledger: cfg.Ledger})
			if err != nil {
				return err
			}
			defer local.Close()
			local.HardwareModuleNameSAN = hardwareModuleNameSAN
			if local.Policy().RequireTPMAttestation {
				if cfg.TPMRoots == "" {
					return cmdline.Usage(fmt.Errorf("%s: the CA policy (%s) sets require_tpm_attestation: give tpm_roots", *config, ca.PolicyFile))
				}
				jo.RequireAttestation = true
			}
			roots, err := certstore.LoadRoots(cfg.CADir + "/" + ca.RootCertFile)
			if err != nil {
				return fmt.Errorf("factory root: %w", err)
			}
			jo.Roots = roots
			o.CA, o.Ledger = local, local
		}
		if cfg.TPMRoots != "" {
			tpmRoots, err := certstore.LoadRoots(cfg.TPMRoots)
			if err != nil {
				return fmt.Errorf("%s: tpm_roots: %w", *config, err)
			}
			if newVerifier == nil {
				return errors.New("tpm_roots: this devid-jig cannot verify TPM attestation (built without enroll/attest)")
			}
			jo.Verifier = newVerifier(tpmRoots)
		}
		o.Jig, o.Terminal, o.TTY, o.Boards = jo, out.stdout, line.IsTerminal(out.stdout), *boards
		switch *events {
		case "":
		case "-":
			o.Events = out.stdout
			o.Terminal = out.stderr // stdout carries the events only
			o.TTY = line.IsTerminal(out.stderr)
		default:
			f, err := os.OpenFile(*events, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
			if err != nil {
				return fmt.Errorf("--json-events: %w", err)
			}
			defer f.Close()
			o.Events = f
		}
		st, err := line.New(cfg, o)
		if err != nil {
			return err
		}
		if cfg.Listen != "" {
			ln, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				return fmt.Errorf("listen: %w", err)
			}
			srv := &http.Server{Handler: st.Handler(), ReadHeaderTimeout: 10 * time.Second}
			go srv.Serve(ln)
			defer srv.Close()
			fmt.Fprintf(o.Terminal, "station %s: web page on http://%s/, metrics on /metrics\n", cfg.Station, ln.Addr())
		}
		y, err := st.Run(ctx)
		if err != nil {
			return err
		}
		summaryOut := io.Writer(out.stdout)
		if *events == "-" {
			summaryOut = out.stderr
		}
		fmt.Fprint(summaryOut, y.Summary(cfg.Station))
		return nil
	}
}

// stationEST is the station's signer when station.toml names an EST
// server: the EST client behind the shared ledger (recordedEST), and the
// roots of programmed boards, the self-signed certificates the server's
// /cacerts lists (nil if none: every board is issued a certificate).
func stationEST(ctx context.Context, cfg *line.Config) (*ca.Recorded, *x509.CertPool, error) {
	if !strings.HasPrefix(cfg.Ledger, "postgres://") && !strings.HasPrefix(cfg.Ledger, "postgresql://") {
		return nil, nil, cmdline.Usage(errors.New("est_url needs ledger = \"postgres://...\" (or --ledger): the EST path records in the shared ledger"))
	}
	cert, err := tls.LoadX509KeyPair(cfg.ESTCert, cfg.ESTKey)
	if err != nil {
		return nil, nil, fmt.Errorf("EST station certificate (est_cert, est_key): %w", err)
	}
	serverRoots, err := certstore.LoadRoots(cfg.ESTCA)
	if err != nil {
		return nil, nil, fmt.Errorf("est_ca: %w", err)
	}
	client := &est.Client{URL: cfg.ESTURL, HTTP: est.NewHTTPClient(serverRoots, cert)}
	rec, err := recordedEST(ctx, client, cfg.Ledger, cfg.Station)
	if err != nil {
		return nil, nil, err
	}
	cas, err := client.CACerts(ctx)
	if err != nil {
		rec.Ledger.Close()
		return nil, nil, err
	}
	var roots *x509.CertPool
	for _, c := range cas {
		if c.IsCA && bytes.Equal(c.RawSubject, c.RawIssuer) {
			if roots == nil {
				roots = x509.NewCertPool()
			}
			roots.AddCert(c)
		}
	}
	return rec, roots, nil
}
