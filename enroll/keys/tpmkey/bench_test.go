//go:build !notpm

package tpmkey

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"testing"

	"devid/hal/tpm/tpmtest"
)

// BenchmarkTLSHandshake: a full TLS 1.3 mutual-auth handshake on loopback
// with the client key in swtpm versus in software. The difference is the
// cost of one TPM signature through our layer.
func BenchmarkTLSHandshake(b *testing.B) {
	ca := newCA(b)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srv := tls.Certificate{Certificate: [][]byte{ca.issue(b, pkix.Name{CommonName: "localhost"}, srvKey.Public(), x509.ExtKeyUsageServerAuth).Raw}, PrivateKey: srvKey}

	sw := tpmtest.Start(b)
	_, tk := createKey(b, sw.Addr(), b.TempDir())
	b.Cleanup(func() { tk.(*Key).Close() })
	soft, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)

	for _, c := range []struct {
		name string
		key  crypto.Signer
	}{{"tpm", tk}, {"software", soft}} {
		b.Run(c.name, func(b *testing.B) {
			leaf := ca.issue(b, pkix.Name{CommonName: "dev-bench"}, c.key.Public(), x509.ExtKeyUsageClientAuth)
			cli := tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: c.key}
			for b.Loop() {
				if _, err := handshake(b, ca, srv, cli, tls.VersionTLS13); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
