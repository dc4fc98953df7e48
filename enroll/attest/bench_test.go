package attest

import (
	"context"
	"testing"
	"time"

	"devid/hal/tpm/tpmtest"
)

// BenchmarkAttest: one whole attestation on swtpm, with the RSA-2048 EK
// swtpm_setup makes, and with an ECC P-256 EK. Besides ns/op it reports the TPM time of
// the device's two commands: attest-ms (EK certificate read, AK
// CreatePrimary, key load, TPM2_Certify, flushes) and activate-ms (EK
// and AK CreatePrimary, policy session, TPM2_ActivateCredential,
// flushes), and the jig's verify-ms (Begin, incl. MakeCredential).
func BenchmarkAttest(b *testing.B) {
	b.Run("ek=rsa2048", func(b *testing.B) { benchAttest(b, false) })
	b.Run("ek=p256", func(b *testing.B) { benchAttest(b, true) })
}

func benchAttest(b *testing.B, eccEK bool) {
	maker := tpmtest.NewMaker(b, "maker")
	bd := newBoard(b, maker)
	if eccEK {
		provisionECCEK(b, bd, maker)
	}
	v := &Verifier{Roots: maker.Pool()}
	ctx := context.Background()
	var att, act, ver time.Duration
	for b.Loop() {
		n := nonce(b)
		t0 := time.Now()
		js, err := bd.dev.Attest(ctx, n)
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		st, err := ParseStatement(js)
		if err != nil {
			b.Fatal(err)
		}
		p, err := v.Begin(st, n, bd.key.Public())
		if err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		ch := p.Challenge()
		secret, err := bd.dev.Activate(ctx, ch.CredentialBlob, ch.EncryptedSecret)
		if err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		if _, err := p.Finish(secret); err != nil {
			b.Fatal(err)
		}
		att += t1.Sub(t0)
		ver += t2.Sub(t1)
		act += t3.Sub(t2)
	}
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
	b.ReportMetric(per(att), "attest-ms")
	b.ReportMetric(per(act), "activate-ms")
	b.ReportMetric(per(ver), "verify-ms")
}
