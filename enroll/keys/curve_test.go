package keys_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"path/filepath"
	"testing"

	"devid/enroll/keys"
)

// TestFileBackendCurves creates, loads and signs with a key of each curve;
// Load takes the curve from the PEM, whatever the spec says.
func TestFileBackendCurves(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		opt   string
		curve elliptic.Curve
		hash  crypto.Hash
	}{
		{"", elliptic.P256(), crypto.SHA256},
		{",curve=p256", elliptic.P256(), crypto.SHA256},
		{",curve=p384", elliptic.P384(), crypto.SHA384},
		{",curve=P-384", elliptic.P384(), crypto.SHA384},
	} {
		dir := t.TempDir()
		path := filepath.Join(dir, "k,1.pem") // a comma in the path is not an option
		st, err := keys.Open("file:"+path+tc.opt, "")
		if err != nil {
			t.Fatalf("%q: %v", tc.opt, err)
		}
		if got := st.(*keys.FileStore).Path(); got != path {
			t.Fatalf("%q: path %q, want %q", tc.opt, got, path)
		}
		k, err := st.Create()
		if err != nil {
			t.Fatal(err)
		}
		pub := k.Public().(*ecdsa.PublicKey)
		if pub.Curve != tc.curve {
			t.Fatalf("%q: created %s, want %s", tc.opt, pub.Curve.Params().Name, tc.curve.Params().Name)
		}
		// Load through a spec without the option: the PEM decides.
		plain, err := keys.Open("file:"+path, "")
		if err != nil {
			t.Fatal(err)
		}
		k2, err := plain.Load()
		if err != nil {
			t.Fatalf("%q: load: %v", tc.opt, err)
		}
		if !pub.Equal(k2.Public()) {
			t.Fatalf("%q: loaded key differs", tc.opt)
		}
		var d []byte
		if tc.hash == crypto.SHA384 {
			s := sha512.Sum384([]byte("x"))
			d = s[:]
		} else {
			s := sha256.Sum256([]byte("x"))
			d = s[:]
		}
		sig, err := k2.Sign(rand.Reader, d, tc.hash)
		if err != nil || !ecdsa.VerifyASN1(pub, d, sig) {
			t.Fatalf("%q: signature does not verify: %v", tc.opt, err)
		}
	}
}

func TestFileCurveOptionRejected(t *testing.T) {
	t.Parallel()
	for _, spec := range []string{"file:/tmp/x,curve=p521", "file:/tmp/x,curve=", "file:,curve=rsa"} {
		if _, err := keys.Open(spec, t.TempDir()); err == nil {
			t.Errorf("%q accepted", spec)
		}
	}
	for name, want := range map[string]string{"": "", "P-256": "", "p256": "", "P-384": ",curve=p384", "p384": ",curve=p384"} {
		got, err := keys.CurveOption(name)
		if err != nil || got != want {
			t.Errorf("CurveOption(%q) = %q, %v; want %q", name, got, err, want)
		}
	}
	if _, err := keys.CurveOption("P-521"); err == nil {
		t.Error("CurveOption(P-521) accepted")
	}
}
