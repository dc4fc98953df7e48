package jig

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"devid/enroll/certstore"
	"devid/enroll/csr"
	"devid/enroll/factory"
	"devid/enroll/station"
)

// Issuer signs a device CSR and returns the chain, leaf first, without the
// root. The local CA (enroll/station/ca) and the EST client (enroll/est)
// are Issuers.
type Issuer interface {
	Issue(ctx context.Context, req *x509.CertificateRequest) ([]*x509.Certificate, error)
}

// Step names one stage of a programming run, for progress output.
type Step string

// The steps of Program, in order.
const (
	StepHello   Step = "hello"
	StepCSR     Step = "csr"
	StepAttest  Step = "attest"
	StepSign    Step = "sign"
	StepInstall Step = "install"
	StepStatus  Step = "status"
	// StepRevoke revokes the certificate a --reissue replaced.
	StepRevoke Step = "revoke"
)

// Revoker is an Issuer that can revoke one certificate by serial (the
// local CA, enroll/station/ca). Options.Reissue needs one.
type Revoker interface {
	RevokeSerial(serial, reason string) error
}

// RevocationChecker is an Issuer that knows whether a serial it issued is
// revoked; a programmed board whose certificate is revoked is not left
// alone.
type RevocationChecker interface {
	SerialRevoked(serial string) (bool, error)
}

// ReissueReason is the ledger's revocation reason for a certificate that
// --reissue replaced.
const ReissueReason = "superseded"

// Result is what a programming run produced.
type Result struct {
	DeviceID string
	Key      string
	Serial   string
	NotAfter time.Time
	ChainPEM []byte
	// Attestation is the outcome of the attest step.
	Attestation station.Attestation
	// BytesSent and BytesReceived count the wire traffic of the run.
	BytesSent, BytesReceived int
	// AlreadyProgrammed: the board held a valid certificate from this CA
	// and was left alone; Serial, NotAfter and ChainPEM are that one.
	AlreadyProgrammed bool
	// Replaced is the serial a reissue revoked ("" if none).
	Replaced string
}

// StepError says which step of a programming run failed.
type StepError struct {
	Step Step
	Err  error
}

func (e *StepError) Error() string {
	// The request errors already name their verb ("HELLO: no reply …"):
	// say the step once.
	msg := e.Err.Error()
	if verb, _, ok := strings.Cut(msg, ":"); ok && strings.EqualFold(verb, string(e.Step)) {
		return msg
	}
	return fmt.Sprintf("%s: %s", e.Step, msg)
}
func (e *StepError) Unwrap() error { return e.Err }

// Program is ProgramWith without a Verifier: boards are not asked to
// attest.
func Program(ctx context.Context, j *Jig, iss Issuer, progress func(Step, string)) (*Result, error) {
	return ProgramWith(ctx, j, iss, Options{}, progress)
}

// ProgramWith runs HELLO, CSR, attest, sign, INSTALL and STATUS.
// progress, if not nil, is called once after each step with a one-line
// summary. The attest step asks a board that offers attestation when
// o.Verifier is set, and refuses a board without it when
// o.RequireAttestation; a refusal is a *Refusal inside the StepError,
// and an AttestingIssuer records it. Every step is idempotent on the
// device, so a failed run can simply be run again.
func ProgramWith(ctx context.Context, j *Jig, iss Issuer, o Options, progress func(Step, string)) (*Result, error) {
	if progress == nil {
		progress = func(Step, string) {}
	}
	fail := func(s Step, err error) (*Result, error) { return nil, &StepError{Step: s, Err: err} }

	// v2 pipelines CSR and READ 0 behind HELLO 2; the steps are reported as before.
	h, der, csrErr, err := j.HelloCSR(ctx)
	if err != nil {
		return fail(StepHello, err)
	}
	progress(StepHello, fmt.Sprintf("device %s, protocol %d, key %s, state %s", h.DeviceID, h.Proto, h.Key, h.State))
	if csrErr != nil {
		return fail(StepCSR, csrErr)
	}
	req, err := csr.Parse(der)
	if err != nil {
		return fail(StepCSR, err)
	}
	if req.Subject.CommonName != h.DeviceID {
		return fail(StepCSR, fmt.Errorf("CSR CN %q is not the device ID %q from HELLO", req.Subject.CommonName, h.DeviceID))
	}
	fp, _ := csr.KeyFingerprint(req.PublicKey)
	progress(StepCSR, fmt.Sprintf("%d bytes, key sha256:%s", len(der), fp))

	att, msg, err := attestStep(ctx, j, h, o, req.PublicKey)
	ai, attesting := iss.(AttestingIssuer)
	var refusal *Refusal
	if errors.As(err, &refusal) && attesting {
		if rerr := ai.RecordRefusal(ctx, req, att); rerr != nil {
			err = fmt.Errorf("%w (and the ledger did not record it: %v)", err, rerr)
		}
	}
	if err != nil {
		return fail(StepAttest, err)
	}
	progress(StepAttest, msg)

	// After the attest step, so that a line that requires attestation
	// refuses an unattested board whether or not it is programmed.
	if o.Reissue {
		if _, ok := iss.(Revoker); !ok {
			return fail(StepSign, fmt.Errorf("reissue: the issuer (%T) cannot revoke the certificate it would replace", iss))
		}
	}
	var replace string // serial of a valid certificate to revoke after a reissue
	if h.State == factory.StateProgrammed && o.Roots != nil {
		old, why, err := installedValid(ctx, j, iss, h.DeviceID, req.PublicKey, o.Roots)
		switch {
		case err != nil:
			return fail(StepStatus, err)
		case why == "" && !o.Reissue:
			serial := hex.EncodeToString(old[0].SerialNumber.Bytes())
			progress(StepStatus, fmt.Sprintf("programmed already: serial %s, valid until %s; left alone", serial, old[0].NotAfter.UTC().Format(time.RFC3339)))
			return &Result{DeviceID: h.DeviceID, Key: h.Key, Serial: serial, NotAfter: old[0].NotAfter,
				ChainPEM: certstore.EncodePEM(old...), AlreadyProgrammed: true, Attestation: att,
				BytesSent: j.Sent, BytesReceived: j.Received}, nil
		case why == "":
			replace = hex.EncodeToString(old[0].SerialNumber.Bytes())
		}
	}

	var chain []*x509.Certificate
	if attesting {
		chain, err = ai.IssueAttested(ctx, req, att)
	} else {
		chain, err = iss.Issue(ctx, req)
	}
	if err != nil {
		return fail(StepSign, err)
	}
	if len(chain) == 0 {
		return fail(StepSign, fmt.Errorf("issuer returned no certificate"))
	}
	chainPEM := certstore.EncodePEM(chain...)
	serial := hex.EncodeToString(chain[0].SerialNumber.Bytes())
	progress(StepSign, fmt.Sprintf("serial %s, valid until %s", serial, chain[0].NotAfter.UTC().Format(time.RFC3339)))

	inst, err := j.Install(ctx, chainPEM, h.Chunk)
	if err != nil {
		return fail(StepInstall, err)
	}
	if inst.Serial != serial {
		return fail(StepInstall, fmt.Errorf("device reports serial %s, issued %s", inst.Serial, serial))
	}
	progress(StepInstall, fmt.Sprintf("%d bytes installed", len(chainPEM)))

	if j.V2() && inst.State != "" {
		// v2: COMMIT read the state back from the device's disk; a
		// STATUS would say the same again.
		if inst.State != factory.StateProgrammed {
			return fail(StepStatus, fmt.Errorf("device reports state %s after install", inst.State))
		}
		progress(StepStatus, "programmed (state from INSTALL COMMIT)")
	} else {
		st, err := j.Status(ctx)
		if err != nil {
			return fail(StepStatus, err)
		}
		if st.State != factory.StateProgrammed || st.Serial != serial {
			return fail(StepStatus, fmt.Errorf("device reports state %s serial %s after install (detail %q)", st.State, st.Serial, st.Detail))
		}
		progress(StepStatus, "programmed")
	}
	if replace != "" && replace != serial {
		if err := iss.(Revoker).RevokeSerial(replace, ReissueReason); err != nil {
			return fail(StepRevoke, fmt.Errorf("the board holds the new serial %s, but the replaced %s is not revoked: %w", serial, replace, err))
		}
		progress(StepRevoke, fmt.Sprintf("replaced serial %s revoked (%s)", replace, ReissueReason))
	}
	return &Result{
		DeviceID: h.DeviceID, Key: h.Key, Serial: serial, NotAfter: chain[0].NotAfter, ChainPEM: chainPEM, Attestation: att,
		BytesSent: j.Sent, BytesReceived: j.Received, Replaced: replace,
	}, nil
}

// installedValid reads the board's installed chain (CHAIN) and checks it
// as a certificate from this CA: it verifies to roots through its
// intermediates now, for client authentication; the leaf carries the
// device key (pub, from the CSR) and the device ID; and, when iss keeps a
// ledger, it is not revoked. why says what is wrong ("" when valid);
// err is a bus failure. A board whose firmware predates CHAIN (NAK
// unknown-command) cannot be checked: why says so and it is programmed
// as before.
func installedValid(ctx context.Context, j *Jig, iss Issuer, deviceID string, pub crypto.PublicKey, roots *x509.CertPool) ([]*x509.Certificate, string, error) {
	b, err := j.Chain(ctx)
	var nk *NAKError
	if errors.As(err, &nk) {
		return nil, "the board cannot send its chain: " + nk.Error(), nil
	}
	if err != nil {
		return nil, "", err
	}
	certs, err := certstore.ParsePEM(b)
	if err != nil {
		return nil, "installed chain: " + err.Error(), nil
	}
	leaf := certs[0]
	if k, ok := pub.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(leaf.PublicKey) {
		return certs, "installed certificate is for another key", nil
	}
	if leaf.Subject.CommonName != deviceID {
		return certs, fmt.Sprintf("installed certificate is for %q", leaf.Subject.CommonName), nil
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return certs, "installed certificate is not valid from this CA: " + err.Error(), nil
	}
	if rc, ok := iss.(RevocationChecker); ok {
		revoked, err := rc.SerialRevoked(hex.EncodeToString(leaf.SerialNumber.Bytes()))
		switch {
		case err != nil:
			return certs, "installed certificate: " + err.Error(), nil
		case revoked:
			return certs, "installed certificate is revoked", nil
		}
	}
	return certs, "", nil
}
