package line_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"devid/enroll/csr"
	"devid/enroll/station/ca"
	"devid/enroll/station/line"
)

// searchLedger asks the page's ledger search for q.
func searchLedger(t *testing.T, h http.Handler, q string) line.LedgerResult {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/api/ledger?q=" + q)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var res line.LedgerResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		t.Fatal(err)
	}
	return res
}

// checkSerialSearch: the page finds the device of a serial that another
// station (or program run) issued into the same ledger, through the
// ledger's serial lookup (ca.Local.IssuedSerial), in either case.
func checkSerialSearch(t *testing.T, st *line.Station, other *ca.Local) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := csr.Create(k, "issued-elsewhere-1")
	req, _ := csr.Parse(der)
	chain, err := other.Issue(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	// Text(16) drops a leading zero the ledger keeps: the search takes
	// either form.
	sn := hex.EncodeToString(chain[0].SerialNumber.Bytes())
	res := searchLedger(t, st.Handler(), strings.ToUpper(chain[0].SerialNumber.Text(16)))
	if res.DeviceID != "issued-elsewhere-1" || len(res.Issued) != 1 || res.Issued[0].Serial != sn || res.Error != "" {
		t.Fatalf("search for serial %s: %+v", sn, res)
	}
	// An unknown serial is searched as a device ID: nothing found.
	if res := searchLedger(t, st.Handler(), "0123456789abcdef01"); len(res.Issued) != 0 || res.DeviceID != "0123456789abcdef01" {
		t.Fatalf("search for an unknown serial: %+v", res)
	}
}

// caDirOf is the directory of a local CA.
func caDirOf(t *testing.T, l *ca.Local) string { t.Helper(); return filepath.Dir(l.CRLPath()) }

// TestParseConfigESTAndAttestation: the keys of an EST signer and of
// attestation, and the errors that name what is wrong.
func TestParseConfigESTAndAttestation(t *testing.T) {
	const slot = "\n[[slot]]\nport = \"/dev/ttyUSB0\"\n"
	c, err := line.ParseConfig([]byte(`est_url = "https://est:8443"
est_cert = "c.pem"
est_key = "k.pem"
est_ca = "r.pem"
ledger = "postgres://db/l"
tpm_roots = "t.pem"
require_attestation = true` + slot))
	if err != nil || c.ESTURL != "https://est:8443" || c.ESTKey != "k.pem" || c.TPMRoots != "t.pem" || !c.RequireAttestation {
		t.Fatalf("%+v, %v", c, err)
	}
	for conf, want := range map[string]string{
		`ca_dir = "ca"` + "\n" + `est_url = "https://x"`:  "both set",
		`est_url = "https://x"` + "\n" + `est_cert = "c"`: "needs est_cert, est_key and est_ca",
		`require_attestation = true`:                      "needs tpm_roots",
	} {
		if _, err := line.ParseConfig([]byte(conf + slot)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", conf, err, want)
		}
	}
}
