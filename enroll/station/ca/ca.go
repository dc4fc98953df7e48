// Package ca is the jig's built-in local CA, for labs and small lines.
//
// A CA directory (made by Init, `devid-jig ca init`) holds a root, an
// issuing intermediate, the issuing policy, the issuance ledger and the
// CRL; docs/ca.md describes the layout. Local.Issue checks the CSR and the
// policy, refuses a device ID already issued to a different (unrevoked)
// key, and records every certificate in the ledger, durably, before
// returning it, so nothing issued goes unrecorded. The ledger (Ledger) is
// ledger.jsonl in the directory, or a PostgreSQL database shared by every
// station of a line (ledger_pg.go), where the same rules are constraints.
package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"time"

	"github.com/pelletier/go-toml/v2"

	"devid/enroll/certstore"
	"devid/enroll/csr"
	"devid/enroll/station"
	"devid/hal/atomicfile"
	"devid/hal/board"
)

// Files in a CA directory.
const (
	RootCertFile    = "root.pem"
	RootKeyFile     = "root.key"
	IssuingCertFile = "issuing.pem"
	IssuingKeyFile  = "issuing.key"
	PolicyFile      = "policy.toml"
	LedgerFile      = "ledger.jsonl"
	CRLFile         = "crl.pem"
)

// Sentinel errors callers branch on.
var (
	// ErrExists: Init found a CA already in the directory.
	ErrExists = errors.New("CA already initialised")
	// ErrPolicy: the CSR breaks the issuing policy.
	ErrPolicy = errors.New("CSR refused by CA policy")
	// ErrIDTaken: the device ID was issued to a different key.
	ErrIDTaken = errors.New("device ID already issued to a different key")
	// ErrNotIssued: revoke named a device ID with no live certificate.
	ErrNotIssued = errors.New("no unrevoked certificate for device ID")
	// ErrSerialTaken: the ledger already holds the serial (a new random
	// serial is drawn once before giving up).
	ErrSerialTaken = errors.New("serial number already in the ledger")
)

// Policy is the issuing policy, read from policy.toml.
type Policy struct {
	// Validity is the leaf lifetime. Devices may sit a year in a warehouse
	// before first use, so the default is long.
	Validity time.Duration
	// Backdate moves notBefore into the past to absorb device clock skew.
	Backdate time.Duration
	// AllowedID must match the whole device ID (in addition to the DPS
	// registration ID rules, which always apply).
	AllowedID *regexp.Regexp
	// CRLValidity is how long a CRL is fresh (its nextUpdate).
	CRLValidity time.Duration
	// CRLURL, if set, goes into each leaf as its CRL distribution point.
	CRLURL string
	// RequireTPMAttestation refuses every CSR whose key was not proven
	// to be in a TPM by the jig's attest step (docs/factory-protocol.md).
	RequireTPMAttestation bool
	// Ledger, if set, is the PostgreSQL URL of a shared ledger
	// (postgres://...); "" is the ledger.jsonl of the CA directory.
	Ledger string
}

// policyFile is policy.toml as written (durations as Go duration strings).
type policyFile struct {
	Validity    string `toml:"validity"`
	Backdate    string `toml:"backdate"`
	AllowedID   string `toml:"allowed_id"`
	CRLValidity string `toml:"crl_validity"`
	CRLURL      string `toml:"crl_url"`
	// A pointer: a policy file from before attestation has no such key.
	RequireTPMAttestation *bool  `toml:"require_tpm_attestation"`
	Ledger                string `toml:"ledger"`
}

const defaultPolicy = `# Issuing policy of the devid-jig local CA (see docs/ca.md).
# Leaf certificate lifetime (Go duration). Devices may wait a year before first use.
validity = "43800h"      # 5 years
# notBefore is set this far in the past, for device clock skew.
backdate = "10m"
# Device IDs must match this (whole-string) regular expression as well as
# the DPS registration ID rules (lowercase alphanumerics and - . _ :, <= 128).
allowed_id = '^[a-z0-9][a-z0-9._:-]*$'
# nextUpdate of each CRL written by "devid-jig revoke".
crl_validity = "168h"
# Optional CRL distribution point URL put into every leaf.
crl_url = ""
# Sign only keys the jig proved to be in a TPM (devid-jig program --tpm-roots).
require_tpm_attestation = false
# Issuance ledger: "" is ledger.jsonl in this directory (one station host);
# a postgres:// URL puts every station of the line on one database.
ledger = ""
`

// LoadPolicy reads and checks a policy file.
func LoadPolicy(path string) (*Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CA policy: %w", err)
	}
	var pf policyFile
	dec := toml.NewDecoder(bytes.NewReader(b)).DisallowUnknownFields()
	if err := dec.Decode(&pf); err != nil {
		return nil, fmt.Errorf("CA policy %s: %w", path, err)
	}
	p := &Policy{CRLURL: pf.CRLURL, RequireTPMAttestation: pf.RequireTPMAttestation != nil && *pf.RequireTPMAttestation, Ledger: pf.Ledger}
	if err := checkLedgerURL(pf.Ledger); err != nil {
		return nil, fmt.Errorf("CA policy %s: ledger = %q: %w", path, redact(pf.Ledger), err)
	}
	for _, d := range []struct {
		name string
		s    string
		dst  *time.Duration
		min  time.Duration
	}{
		{"validity", pf.Validity, &p.Validity, time.Minute},
		{"backdate", pf.Backdate, &p.Backdate, 0},
		{"crl_validity", pf.CRLValidity, &p.CRLValidity, time.Minute},
	} {
		v, err := time.ParseDuration(d.s)
		if err != nil || v < d.min {
			return nil, fmt.Errorf("CA policy %s: %s = %q: want a Go duration of at least %v", path, d.name, d.s, d.min)
		}
		*d.dst = v
	}
	re, err := regexp.Compile(`^(?:` + pf.AllowedID + `)$`)
	if err != nil || pf.AllowedID == "" {
		return nil, fmt.Errorf("CA policy %s: allowed_id = %q: not a regular expression", path, pf.AllowedID)
	}
	p.AllowedID = re
	return p, nil
}

// InitOptions tune Init.
type InitOptions struct {
	// Name goes into the subjects ("<Name> Root CA", "<Name> Issuing CA").
	Name string
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
	// PKCS11, if set, is a PKCS#11 URI (RFC 7512, ParsePKCS11URI): the
	// root and issuing keys are made in that token and never leave it
	// (keysource.go, docs/ca.md). Empty: PEM key files.
	PKCS11 string
}

// Init creates a CA in dir: a P-256 root (20 years), an issuing
// intermediate (10 years, path length 0), the default policy and an empty
// ledger. Keys are written 0600 in a 0700 directory. It refuses a
// directory that already has a root.
func Init(dir string, o InitOptions) error {
	if o.Name == "" {
		o.Name = "devid factory"
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	if _, err := os.Stat(filepath.Join(dir, RootCertFile)); err == nil {
		return fmt.Errorf("ca init %s: %w", dir, ErrExists)
	}
	if err := atomicfile.EnsurePrivateDir(dir); err != nil {
		return fmt.Errorf("ca init: %w", err)
	}
	t := now().Add(-time.Hour)
	keys, err := newInitKeys(o)
	if err != nil {
		return fmt.Errorf("ca init: %w", err)
	}
	defer keys.close()
	rootKey, issKey := keys.root, keys.issuing
	root := &x509.Certificate{
		Subject:   pkix.Name{CommonName: o.Name + " Root CA"},
		NotBefore: t, NotAfter: t.AddDate(20, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true, IsCA: true, MaxPathLen: 1,
	}
	rootDER, err := sign(root, root, rootKey.Public(), rootKey)
	if err != nil {
		keys.abort()
		return fmt.Errorf("ca init: root: %w", err)
	}
	rootCert, _ := x509.ParseCertificate(rootDER)
	iss := &x509.Certificate{
		Subject:   pkix.Name{CommonName: o.Name + " Issuing CA"},
		NotBefore: t, NotAfter: t.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true, IsCA: true, MaxPathLen: 0, MaxPathLenZero: true,
	}
	issDER, err := sign(iss, rootCert, issKey.Public(), rootKey)
	if err != nil {
		keys.abort()
		return fmt.Errorf("ca init: issuing: %w", err)
	}
	files := append(keys.files, []caFile{
		{IssuingCertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: issDER}), 0o644},
		{PolicyFile, []byte(defaultPolicy), 0o644},
		{LedgerFile, nil, 0o600},
		// root.pem last: its presence marks a complete CA.
		{RootCertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER}), 0o644},
	}...)
	for _, f := range files {
		if err := atomicfile.CreateExclusive(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			keys.abort()
			return fmt.Errorf("ca init: write %s: %w", f.name, err)
		}
	}
	return nil
}

func keyPEM(k *ecdsa.PrivateKey) []byte {
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) ([]byte, error) {
	sn, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = sn
	return x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
}

// newSerial returns a random positive 127-bit serial (RFC 5280: at most
// 20 octets; unpredictable serials).
func newSerial() (*big.Int, error) {
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	return sn.Add(sn, big.NewInt(1)), nil
}

// Local is an open CA directory. It is safe for concurrent use, and
// several processes may share the directory (the file ledger is locked),
// or, with a PostgreSQL ledger, the database from many hosts.
type Local struct {
	dir     string
	station string
	root    *x509.Certificate
	issuer  *x509.Certificate
	key     crypto.Signer
	policy  *Policy
	ledger  Ledger
	// keyCloser releases the PKCS#11 token of the issuing key (nil for a
	// key file).
	keyCloser io.Closer
	// afterSign, if set (tests), runs between signing and finalizing.
	afterSign func(der []byte)
	// Now is the clock (tests replace it).
	Now func() time.Time
	// HardwareModuleNameSAN builds the subjectAltName extension that
	// names the TPM of an attested key (enroll/attest's
	// HardwareModuleNameSAN). IssueAttested refuses an attested request
	// while it is nil, rather than issue a certificate without it.
	HardwareModuleNameSAN func(hwType asn1.ObjectIdentifier, hwSerial []byte) (pkix.Extension, error)
}

var _ interface {
	Issue(context.Context, *x509.CertificateRequest) ([]*x509.Certificate, error)
	IssueAttested(context.Context, *x509.CertificateRequest, station.Attestation) ([]*x509.Certificate, error)
	RecordRefusal(context.Context, *x509.CertificateRequest, station.Attestation) error
} = (*Local)(nil)

// Open opens the CA in dir with the ledger its policy names. station
// names this jig in ledger records.
func Open(dir, station string) (*Local, error) {
	return OpenWith(dir, OpenOptions{Station: station})
}

// OpenOptions tune OpenWith.
type OpenOptions struct {
	// Station names this jig in ledger records.
	Station string
	// Ledger overrides the policy's ledger: a postgres:// URL, or "file"
	// for ledger.jsonl in the CA directory. "" keeps the policy's.
	Ledger string
	// LedgerRetry bounds how long a PostgreSQL ledger operation waits
	// for the database to come back (0: DefaultLedgerRetry).
	LedgerRetry time.Duration
}

// OpenWith opens the CA in dir.
func OpenWith(dir string, o OpenOptions) (*Local, error) {
	station := o.Station
	root, err := readCert(filepath.Join(dir, RootCertFile))
	if err != nil {
		return nil, err
	}
	issuer, err := readCert(filepath.Join(dir, IssuingCertFile))
	if err != nil {
		return nil, err
	}
	key, keyCloser, err := openIssuingKey(dir)
	if err != nil {
		return nil, err
	}
	keyFile := IssuingKeyFile
	if keyCloser != nil {
		keyFile = IssuingKeyURIFile
	}
	l, err := open(dir, station, root, issuer, key, keyFile, o)
	if err != nil && keyCloser != nil {
		keyCloser.Close()
	}
	if l != nil {
		l.keyCloser = keyCloser
	}
	return l, err
}

func open(dir, station string, root, issuer *x509.Certificate, key crypto.Signer, keyFile string, o OpenOptions) (*Local, error) {
	if k, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(issuer.PublicKey) {
		return nil, fmt.Errorf("CA %s: %s does not match %s", dir, keyFile, IssuingCertFile)
	}
	if err := issuer.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("CA %s: %s is not signed by %s: %w", dir, IssuingCertFile, RootCertFile, err)
	}
	policy, err := LoadPolicy(filepath.Join(dir, PolicyFile))
	if err != nil {
		return nil, err
	}
	l := &Local{dir: dir, station: station, root: root, issuer: issuer, key: key, policy: policy, Now: time.Now}
	url := policy.Ledger
	if o.Ledger != "" {
		url = o.Ledger
	}
	switch url {
	case "", "file":
		fl, err := openLedger(filepath.Join(dir, LedgerFile), func() time.Time { return l.Now() })
		if err != nil {
			return nil, err
		}
		l.ledger = fileLedger{fl}
	default:
		if err := checkLedgerURL(url); err != nil {
			return nil, fmt.Errorf("ledger %q: %w", redact(url), err)
		}
		sum := sha256.Sum256(issuer.Raw)
		pl, err := openPGLedger(context.Background(), url, hex.EncodeToString(sum[:]), o.LedgerRetry)
		if err != nil {
			return nil, err
		}
		l.ledger = pl
	}
	return l, nil
}

// Close releases the ledger and the issuing key's token.
func (l *Local) Close() error {
	err := l.ledger.Close()
	if l.keyCloser != nil {
		if cerr := l.keyCloser.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// Root is the CA's root certificate (the devices' factory trust anchor).
func (l *Local) Root() *x509.Certificate { return l.root }

// Chain is the issuing intermediate, which Issue appends after each leaf.
func (l *Local) Chain() []*x509.Certificate { return []*x509.Certificate{l.issuer} }

// Policy is the issuing policy in force.
func (l *Local) Policy() *Policy { return l.policy }

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	certs, err := certstore.ParsePEM(b)
	if err != nil {
		return nil, fmt.Errorf("CA %s: %w", path, err)
	}
	return certs[0], nil
}

func readKey(path string) (crypto.Signer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("CA key %s has mode %v: want 0600", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("CA key %s: not a PKCS#8 PEM private key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CA key %s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("CA key %s: %T cannot sign", path, k)
	}
	return s, nil
}

// Issue signs req for its CN (the device ID) and returns leaf then issuing
// intermediate. The ledger record is durable before Issue returns. A
// policy with require_tpm_attestation refuses it: the request carries no
// attestation.
func (l *Local) Issue(ctx context.Context, req *x509.CertificateRequest) ([]*x509.Certificate, error) {
	return l.issue(ctx, req, nil)
}

// IssueAttested is Issue with the outcome of the jig's attest step: an
// attested key gets the HardwareModuleName in its certificate, and the
// ledger records the outcome and the EK certificate's SHA-256. Under
// require_tpm_attestation anything but "attested" is refused, and the
// refusal recorded.
func (l *Local) IssueAttested(ctx context.Context, req *x509.CertificateRequest, a station.Attestation) ([]*x509.Certificate, error) {
	return l.issue(ctx, req, &a)
}

// RecordRefusal appends a "refuse" record for a board refused at the
// attest step (no certificate was issued).
func (l *Local) RecordRefusal(ctx context.Context, req *x509.CertificateRequest, a station.Attestation) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fp, _ := csr.KeyFingerprint(req.PublicKey)
	return l.ledger.Refuse(ctx, Record{Op: OpRefuse, Time: l.Now().UTC(), Serial: NoSerial, DeviceID: req.Subject.CommonName,
		KeySHA256: fp, Station: l.station, Attestation: a.Outcome, EKSHA256: a.EKSHA256, Reason: a.Detail})
}

func (l *Local) issue(ctx context.Context, req *x509.CertificateRequest, a *station.Attestation) ([]*x509.Certificate, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if l.policy.RequireTPMAttestation && (a == nil || !a.IsAttested()) {
		outcome := "no attestation"
		if a != nil {
			outcome = a.Outcome
			r := *a
			r.Outcome, r.Detail = station.RefusedPrefix+"policy", "require_tpm_attestation; attest step: "+a.Outcome
			if err := l.RecordRefusal(ctx, req, r); err != nil {
				return nil, err
			}
		}
		return nil, fmt.Errorf("%w: require_tpm_attestation is set and the key was not attested (%s)", ErrPolicy, outcome)
	}
	if err := req.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: CSR signature does not verify: %v", ErrPolicy, err)
	}
	id := req.Subject.CommonName
	if err := board.Validate(id); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPolicy, err)
	}
	if !l.policy.AllowedID.MatchString(id) {
		return nil, fmt.Errorf("%w: device ID %q does not match allowed_id %s", ErrPolicy, id, l.policy.AllowedID)
	}
	fp, err := csr.KeyFingerprint(req.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPolicy, err)
	}
	now := l.Now()
	notAfter := now.Add(l.policy.Validity)
	if notAfter.After(l.issuer.NotAfter) {
		notAfter = l.issuer.NotAfter
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: id},
		NotBefore:   now.Add(-l.policy.Backdate),
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if l.policy.CRLURL != "" {
		tmpl.CRLDistributionPoints = []string{l.policy.CRLURL}
	}
	var rec Record
	if a != nil {
		rec.Attestation, rec.EKSHA256 = a.Outcome, a.EKSHA256
		if a.IsAttested() {
			if l.HardwareModuleNameSAN == nil {
				return nil, fmt.Errorf("certificate for %s: the key is attested, but this CA cannot write the HardwareModuleName (no HardwareModuleNameSAN builder)", id)
			}
			ext, err := l.HardwareModuleNameSAN(a.HWType, a.HWSerialNum)
			if err != nil {
				return nil, fmt.Errorf("certificate for %s: HardwareModuleName: %w", id, err)
			}
			tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, ext)
		}
	}
	// The serial is drawn before signing, so that the ledger records it
	// (reserved) before any certificate with it exists.
	var leaf *x509.Certificate
	for try := 0; ; try++ {
		sn, err := newSerial()
		if err != nil {
			return nil, err
		}
		tmpl.SerialNumber = sn
		rec.Op, rec.Time, rec.Serial, rec.DeviceID = OpIssue, now.UTC(), hex.EncodeToString(sn.Bytes()), id
		// x509 writes validity at second precision.
		rec.KeySHA256, rec.Station = fp, l.station
		rec.NotBefore, rec.NotAfter = tmpl.NotBefore.UTC().Truncate(time.Second), tmpl.NotAfter.UTC().Truncate(time.Second)
		err = l.ledger.Issue(ctx, rec, func() error {
			der, err := x509.CreateCertificate(rand.Reader, tmpl, l.issuer, req.PublicKey, l.key)
			if err != nil {
				return fmt.Errorf("sign certificate for %s: %w", id, err)
			}
			if leaf, err = x509.ParseCertificate(der); err != nil {
				return err
			}
			if l.afterSign != nil {
				l.afterSign(der)
			}
			return nil
		})
		if errors.Is(err, ErrSerialTaken) && try == 0 {
			continue
		}
		if err != nil {
			if leaf != nil {
				return nil, fmt.Errorf("certificate for %s not released: %w", id, err)
			}
			return nil, err
		}
		return []*x509.Certificate{leaf, l.issuer}, nil
	}
}

// Issued returns the ledger's issue records for a device ID, oldest first.
func (l *Local) Issued(deviceID string) ([]Record, error) {
	return l.ledger.Issued(context.Background(), deviceID)
}

// Pending returns issuances reserved in the ledger and never finalized
// (a station stopped between reserving and releasing; docs/ca.md). Their
// certificates were never released, but may exist: Revoke lists them on
// the CRL.
func (l *Local) Pending() ([]Record, error) {
	return l.ledger.Pending(context.Background())
}

// Refused returns the ledger's refuse records for a device ID (boards
// refused at the attest step), oldest first.
func (l *Local) Refused(deviceID string) ([]Record, error) {
	return l.ledger.Refused(context.Background(), deviceID)
}

// Revoke marks every unrevoked certificate of deviceID revoked in the
// ledger and rewrites the CRL. It returns the revoked serials.
func (l *Local) Revoke(deviceID, reason string) ([]string, error) {
	serials, err := l.ledger.Revoke(context.Background(), deviceID, l.station, reason, l.Now().UTC())
	if err != nil {
		return serials, err
	}
	return serials, l.WriteCRL()
}

// RevokeSerial marks one certificate revoked in the ledger (serial in
// hex, as Record.Serial and jig results give it) and rewrites the CRL:
// `devid-jig program --reissue` revokes the certificate it replaced, and
// only that one (Revoke takes every certificate of a device ID). A serial
// already revoked is not an error (a rerun); an unknown one is
// ErrNotIssued.
func (l *Local) RevokeSerial(serial, reason string) error {
	if revoked, err := l.SerialRevoked(serial); err != nil {
		return fmt.Errorf("revoke serial: %w", err)
	} else if revoked {
		return nil
	}
	serial, _ = normSerial(serial) // valid: SerialRevoked checked it
	if err := l.ledger.RevokeSerial(context.Background(), serial, l.station, reason, l.Now().UTC()); err != nil {
		return err
	}
	return l.WriteCRL()
}

// WriteCRL re-signs the CRL from the ledger (for a fresh nextUpdate). With
// a PostgreSQL ledger it lists the revocations of every station.
func (l *Local) WriteCRL() error {
	revoked, err := l.ledger.Revoked(context.Background())
	if err != nil {
		return fmt.Errorf("CRL: %w", err)
	}
	return l.writeCRL(revoked)
}

// CRLPath is where the CRL is written.
func (l *Local) CRLPath() string { return filepath.Join(l.dir, CRLFile) }

func (l *Local) writeCRL(revoked []Revocation) error {
	var entries []x509.RevocationListEntry
	for _, e := range revoked {
		sn, ok := new(big.Int).SetString(e.Serial, 16)
		if !ok {
			return fmt.Errorf("%w: serial %q is not hex", ErrLedgerCorrupt, e.Serial)
		}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: sn, RevocationTime: e.Time})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].SerialNumber.Cmp(entries[j].SerialNumber) < 0 })
	now := l.Now()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		// Nanoseconds keep the CRL number increasing across regenerations.
		Number:                    big.NewInt(now.UnixNano()),
		ThisUpdate:                now.Add(-time.Minute),
		NextUpdate:                now.Add(l.policy.CRLValidity),
		RevokedCertificateEntries: entries,
	}, l.issuer, l.key)
	if err != nil {
		return fmt.Errorf("sign CRL: %w", err)
	}
	return atomicfile.WriteFile(l.CRLPath(), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644)
}

// Exists reports whether dir holds an initialised CA.
func Exists(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, RootCertFile))
	return !errors.Is(err, fs.ErrNotExist)
}
