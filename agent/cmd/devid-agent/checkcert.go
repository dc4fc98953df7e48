package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"devid/agent/config"
	"devid/agent/renewal"
	"devid/enroll/certstore"
	"devid/enroll/keys"
)

func (c *checker) keyAndCert() {
	ks, err := keys.Open(c.cfg.Key.Backend, c.cfg.StateDir)
	if err != nil {
		c.add("key", "fail", err.Error(), "set key.backend to auto, file:PATH or tpm:...")
		return
	}
	k, err := ks.Load()
	c.credUnreadable(err)
	if errors.Is(err, keys.ErrNoKey) {
		c.add("key", "warn", "no device key yet ("+ks.Name()+")", "the device has not been through the factory jig: run `devid-jig program` against factory.port")
	} else if errors.Is(err, fs.ErrPermission) {
		c.add("key", "fail", err.Error(), "run as root (the key is readable only by root and the agent's user "+config.AgentUser+"; a TPM needs group tss)")
	} else if err != nil {
		c.add("key", "fail", err.Error(), "check the key backend (TPM device access, key file permissions)")
	} else {
		c.key = k
		detail := "present (" + k.Backend() + ")"
		if fsk, ok := ks.(interface{ Path() string }); ok {
			if st, err := os.Stat(fsk.Path()); err == nil && st.Mode().Perm() != 0o600 {
				c.add("key", "fail", fmt.Sprintf("%s has mode %04o", fsk.Path(), st.Mode().Perm()), "chmod 0600 "+fsk.Path())
				return
			}
			detail += " " + fsk.Path() + " mode 0600"
		}
		c.add("key", "pass", detail, "")
	}
	store := certstore.Open(c.cfg.StateDir, nil)
	ch, err := store.Load()
	c.credUnreadable(err)
	if errors.Is(err, certstore.ErrNoChain) {
		c.add("cert", "warn", "no certificate installed", "program the device on the factory jig")
		return
	} else if err != nil {
		c.add("cert", "fail", err.Error(), permHint(err, store.Path(),
			"the chain file is damaged: see the agent's log; the device needs the certificate installed again on the jig"))
		return
	}
	c.add("cert", "pass", "serial "+ch.Serial()+", CN "+ch.Leaf.Subject.CommonName+", issuer "+ch.Leaf.Issuer.CommonName, "")
	c.chain = ch
	if c.key != nil && !ch.Matches(c.key.Public()) {
		c.add("key-cert-match", "fail", "the certificate's public key is not the device key", "re-issue the certificate for this key on the jig; do not re-key")
	} else if c.key != nil {
		c.add("key-cert-match", "pass", "serial "+ch.Serial()+", CN "+ch.Leaf.Subject.CommonName, "")
	}
	// Chain validity against the factory root.
	if roots, err := certstore.LoadRoots(c.cfg.Factory.Root); err != nil {
		c.add("chain", "warn", "factory root unavailable: "+err.Error(), "install the factory root at factory.root to verify the chain")
	} else {
		inter := x509.NewCertPool()
		for _, ic := range ch.Intermediates {
			inter.AddCert(ic)
		}
		_, err := ch.Leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: c.now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err != nil {
			c.add("chain", "fail", err.Error(), "the installed chain does not verify to factory.root; re-program the device")
		} else {
			c.add("chain", "pass", "verifies to "+c.cfg.Factory.Root, "")
		}
	}
	c.certExpiry(ch)
	r := renewal.Check(c.cfg, c.now)
	c.add("renewal", r.Level, r.Message, r.Hint)
}

// certExpiry reports the expiry of the certificate the hub sees: the
// operational one when renewal (paths dps and hub) installed one, else
// the device certificate, naming both when both exist.
func (c *checker) certExpiry(ch *certstore.Chain) {
	dev := fmt.Sprintf("device certificate expires %s (%s)", ch.NotAfter().Format(time.RFC3339), humanUntil(ch.NotAfter().Sub(c.now)))
	inUse, detail := ch.Leaf, "the hub uses the "+dev
	if renewal.UsesOperational(c.cfg) {
		op, file, err := operationalLeaf(c.cfg)
		switch {
		case err == nil:
			inUse = op
			detail = fmt.Sprintf("the hub uses the operational certificate (%s, serial %x), expires %s (%s); the %s",
				renewal.OperationalChainFile, op.SerialNumber, op.NotAfter.Format(time.RFC3339), humanUntil(op.NotAfter.Sub(c.now)), dev)
		case errors.Is(err, fs.ErrNotExist):
			detail += " (no operational certificate issued yet)"
		case errors.Is(err, fs.ErrPermission):
			c.add("cert-expiry", "fail", err.Error(), stateDenied(file))
			return
		default:
			c.add("cert-expiry", "warn", fmt.Sprintf("%s: %v; %s", file, err, dev), "the agent registers with DPS again to get a new one; see its log")
			return
		}
	}
	left := inUse.NotAfter.Sub(c.now)
	life := inUse.NotAfter.Sub(inUse.NotBefore)
	switch {
	case left <= 0:
		c.add("cert-expiry", "fail", "expired: "+detail, "renew the certificate (renewal.path) or re-program the device")
	case left < life/10 || left < 7*24*time.Hour:
		c.add("cert-expiry", "warn", detail, "renewal should already have happened; see `devid-agent status`")
	case inUse != ch.Leaf && !c.now.Before(ch.NotAfter()):
		c.add("cert-expiry", "warn", detail, "the device certificate is the onboarding credential: registering with DPS again needs it; re-program the device before the operational one runs out")
	default:
		c.add("cert-expiry", "pass", detail, "")
	}
}

// operationalLeaf reads the operational certificate that renewal paths
// dps and hub install and the hub then gets (renewal.OperationalChainFile),
// with its path; the error wraps fs.ErrNotExist when there is none yet.
func operationalLeaf(cfg *config.Config) (*x509.Certificate, string, error) {
	file := filepath.Join(cfg.StateDir, renewal.OperationalChainFile)
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, file, err
	}
	certs, err := certstore.ParsePEM(raw)
	if err != nil {
		return nil, file, err
	}
	return certs[0], file, nil
}

// credUnreadable notes why the reachability checks have no credential
// when loading the key or certificate failed for another reason than its
// absence: "no certificate yet" would be false.
func (c *checker) credUnreadable(err error) {
	switch {
	case err == nil || errors.Is(err, keys.ErrNoKey) || errors.Is(err, certstore.ErrNoChain) || c.noCred != "":
	case errors.Is(err, fs.ErrPermission):
		c.noCred = "cannot read the device key or certificate (permission denied): run as root to probe with them"
	default:
		c.noCred = "the device key or certificate cannot be loaded (see key and cert above)"
	}
}
