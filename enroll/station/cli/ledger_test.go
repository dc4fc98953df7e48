package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"devid/enroll/csr"
	"devid/enroll/internal/pkitest"
	"devid/enroll/station/ca"
	"devid/enroll/station/ca/pgtest"
)

// TestLedgerFlag: revoke, crl and ledger pending work on the PostgreSQL
// ledger given by --ledger, and refuse a ledger that is not a URL.
func TestLedgerFlag(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	caDir := filepath.Join(t.TempDir(), "ca")
	if err := ca.Init(caDir, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, string, int) {
		var out, errOut bytes.Buffer
		code := Main(context.Background(), Build{}, args, &out, &errOut)
		return out.String(), errOut.String(), code
	}
	l, err := ca.OpenWith(caDir, ca.OpenOptions{Station: "st-a", Ledger: url})
	if err != nil {
		t.Fatal(err)
	}
	der, _ := csr.Create(pkitest.Key(), "board-l1")
	req, _ := csr.Parse(der)
	if _, err := l.Issue(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if out, errOut, code := run("ledger", "pending", "--ca-dir", caDir, "--ledger", url); code != 0 || !strings.Contains(out, "no pending") {
		t.Fatalf("ledger pending: exit %d %q %q", code, out, errOut)
	}
	// The file ledger of the directory knows nothing of board-l1.
	if _, errOut, code := run("revoke", "--ca-dir", caDir, "--device-id", "board-l1"); code != 1 || !strings.Contains(errOut, "no unrevoked") {
		t.Fatalf("revoke on the file ledger: exit %d %q", code, errOut)
	}
	if out, errOut, code := run("revoke", "--ca-dir", caDir, "--device-id", "board-l1", "--ledger", url); code != 0 || !strings.Contains(out, "revoked board-l1") {
		t.Fatalf("revoke --ledger: exit %d %q %q", code, out, errOut)
	}
	if _, errOut, code := run("crl", "--ca-dir", caDir, "--ledger", "mysql://x"); code != 1 || !strings.Contains(errOut, "postgres://") {
		t.Fatalf("crl --ledger mysql: exit %d %q", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(caDir, ca.CRLFile)); err != nil {
		t.Fatal(err)
	}
}
