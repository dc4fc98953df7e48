// Package cli is the command line of devid-jig, the factory test jig: it
// runs the local CA and programs boards over the factory serial bus. The
// binary, enroll/cmd/devid-jig, is a thin main around Main.
//
//	devid-jig ca init --dir DIR [--name NAME] [--pkcs11 URI]
//	devid-jig program --port PATH (--ca-dir DIR | --est URL ...) [--tpm-roots FILE [--require-attestation]] [--json]
//	devid-jig status  --port PATH
//	devid-jig reset   --port PATH --yes
//	devid-jig revoke  --ca-dir DIR --device-id ID [--reason TEXT]
//	devid-jig crl     --ca-dir DIR
//	devid-jig ledger pending (--ca-dir DIR | --issuer FILE --ledger URL)
//
// program, revoke, crl and ledger pending take --ledger URL: the issuance
// ledger on PostgreSQL shared by every station (docs/ca.md), overriding
// the CA policy's ledger key.
//
// The command table (commands) is the whole command line: help, help
// --json and the man page devid-jig(1) are made from it (help.go).
//
// Exit status: 0 on success, 1 on failure (the reason is on stderr), 2 on
// a usage error.
package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"devid/enroll/attest"
	"devid/enroll/certstore"
	"devid/enroll/est"
	"devid/enroll/station/ca"
	"devid/enroll/station/jig"
	"devid/hal/cmdline"
	"devid/hal/serial"
)

// command is one verb of devid-jig.
type command struct {
	name     string // one word, or a group and a word ("ca init")
	args     string // synopsis after the name
	purpose  string // one line
	example  string
	required []string // flags that must be given
	// bind defines the command's flags on fs and returns what runs the
	// command once fs has parsed them.
	bind func(fs *flag.FlagSet, out streams) func(ctx context.Context) error
}

// streams are where a command writes its result and its progress, and
// what the binary was built from.
type streams struct {
	stdout, stderr io.Writer
	build          Build
}

// commands is the command line, in the order help lists it ("help" is
// handled before it: it lists the table).
var commands = []command{
	{name: "ca init", args: "--dir DIR [--name NAME] [--pkcs11 URI]", required: []string{"dir"}, bind: caInit,
		purpose: "create a local CA (root + issuing intermediate) in a new directory",
		example: "devid-jig ca init --dir /srv/devid-ca --name 'ACME line 1'"},
	{name: "program", args: "--port DEVICE (--ca-dir DIR | --est URL --est-cert FILE --est-key FILE --est-ca FILE) [flags]", required: []string{"port"}, bind: program,
		purpose: "program one device: HELLO, CSR, attest, sign, INSTALL, STATUS",
		example: "devid-jig program --port /dev/ttyUSB0 --ca-dir /srv/devid-ca"},
	stationCommand, // station.go
	{name: "status", args: "--port DEVICE [flags]", required: []string{"port"}, bind: status,
		purpose: "print a device's identity state (key, certificate) as the device reports it",
		example: "devid-jig status --port /dev/ttyUSB0"},
	{name: "reset", args: "--port DEVICE --yes [flags]", required: []string{"port"}, bind: reset,
		purpose: "factory-reset a device: destroy its key and certificate",
		example: "devid-jig reset --port /dev/ttyUSB0 --yes"},
	{name: "revoke", args: "--ca-dir DIR --device-id ID [--reason TEXT]", required: []string{"ca-dir", "device-id"}, bind: revoke,
		purpose: "revoke every certificate of a device and rewrite the CRL",
		example: "devid-jig revoke --ca-dir /srv/devid-ca --device-id board-0042 --reason keyCompromise"},
	{name: "crl", args: "--ca-dir DIR [--ledger URL]", required: []string{"ca-dir"}, bind: crl,
		purpose: "re-sign the CRL with a fresh nextUpdate (from the shared ledger with --ledger)",
		example: "devid-jig crl --ca-dir /srv/devid-ca"},
	{name: "ledger pending", args: "(--ca-dir DIR [--ledger URL] | --issuer FILE --ledger URL)", bind: ledgerPending,
		purpose: "list issuances reserved and never finalized (a station stopped mid-issue); exit 1 if any",
		example: "devid-jig ledger pending --ca-dir /srv/devid-ca --ledger postgres://devid@db/devid_ledger"},
	{name: "version", args: "[--json]", bind: versionCmd,
		purpose: "print the version, commit, Go version and platform",
		example: "devid-jig version --json"},
}

func caInit(fs *flag.FlagSet, out streams) func(context.Context) error {
	dir := fs.String("dir", "", "`DIR`, the CA directory to create")
	name := fs.String("name", "devid factory", "`NAME` used in the CA subjects")
	p11 := fs.String("pkcs11", "", "make the root and issuing keys in the PKCS#11 token named by `URI` "+
		"(RFC 7512: pkcs11:token=LABEL;object=LABEL?module-path=LIB&pin-source=FILE; docs/ca.md) instead of key files")
	return func(context.Context) error {
		if err := ca.Init(*dir, ca.InitOptions{Name: *name, PKCS11: *p11}); err != nil {
			return err
		}
		fmt.Fprintf(out.stdout, "CA created in %s: root %s (give this to devices as factory.root), policy %s\n",
			*dir, ca.RootCertFile, ca.PolicyFile)
		if *p11 != "" {
			fmt.Fprintf(out.stdout, "keys in the PKCS#11 token: %s, %s (the PIN is not recorded: give pin-source in the URI or set $%s)\n",
				ca.IssuingKeyURIFile, ca.RootKeyURIFile, ca.PINEnv)
		}
		return nil
	}
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
		port:    fs.String("port", "", "serial `DEVICE` the board is on, or usb:SERIAL: the tty of the USB device with that serial number (a board's USB gadget carries its device ID)"),
		baud:    fs.Int("baud", 115200, "serial line rate in `BAUD`"),
		timeout: fs.Duration("timeout", jig.DefaultReplyTimeout, "wait `DURATION` of silence for one reply before re-sending (a board that answers BUSY is waited for longer)"),
		retries: fs.Int("retries", jig.DefaultRetries, "`N` re-sends per request"),
	}
}

// usbResolver finds usb:SERIAL ports (tests: fake /dev and /sys trees).
var usbResolver serial.USBResolver

// portPath is the device behind --port: usb:SERIAL is looked up at each
// open, so a board that came back on another node is found there.
func portPath(port string) (string, error) {
	if !serial.IsUSB(port) {
		return port, nil
	}
	return usbResolver.Resolve(strings.TrimPrefix(port, serial.USBPrefix))
}

func (p portFlags) open() (*serial.TarmPort, *jig.Jig, error) {
	path, err := portPath(*p.port)
	if err != nil {
		return nil, nil, err
	}
	port, err := serial.Open(path, *p.baud)
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

func program(fs *flag.FlagSet, out streams) func(context.Context) error {
	pf := addPortFlags(fs)
	caDir := fs.String("ca-dir", "", "local CA `DIR` (devid-jig ca init)")
	ledger := fs.String("ledger", "", "issuance ledger `URL`: postgres://... shared by every station, or file (ledger.jsonl in --ca-dir); "+
		"default: the CA policy's ledger key; with --est, record each EST issuance in the postgres:// ledger (default: none)")
	station := fs.String("station", "", "station `NAME` for the ledger (default: host name)")
	estURL := fs.String("est", "", "sign through the EST server at `URL` instead of a local CA")
	estCert := fs.String("est-cert", "", "station client certificate PEM `FILE` for EST")
	estKey := fs.String("est-key", "", "station client key PEM `FILE` for EST")
	estCA := fs.String("est-ca", "", "PEM `FILE` with the roots that verify the EST server")
	tpmRoots := fs.String("tpm-roots", "", "PEM `FILE` of TPM maker roots: boards that offer attestation must prove their key is in such a TPM")
	requireAtt := fs.Bool("require-attestation", false, "refuse boards that do not prove a TPM key (needs --tpm-roots; also set by the CA's require_tpm_attestation)")
	asJSON := fs.Bool("json", false, "print one JSON object (also for a failure: ok false, step, error) instead of the result line")
	reissue := fs.Bool("reissue", false, "give a board that holds a valid certificate from this CA a new one and revoke the old serial (local CA only)")
	factoryRoot := fs.String("factory-root", "", "PEM `FILE` of the root the EST CA issues under: a board holding a valid certificate from it is left alone (default with --ca-dir: its root.pem)")
	return func(ctx context.Context) error {
		stdout, stderr := out.stdout, out.stderr
		start := time.Now()
		// fail reports a failure; with --json, line software reading
		// stdout gets it as an object too, whatever step it came from.
		fail := func(step string, err error) error {
			if *asJSON {
				obj := map[string]any{"ok": false, "step": step, "error": err.Error(),
					"usage": cmdline.IsUsage(err), "elapsed_ms": time.Since(start).Milliseconds()}
				var r *jig.Refusal
				if errors.As(err, &r) {
					obj["reason"], obj["detail"] = r.Reason, r.Detail
				}
				_ = json.NewEncoder(stdout).Encode(obj)
			}
			return err
		}
		if (*caDir == "") == (*estURL == "") {
			return fail("setup", cmdline.Usage(errors.New("give exactly one of --ca-dir and --est")))
		}
		if *station == "" {
			*station, _ = os.Hostname()
		}
		if *requireAtt && *tpmRoots == "" {
			return fail("setup", cmdline.Usage(errors.New("--require-attestation needs --tpm-roots")))
		}
		if *reissue && *caDir == "" {
			return fail("setup", cmdline.Usage(errors.New("--reissue needs --ca-dir: revoking the replaced certificate needs the local CA's ledger")))
		}
		opts := jig.Options{RequireAttestation: *requireAtt, Reissue: *reissue}
		if *factoryRoot != "" {
			roots, err := certstore.LoadRoots(*factoryRoot)
			if err != nil {
				return fail("setup", fmt.Errorf("--factory-root: %w", err))
			}
			opts.Roots = roots
		}
		var iss jig.Issuer
		if *caDir != "" {
			local, err := ca.OpenWith(*caDir, ca.OpenOptions{Station: *station, Ledger: *ledger})
			if err != nil {
				return fail("ca", err)
			}
			defer local.Close()
			if opts.Roots == nil {
				// A board with a valid certificate from this CA is left alone.
				opts.Roots = x509.NewCertPool()
				opts.Roots.AddCert(local.Root())
			}
			local.HardwareModuleNameSAN = hardwareModuleNameSAN
			if local.Policy().RequireTPMAttestation {
				if *tpmRoots == "" {
					return fail("setup", cmdline.Usage(fmt.Errorf("the CA policy (%s) sets require_tpm_attestation: give --tpm-roots", ca.PolicyFile)))
				}
				opts.RequireAttestation = true
			}
			iss = local
		} else {
			if *estCert == "" || *estKey == "" || *estCA == "" {
				return fail("setup", cmdline.Usage(errors.New("--est needs --est-cert, --est-key and --est-ca")))
			}
			cert, err := tls.LoadX509KeyPair(*estCert, *estKey)
			if err != nil {
				return fail("ca", fmt.Errorf("EST station certificate: %w", err))
			}
			roots, err := certstore.LoadRoots(*estCA)
			if err != nil {
				return fail("ca", fmt.Errorf("EST server roots: %w", err))
			}
			client := &est.Client{URL: *estURL, HTTP: est.NewHTTPClient(roots, cert)}
			iss = client
			if *ledger != "" {
				rec, err := recordedEST(ctx, client, *ledger, *station)
				if err != nil {
					return fail("ca", err)
				}
				defer rec.Ledger.Close()
				iss = rec
			}
		}
		if *tpmRoots != "" {
			roots, err := certstore.LoadRoots(*tpmRoots)
			if err != nil {
				return fail("setup", fmt.Errorf("--tpm-roots: %w", err))
			}
			if newVerifier == nil {
				return fail("setup", errors.New("--tpm-roots: this devid-jig cannot verify TPM attestation (built without enroll/attest)"))
			}
			opts.Verifier = newVerifier(roots)
		}
		port, j, err := pf.open()
		if err != nil {
			return fail("port", err)
		}
		defer port.Close()

		progressOut := stdout
		if *asJSON {
			progressOut = stderr // stdout carries exactly one JSON object
		}
		n, total := 0, 6
		res, err := jig.ProgramWith(ctx, j, iss, opts, func(s jig.Step, msg string) {
			n++
			switch {
			case s == jig.StepStatus && n == 4:
				total = 4 // programmed already and left alone: hello, csr, attest, status
			case s == jig.StepRevoke:
				total = 7 // a --reissue revokes the certificate it replaced
			}
			fmt.Fprintf(progressOut, "[%d/%d] %-7s %s\n", n, total, s, msg)
		})
		elapsed := time.Since(start)
		if err != nil {
			fmt.Fprintf(progressOut, "FAIL %v\n", err)
			step := ""
			var se *jig.StepError
			if errors.As(err, &se) {
				step = string(se.Step)
			}
			return fail(step, err)
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(map[string]any{"ok": true,
				"device_id": res.DeviceID, "serial": res.Serial, "chain_pem": string(res.ChainPEM),
				"not_after": res.NotAfter.UTC().Format(time.RFC3339), "key_backend": res.Key, "station": *station,
				"elapsed_ms": elapsed.Milliseconds(), "bytes_sent": res.BytesSent, "bytes_received": res.BytesReceived,
				"attestation": res.Attestation.Outcome, "ek_sha256": res.Attestation.EKSHA256,
				"already_programmed": res.AlreadyProgrammed, "replaced_serial": res.Replaced,
			})
		}
		if res.AlreadyProgrammed {
			fmt.Fprintf(stdout, "OK device %s serial %s not_after %s programmed already, left alone (--reissue for a new certificate) in %v (%d bytes on the wire)\n",
				res.DeviceID, res.Serial, res.NotAfter.UTC().Format(time.RFC3339), elapsed.Round(time.Millisecond),
				res.BytesSent+res.BytesReceived)
			return nil
		}
		fmt.Fprintf(stdout, "OK device %s serial %s not_after %s in %v (%d bytes on the wire)\n",
			res.DeviceID, res.Serial, res.NotAfter.UTC().Format(time.RFC3339), elapsed.Round(time.Millisecond),
			res.BytesSent+res.BytesReceived)
		return nil
	}
}

// recordedEST puts the EST client behind the shared ledger at url: the
// issuing CA the ledger is bound to is the one intermediate (or, without
// one, the one certificate) the server's /cacerts lists (docs/ca.md,
// "EST and the shared ledger").
func recordedEST(ctx context.Context, c *est.Client, url, station string) (*ca.Recorded, error) {
	if url == "file" {
		return nil, cmdline.Usage(errors.New("--est with --ledger: the EST path records in a shared ledger: give a postgres:// URL, not file"))
	}
	cas, err := c.CACerts(ctx)
	if err != nil {
		return nil, fmt.Errorf("--ledger: the EST server's issuing CA: %w", err)
	}
	issuer, err := estIssuingCA(cas)
	if err != nil {
		return nil, fmt.Errorf("--ledger: %w", err)
	}
	l, err := ca.OpenLedger(ctx, url, issuer, 0)
	if err != nil {
		return nil, err
	}
	return &ca.Recorded{Signer: c, Ledger: l, Issuer: issuer, Station: station}, nil
}

// estIssuingCA picks the issuing CA from an EST server's /cacerts.
func estIssuingCA(cas []*x509.Certificate) (*x509.Certificate, error) {
	var inter []*x509.Certificate
	for _, c := range cas {
		if c.IsCA && !bytes.Equal(c.RawSubject, c.RawIssuer) {
			inter = append(inter, c)
		}
	}
	switch {
	case len(inter) == 1:
		return inter[0], nil
	case len(inter) == 0 && len(cas) == 1 && cas[0].IsCA:
		return cas[0], nil
	}
	return nil, fmt.Errorf("the EST server's /cacerts lists %d CA certificates (%d intermediates): the ledger needs exactly one issuing CA", len(cas), len(inter))
}

// newVerifier makes the attestation verifier for --tpm-roots (enroll/attest
// behind jig.NewAttestVerifier). A variable, so that tests can put a fake
// in; nil would refuse --tpm-roots.
var newVerifier = func(roots *x509.CertPool) jig.Verifier {
	return jig.NewAttestVerifier(&attest.Verifier{Roots: roots})
}

// hardwareModuleNameSAN is the local CA's builder of the HardwareModuleName
// extension for attested keys. The leaf has a subject (CN = device ID) and
// no other names, so the extension is not critical.
var hardwareModuleNameSAN = func(hwType asn1.ObjectIdentifier, hwSerial []byte) (pkix.Extension, error) {
	return attest.HardwareModuleNameSAN(hwType, hwSerial, attest.SANs{}, false)
}

func status(fs *flag.FlagSet, out streams) func(context.Context) error {
	pf := addPortFlags(fs)
	chain := fs.Bool("chain", false, "then print the installed certificate chain (PEM, leaf first) as the board reads it back")
	return func(ctx context.Context) error {
		stdout := out.stdout
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
		if *chain {
			b, err := j.Chain(ctx)
			if err != nil {
				return fmt.Errorf("read the chain: %w", err)
			}
			_, err = stdout.Write(b)
			return err
		}
		return nil
	}
}

func reset(fs *flag.FlagSet, out streams) func(context.Context) error {
	pf := addPortFlags(fs)
	yes := fs.Bool("yes", false, "confirm: destroy the device's key and certificate")
	return func(ctx context.Context) error {
		stdout := out.stdout
		if !*yes {
			return cmdline.Usage(errors.New("reset destroys the device identity; add --yes to confirm"))
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
}

func revoke(fs *flag.FlagSet, out streams) func(context.Context) error {
	caDir := fs.String("ca-dir", "", "local CA `DIR`")
	id := fs.String("device-id", "", "`ID` of the device whose certificates to revoke")
	reason := fs.String("reason", "unspecified", "`TEXT` recorded in the ledger as the reason")
	station := fs.String("station", "", "station `NAME` for the ledger (default: host name)")
	ledger := addLedgerFlag(fs)
	return func(context.Context) error {
		stdout := out.stdout
		if *station == "" {
			*station, _ = os.Hostname()
		}
		local, err := ca.OpenWith(*caDir, ca.OpenOptions{Station: *station, Ledger: *ledger})
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
}

func crl(fs *flag.FlagSet, out streams) func(context.Context) error {
	caDir := fs.String("ca-dir", "", "local CA `DIR`")
	ledger := addLedgerFlag(fs)
	return func(context.Context) error {
		stdout := out.stdout
		local, err := ca.OpenWith(*caDir, ca.OpenOptions{Ledger: *ledger})
		if err != nil {
			return err
		}
		defer local.Close()
		if err := local.WriteCRL(); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "CRL written to %s\n", local.CRLPath())
		if pend, err := local.Pending(); err == nil && len(pend) > 0 {
			fmt.Fprintf(out.stderr, "warning: %d issuance(s) reserved and never finalized (devid-jig ledger pending)\n", len(pend))
		}
		return nil
	}
}

// addLedgerFlag defines --ledger, which overrides the CA policy's ledger.
func addLedgerFlag(fs *flag.FlagSet) *string {
	return fs.String("ledger", "", "issuance ledger `URL`: postgres://... shared by every station, or file (ledger.jsonl in --ca-dir); default: the CA policy's ledger key")
}

func ledgerPending(fs *flag.FlagSet, out streams) func(context.Context) error {
	caDir := fs.String("ca-dir", "", "local CA `DIR`")
	ledger := addLedgerFlag(fs)
	issuerFile := fs.String("issuer", "", "PEM `FILE` of the issuing CA a postgres:// --ledger is bound to, instead of --ca-dir (the EST path's ledger)")
	return func(ctx context.Context) error {
		var pend []ca.Record
		switch {
		case (*caDir == "") == (*issuerFile == ""):
			return cmdline.Usage(errors.New("give exactly one of --ca-dir and --issuer"))
		case *issuerFile != "":
			if *ledger == "" {
				return cmdline.Usage(errors.New("--issuer needs --ledger (a postgres:// URL)"))
			}
			b, err := os.ReadFile(*issuerFile)
			if err != nil {
				return fmt.Errorf("--issuer: %w", err)
			}
			parsed, err := certstore.ParsePEM(b)
			if err != nil {
				return fmt.Errorf("--issuer %s: %w", *issuerFile, err)
			}
			l, err := ca.OpenLedger(ctx, *ledger, parsed[0], 0)
			if err != nil {
				return err
			}
			defer l.Close()
			if pend, err = l.Pending(ctx); err != nil {
				return err
			}
		default:
			local, err := ca.OpenWith(*caDir, ca.OpenOptions{Ledger: *ledger})
			if err != nil {
				return err
			}
			defer local.Close()
			if pend, err = local.Pending(); err != nil {
				return err
			}
		}
		for _, r := range pend {
			fmt.Fprintf(out.stdout, "reserved %s device %s key sha256:%s station %q at %s",
				r.Serial, r.DeviceID, r.KeySHA256, r.Station, r.Time.UTC().Format(time.RFC3339))
			if r.Reason != "" {
				fmt.Fprintf(out.stdout, " (%s)", r.Reason)
			}
			fmt.Fprintln(out.stdout)
		}
		if len(pend) > 0 {
			return fmt.Errorf("%d issuance(s) reserved and never finalized: their certificates were not released; "+
				"revoke the device (devid-jig revoke) if the certificate may exist, or reprogram it with the same key", len(pend))
		}
		fmt.Fprintln(out.stdout, "no pending issuances")
		return nil
	}
}
