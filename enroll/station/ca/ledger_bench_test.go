package ca_test

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"devid/enroll/station/ca"
	"devid/enroll/station/ca/pgtest"
)

// BenchmarkLedgerIssue measures one issuance, embedded file ledger vs
// PostgreSQL (a local server on a unix socket, fsync on): "ledger" is the
// ledger alone (check, reserve, finalize around a no-op signing), "issue"
// is Local.Issue with the CSR checks and the ECDSA signature.
func BenchmarkLedgerIssue(b *testing.B) {
	srv := pgtest.Start(b)
	for _, backend := range []string{"file", "postgres"} {
		open := func(b *testing.B) *ca.Local {
			dir := filepath.Join(b.TempDir(), "ca")
			if err := ca.Init(dir, ca.InitOptions{}); err != nil {
				b.Fatal(err)
			}
			o := ca.OpenOptions{Station: "bench"}
			if backend == "postgres" {
				o.Ledger = srv.NewDatabase(b)
			}
			l, err := ca.OpenWith(dir, o)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { l.Close() })
			return l
		}
		b.Run("ledger/"+backend, func(b *testing.B) {
			led := ca.LedgerOf(open(b))
			key := strings.Repeat("ab", 32)
			ctx := context.Background()
			now := time.Now().UTC().Truncate(time.Second)
			for i := 0; b.Loop(); i++ {
				serial := fmt.Sprintf("%016x%016x", rand.Uint64(), rand.Uint64())
				r := ca.Record{Op: ca.OpIssue, Time: now, Serial: serial, DeviceID: fmt.Sprintf("bench-%d", i), KeySHA256: key,
					Station: "bench", NotBefore: now, NotAfter: now.Add(time.Hour)}
				if err := led.Issue(ctx, r, func() error { return nil }); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("issue/"+backend, func(b *testing.B) {
			l := open(b)
			ctx := context.Background()
			const batch = 64
			reqs := make([]*x509.CertificateRequest, 0, batch)
			for i := 0; b.Loop(); i++ {
				if len(reqs) == 0 {
					b.StopTimer()
					for j := range batch {
						r, err := newRequest(fmt.Sprintf("bench-%d", i+j))
						if err != nil {
							b.Fatal(err)
						}
						reqs = append(reqs, r)
					}
					b.StartTimer()
				}
				chain, err := l.Issue(ctx, reqs[0])
				if err != nil {
					b.Fatal(err)
				}
				reqs = reqs[1:]
				_ = hex.EncodeToString(chain[0].SerialNumber.Bytes())
			}
		})
	}
}
