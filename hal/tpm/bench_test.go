package tpm

import (
	"context"
	"crypto"
	"crypto/sha256"
	"os"
	"slices"
	"testing"
	"time"

	"devid/hal/tpm/tpmtest"
)

// benchTPM opens the TPM named by DEVID_BENCH_TPM (so scripts/bench.d/tpm.sh
// can measure us and tpm2-tools on the same swtpm), else a private swtpm.
func benchTPM(b *testing.B) *TPM {
	addr := os.Getenv("DEVID_BENCH_TPM")
	if addr == "" {
		addr = tpmtest.Start(b).Addr()
	}
	return openT(b, addr)
}

// BenchmarkCreateKey: SRK CreatePrimary + CreateLoaded (or Create) + flushes,
// i.e. what `tpm2_createprimary` + `tpm2_create` do.
func BenchmarkCreateKey(b *testing.B) {
	tp := benchTPM(b)
	var lat latencies
	for b.Loop() {
		t0 := time.Now()
		if _, err := tp.CreateKey(context.Background()); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	lat.report(b)
}

// latencies reports p50 and p95 beside the mean that ns/op gives.
type latencies []time.Duration

func (l latencies) report(b *testing.B) {
	if len(l) == 0 {
		return
	}
	slices.Sort(l)
	b.ReportMetric(float64(l[len(l)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(l[(len(l)*95)/100].Nanoseconds()), "p95-ns")
}

// BenchmarkLoadKey: SRK CreatePrimary + Load + ContextSave + flushes (once
// per key per process).
func BenchmarkLoadKey(b *testing.B) {
	tp := benchTPM(b)
	blob, err := tp.CreateKey(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := tp.LoadKey(context.Background(), blob); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSign: one ECDSA P-256 signature through crypto.Signer
// (ContextLoad + Sign + FlushContext + software verify), i.e. what
// `tpm2_sign -c key.ctx` does.
func BenchmarkSign(b *testing.B) {
	k := newKey(b, benchTPM(b))
	d := sha256.Sum256([]byte("bench"))
	var lat latencies
	for b.Loop() {
		t0 := time.Now()
		if _, err := k.Sign(nil, d[:], crypto.SHA256); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	lat.report(b)
}
