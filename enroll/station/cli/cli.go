// Package cli is the command line of devid-jig, the factory test jig: it
// runs the local CA and programs boards over the factory serial bus. The
// binary, enroll/cmd/devid-jig, is a thin main around Main.
//
//	devid-jig ca init --dir DIR [--name NAME]
//	devid-jig program --port PATH (--ca-dir DIR | --est URL ...) [--json]
//	devid-jig status  --port PATH
//	devid-jig reset   --port PATH --yes
//	devid-jig revoke  --ca-dir DIR --device-id ID [--reason TEXT]
//	devid-jig crl     --ca-dir DIR
//
// Exit status: 0 on success, 1 on failure (the reason is on stderr), 2 on
// a usage error.
package cli

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"devid/enroll/certstore"
	"devid/enroll/est"
	"devid/enroll/station/ca"
	"devid/enroll/station/jig"
	"devid/hal/serial"
)

type usageError struct{ error }

// Main runs devid-jig with args (without the program name) and returns
// the exit status. version is what `devid-jig version` prints.
func Main(ctx context.Context, version string, args []string, stdout, stderr io.Writer) int {
	err := run(ctx, version, args, stdout, stderr)
	if err == nil {
		return 0
	}
	if errors.Is(err, flag.ErrHelp) {
		return 2
	}
	fmt.Fprintf(stderr, "devid-jig: %v\n", err)
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	return 1
}

const usage = `usage: devid-jig <command> [flags]

commands:
  ca init   create a local CA (root + issuing intermediate) in --dir
  program   program one device: HELLO, CSR, sign, INSTALL, STATUS
  status    print a device's STATUS
  reset     factory-reset a device (destroys its key and certificate)
  revoke    revoke a device's certificates and rewrite the CRL
  crl       re-sign the CRL (fresh nextUpdate)
  version   print the version
`

func run(ctx context.Context, version string, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageError{errors.New("no command")}
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "ca":
		if len(args) == 0 || args[0] != "init" {
			return usageError{errors.New(`"ca" needs a subcommand: ca init --dir DIR`)}
		}
		return caInit(args[1:], stdout, stderr)
	case "program":
		return program(ctx, args, stdout, stderr)
	case "status":
		return status(ctx, args, stdout, stderr)
	case "reset":
		return reset(ctx, args, stdout, stderr)
	case "revoke":
		return revoke(args, stdout, stderr)
	case "crl":
		return crl(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return usageError{fmt.Errorf("unknown command %q", cmd)}
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("devid-jig "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func parse(fs *flag.FlagSet, args []string, required ...string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	for _, r := range required {
		if f := fs.Lookup(r); f == nil || f.Value.String() == "" {
			return usageError{fmt.Errorf("--%s is required", r)}
		}
	}
	return nil
}

func caInit(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ca init", stderr)
	dir := fs.String("dir", "", "CA directory to create")
	name := fs.String("name", "devid factory", "name used in the CA subjects")
	if err := parse(fs, args, "dir"); err != nil {
		return err
	}
	if err := ca.Init(*dir, ca.InitOptions{Name: *name}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "CA created in %s: root %s (give this to devices as factory.root), policy %s\n",
		*dir, ca.RootCertFile, ca.PolicyFile)
	return nil
}

// portFlags are shared by the commands that talk to a device.
type portFlags struct {
	port    *string
	baud    *int
	timeout *time.Duration
	retries *int
}

func addPortFlags(fs *flag.FlagSet) portFlags {
	return portFlags{
		port:    fs.String("port", "", "serial device the board is on"),
		baud:    fs.Int("baud", 115200, "serial line rate"),
		timeout: fs.Duration("timeout", jig.DefaultReplyTimeout, "wait for one reply before re-sending"),
		retries: fs.Int("retries", jig.DefaultRetries, "re-sends per request"),
	}
}

func (p portFlags) open() (*serial.TarmPort, *jig.Jig, error) {
	port, err := serial.Open(*p.port, *p.baud)
	if err != nil {
		return nil, nil, err
	}
	j := jig.New(port)
	j.ReplyTimeout, j.Retries = *p.timeout, *p.retries
	return port, j, nil
}

// hello opens the port and greets the device; on error the port is closed.
func (p portFlags) hello(ctx context.Context) (*serial.TarmPort, *jig.Jig, *jig.Hello, error) {
	port, j, err := p.open()
	if err != nil {
		return nil, nil, nil, err
	}
	h, err := j.Hello(ctx)
	if err != nil {
		port.Close()
		return nil, nil, nil, err
	}
	return port, j, h, nil
}

func program(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("program", stderr)
	pf := addPortFlags(fs)
	caDir := fs.String("ca-dir", "", "local CA directory (devid-jig ca init)")
	station := fs.String("station", "", "station name for the ledger (default: host name)")
	estURL := fs.String("est", "", "sign through this EST server instead of a local CA")
	estCert := fs.String("est-cert", "", "station client certificate PEM for EST")
	estKey := fs.String("est-key", "", "station client key PEM for EST")
	estCA := fs.String("est-ca", "", "PEM roots that verify the EST server")
	asJSON := fs.Bool("json", false, "print one JSON object instead of the result line")
	if err := parse(fs, args, "port"); err != nil {
		return err
	}
	if (*caDir == "") == (*estURL == "") {
		return usageError{errors.New("give exactly one of --ca-dir and --est")}
	}
	if *station == "" {
		*station, _ = os.Hostname()
	}
	var iss jig.Issuer
	if *caDir != "" {
		local, err := ca.Open(*caDir, *station)
		if err != nil {
			return err
		}
		defer local.Close()
		iss = local
	} else {
		if *estCert == "" || *estKey == "" || *estCA == "" {
			return usageError{errors.New("--est needs --est-cert, --est-key and --est-ca")}
		}
		cert, err := tls.LoadX509KeyPair(*estCert, *estKey)
		if err != nil {
			return fmt.Errorf("EST station certificate: %w", err)
		}
		roots, err := certstore.LoadRoots(*estCA)
		if err != nil {
			return fmt.Errorf("EST server roots: %w", err)
		}
		iss = &est.Client{URL: *estURL, HTTP: est.NewHTTPClient(roots, cert)}
	}
	port, j, err := pf.open()
	if err != nil {
		return err
	}
	defer port.Close()

	progressOut := stdout
	if *asJSON {
		progressOut = stderr // stdout carries exactly one JSON object
	}
	start := time.Now()
	n := 0
	res, err := jig.Program(ctx, j, iss, func(s jig.Step, msg string) {
		n++
		fmt.Fprintf(progressOut, "[%d/5] %-7s %s\n", n, s, msg)
	})
	elapsed := time.Since(start)
	if err != nil {
		fmt.Fprintf(progressOut, "FAIL %v\n", err)
		if *asJSON {
			// Line software reads stdout: give it the failure as an object too.
			var se *jig.StepError
			step := ""
			if errors.As(err, &se) {
				step = string(se.Step)
			}
			_ = json.NewEncoder(stdout).Encode(map[string]any{"error": err.Error(), "step": step, "elapsed_ms": elapsed.Milliseconds()})
		}
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(map[string]any{
			"device_id": res.DeviceID, "serial": res.Serial, "chain_pem": string(res.ChainPEM),
			"not_after": res.NotAfter.UTC().Format(time.RFC3339), "key_backend": res.Key, "station": *station,
			"elapsed_ms": elapsed.Milliseconds(), "bytes_sent": res.BytesSent, "bytes_received": res.BytesReceived,
		})
	}
	fmt.Fprintf(stdout, "OK device %s serial %s not_after %s in %v (%d bytes on the wire)\n",
		res.DeviceID, res.Serial, res.NotAfter.UTC().Format(time.RFC3339), elapsed.Round(time.Millisecond),
		res.BytesSent+res.BytesReceived)
	return nil
}

func status(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", stderr)
	pf := addPortFlags(fs)
	if err := parse(fs, args, "port"); err != nil {
		return err
	}
	port, j, h, err := pf.hello(ctx)
	if err != nil {
		return err
	}
	defer port.Close()
	st, err := j.Status(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "device %s protocol %d key %s state %s", h.DeviceID, h.Proto, st.Key, st.State)
	if st.Serial != "" {
		fmt.Fprintf(stdout, " serial %s not_after %s", st.Serial, st.NotAfter)
	}
	if st.Detail != "" {
		fmt.Fprintf(stdout, " detail %q", st.Detail)
	}
	fmt.Fprintln(stdout)
	return nil
}

func reset(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("reset", stderr)
	pf := addPortFlags(fs)
	yes := fs.Bool("yes", false, "confirm: destroy the device's key and certificate")
	if err := parse(fs, args, "port"); err != nil {
		return err
	}
	if !*yes {
		return usageError{errors.New("reset destroys the device identity; add --yes to confirm")}
	}
	port, j, h, err := pf.hello(ctx)
	if err != nil {
		return err
	}
	defer port.Close()
	if err := j.Reset(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "device %s reset: key and certificate destroyed\n", h.DeviceID)
	return nil
}

func revoke(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("revoke", stderr)
	caDir := fs.String("ca-dir", "", "local CA directory")
	id := fs.String("device-id", "", "device whose certificates to revoke")
	reason := fs.String("reason", "unspecified", "reason recorded in the ledger")
	station := fs.String("station", "", "station name for the ledger (default: host name)")
	if err := parse(fs, args, "ca-dir", "device-id"); err != nil {
		return err
	}
	if *station == "" {
		*station, _ = os.Hostname()
	}
	local, err := ca.Open(*caDir, *station)
	if err != nil {
		return err
	}
	defer local.Close()
	serials, err := local.Revoke(*id, *reason)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "revoked %s: serial %s; CRL written to %s\n", *id, strings.Join(serials, ", "), local.CRLPath())
	return nil
}

func crl(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("crl", stderr)
	caDir := fs.String("ca-dir", "", "local CA directory")
	if err := parse(fs, args, "ca-dir"); err != nil {
		return err
	}
	local, err := ca.Open(*caDir, "")
	if err != nil {
		return err
	}
	defer local.Close()
	if err := local.WriteCRL(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "CRL written to %s\n", local.CRLPath())
	return nil
}
