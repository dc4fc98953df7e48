package ca_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"devid/enroll/csr"
	"devid/enroll/station/ca"
	"devid/enroll/station/ca/pgtest"
)

// Child processes: the test binary re-executed with childEnv naming a role.
const childEnv = "DEVID_LEDGER_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
		os.Exit(m.Run())
	case "station":
		os.Exit(stationChild())
	case "kill":
		os.Exit(killChild())
	case "estkill":
		os.Exit(estKillChild())
	default:
		fmt.Fprintf(os.Stderr, "%s=%q: unknown role\n", childEnv, os.Getenv(childEnv))
		os.Exit(2)
	}
}

// newRequest makes a CSR for id with a fresh P-256 key (no testing.T:
// child processes use it too).
func newRequest(id string) (*x509.CertificateRequest, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := csr.Create(k, id)
	if err != nil {
		return nil, err
	}
	return csr.Parse(der)
}

// stationResult is what a station child prints on stdout.
type stationResult struct {
	Serials []string `json:"serials"`
	Won     []string `json:"won"`   // contested device IDs this station got
	Taken   int      `json:"taken"` // contested device IDs refused with ErrIDTaken
}

// stationChild issues $BOARDS certificates for its own devices, then tries
// the $CONTESTED shared device IDs with its own keys.
func stationChild() int {
	name := os.Getenv("STATION")
	l, err := ca.OpenWith(os.Getenv("CA_DIR"), ca.OpenOptions{Station: name, Ledger: os.Getenv("LEDGER")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer l.Close()
	var boards, contested int
	fmt.Sscan(os.Getenv("BOARDS"), &boards)
	fmt.Sscan(os.Getenv("CONTESTED"), &contested)
	var res stationResult
	issue := func(id string) error {
		req, err := newRequest(id)
		if err != nil {
			return err
		}
		chain, err := l.Issue(context.Background(), req)
		if err != nil {
			return err
		}
		res.Serials = append(res.Serials, hex.EncodeToString(chain[0].SerialNumber.Bytes()))
		return nil
	}
	for i := range boards {
		if err := issue(fmt.Sprintf("%s-board-%03d", name, i)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	for i := range contested {
		id := fmt.Sprintf("shared-%02d", i)
		switch err := issue(id); {
		case err == nil:
			res.Won = append(res.Won, id)
		case errors.Is(err, ca.ErrIDTaken):
			res.Taken++
		default:
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return 1
	}
	return 0
}

// killChild issues the CSR in $CSR_FILE and stops between signing and
// finalizing: it writes the signed certificate to $CERT_FILE, says
// "signed" on stdout and waits to be killed.
func killChild() int {
	l, err := ca.OpenWith(os.Getenv("CA_DIR"), ca.OpenOptions{Station: "victim", Ledger: os.Getenv("LEDGER")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	b, err := os.ReadFile(os.Getenv("CSR_FILE"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	req, err := csr.Parse(b)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ca.SetAfterSign(l, func(der []byte) {
		if err := os.WriteFile(os.Getenv("CERT_FILE"), der, 0o600); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("signed")
		select {} // SIGKILL arrives here
	})
	_, err = l.Issue(context.Background(), req)
	fmt.Fprintln(os.Stderr, "not killed:", err)
	return 1
}

// pgCA makes a CA directory whose policy puts the ledger on a fresh
// database of srv, and opens it as station.
func pgCA(t *testing.T, srv *pgtest.Server) (dir, url string, l *ca.Local) {
	t.Helper()
	url = srv.NewDatabase(t)
	dir = filepath.Join(t.TempDir(), "ca")
	if err := ca.Init(dir, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	pol := filepath.Join(dir, ca.PolicyFile)
	b, _ := os.ReadFile(pol)
	if err := os.WriteFile(pol, []byte(strings.Replace(string(b), `ledger = ""`, fmt.Sprintf("ledger = %q", url), 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := ca.Open(dir, "st-1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return dir, url, l
}

// TestPGLedger runs the ledger tests on one server, stopped when all are done.
func TestPGLedger(t *testing.T) {
	srv := pgtest.Start(t)
	t.Run("rules", func(t *testing.T) { t.Parallel(); testPGRules(t, srv) })
	t.Run("constraints", func(t *testing.T) { t.Parallel(); testPGConstraints(t, srv) })
	t.Run("stations", func(t *testing.T) { t.Parallel(); testPGStations(t, srv) })
	t.Run("kill", func(t *testing.T) { t.Parallel(); testPGKill(t, srv) })
	t.Run("revoke-serial", func(t *testing.T) {
		t.Parallel()
		dir, _, l := pgCA(t, srv)
		testRevokeSerial(t, dir, l)
	})
}

// testPGRules: the issuance rules of TestIssueRecordsFirst on PostgreSQL,
// the CRL from the shared ledger, and idempotent migrations.
func testPGRules(t *testing.T, srv *pgtest.Server) {
	dir, url, l := pgCA(t, srv)
	ctx := context.Background()
	req, err := newRequest("dev-1")
	if err != nil {
		t.Fatal(err)
	}
	chain, err := l.Issue(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := l.Issued("dev-1")
	fp, _ := csr.KeyFingerprint(req.PublicKey)
	if err != nil || len(recs) != 1 || recs[0].Serial != hex.EncodeToString(chain[0].SerialNumber.Bytes()) || recs[0].KeySHA256 != fp ||
		recs[0].Status != ca.StatusIssued || recs[0].Station != "st-1" || !recs[0].NotAfter.Equal(chain[0].NotAfter) {
		t.Fatalf("ledger records %+v, %v", recs, err)
	}
	if _, err := l.Issue(ctx, req); err != nil {
		t.Fatalf("same key again: %v", err)
	}
	other, _ := newRequest("dev-1")
	if _, err := l.Issue(ctx, other); !errors.Is(err, ca.ErrIDTaken) {
		t.Fatalf("other key: %v, want ErrIDTaken", err)
	}
	// A second station on the same database sees the first one's rows.
	l2, err := ca.OpenWith(dir, ca.OpenOptions{Station: "st-2", Ledger: url})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if _, err := l2.Issue(ctx, other); !errors.Is(err, ca.ErrIDTaken) {
		t.Fatalf("other key on station 2: %v, want ErrIDTaken", err)
	}
	serials, err := l2.Revoke("dev-1", "rework")
	if err != nil || len(serials) != 2 {
		t.Fatalf("revoke: %v %v", serials, err)
	}
	if _, err := l.Revoke("dev-1", "again"); !errors.Is(err, ca.ErrNotIssued) {
		t.Fatalf("second revoke: %v", err)
	}
	// Station 1 writes the CRL from the shared ledger: station 2's revocations are on it.
	if err := l.WriteCRL(); err != nil {
		t.Fatal(err)
	}
	if got := crlSerials(t, dir, chain[1]); !slices.Equal(got, serials) {
		t.Fatalf("CRL lists %v, want %v", got, serials)
	}
	if _, err := l.Issue(ctx, other); err != nil {
		t.Fatalf("new key after revocation: %v", err)
	}
	if v := pgtest.Query(t, url, `SELECT count(*) FROM schema_migrations`); v[0] != "1" {
		t.Fatalf("schema_migrations rows after two opens: %v", v)
	}
	// A database bound to another CA is refused.
	dir2 := filepath.Join(t.TempDir(), "ca2")
	if err := ca.Init(dir2, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.OpenWith(dir2, ca.OpenOptions{Ledger: url}); err == nil || !strings.Contains(err.Error(), "another issuing CA") {
		t.Fatalf("other CA on the same ledger: %v", err)
	}
	for _, bad := range []string{"postgres://devid:secret@db/ledger", "postgres:///ledger?password=secret", "mysql://db/ledger"} {
		if _, err := ca.OpenWith(dir, ca.OpenOptions{Ledger: bad}); err == nil || strings.Contains(err.Error(), "secret") {
			t.Errorf("ledger %q: %v", bad, err)
		}
	}
	// A database migrated by a newer devid-jig is refused.
	pgtest.Query(t, url, `INSERT INTO schema_migrations (version, name) VALUES (9999, 'future') RETURNING version`)
	if _, err := ca.OpenWith(dir, ca.OpenOptions{Ledger: url}); err == nil || !strings.Contains(err.Error(), "newer than this devid-jig") {
		t.Fatalf("newer schema: %v", err)
	}
	if p, err := l.Pending(); err != nil || len(p) != 0 {
		t.Fatalf("pending %v %v", p, err)
	}
}

// crlSerials reads crl.pem, checks it against issuer and returns its serials, sorted.
func crlSerials(t *testing.T, dir string, issuer *x509.Certificate) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, ca.CRLFile))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	crl, err := x509.ParseRevocationList(blk.Bytes)
	if err != nil || crl.CheckSignatureFrom(issuer) != nil {
		t.Fatalf("CRL: %v", err)
	}
	var out []string
	for _, e := range crl.RevokedCertificateEntries {
		out = append(out, hex.EncodeToString(e.SerialNumber.Bytes()))
	}
	slices.Sort(out)
	return out
}

// testPGConstraints: the rules hold for any writer, not only this code.
func testPGConstraints(t *testing.T, srv *pgtest.Server) {
	_, url, l := pgCA(t, srv)
	req, _ := newRequest("dev-c")
	chain, err := l.Issue(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	serial := hex.EncodeToString(chain[0].SerialNumber.Bytes())
	key := strings.Repeat("ab", 32)
	for _, tc := range []struct{ name, sql, want string }{
		{"second key for a live device", `WITH k AS (UPDATE device_keys SET key_sha256 = '` + key + `' WHERE device_id = 'dev-c')
			SELECT 1`, "foreign key"},
		{"row for an unbound key", `INSERT INTO certificates (serial, device_id, key_sha256, status, reserved_at, not_before, not_after)
			VALUES ('0f', 'dev-c', '` + key + `', 'reserved', now(), now(), now())`, "foreign key"},
		{"duplicate serial", `INSERT INTO certificates (serial, device_id, key_sha256, status, reserved_at, not_before, not_after)
			SELECT serial, device_id, key_sha256, 'reserved', now(), now(), now() FROM certificates WHERE serial = '` + serial + `'`, "certificates_pkey"},
		{"delete", `DELETE FROM certificates WHERE serial = '` + serial + `'`, "never deleted"},
		{"issued without time", `UPDATE certificates SET issued_at = NULL WHERE serial = '` + serial + `'`, "check constraint"},
		{"back to reserved", `UPDATE certificates SET status = 'reserved' WHERE serial = '` + serial + `'`, "cannot go from issued to reserved"},
	} {
		err := execErr(url, tc.sql)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	if _, err := l.Revoke("dev-c", "test"); err != nil {
		t.Fatal(err)
	}
	if err := execErr(url, `UPDATE certificates SET status = 'issued' WHERE serial = '`+serial+`'`); err == nil || !strings.Contains(err.Error(), "cannot go from revoked") {
		t.Errorf("unrevoke: %v", err)
	}
}

func execErr(url, sql string) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	ft := &fatalT{}
	pgtest.Query(ft, url, sql)
	return ft.err
}

// fatalT turns pgtest.Query's Fatal into a panic carrying the message.
type fatalT struct {
	testing.TB
	err error
}

func (f *fatalT) Helper() {}
func (f *fatalT) Fatal(args ...any) {
	f.err = errors.New(fmt.Sprint(args...))
	panic(f.err)
}
func (f *fatalT) Fatalf(format string, args ...any) {
	f.err = fmt.Errorf(format, args...)
	panic(f.err)
}

// testPGStations: 4 station processes × 50 boards on one database, and
// 10 device IDs every station tries with its own key.
func testPGStations(t *testing.T, srv *pgtest.Server) {
	const stations, boards, contested = 4, 50, 10
	dir, url, _ := pgCA(t, srv)
	results := make([]stationResult, stations)
	var wg sync.WaitGroup
	errs := make([]error, stations)
	for i := range stations {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), childEnv+"=station", "CA_DIR="+dir, "LEDGER="+url,
				fmt.Sprintf("STATION=st%d", i), fmt.Sprintf("BOARDS=%d", boards), fmt.Sprintf("CONTESTED=%d", contested))
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				errs[i] = fmt.Errorf("station %d: %v\n%s", i, err, stderr.String())
				return
			}
			errs[i] = json.Unmarshal(out, &results[i])
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	var all, won []string
	taken := 0
	for _, r := range results {
		all = append(all, r.Serials...)
		won = append(won, r.Won...)
		taken += r.Taken
	}
	want := stations*boards + contested
	slices.Sort(won)
	if len(all) != want || len(slices.Compact(slices.Clone(won))) != contested || taken != (stations-1)*contested {
		t.Fatalf("stations returned %d certificates (want %d), won %v, %d refused (want %d)", len(all), want, won, taken, (stations-1)*contested)
	}
	for _, check := range []struct{ what, sql, want string }{
		{"issued rows", `SELECT count(*) FROM certificates WHERE status = 'issued'`, fmt.Sprint(want)},
		{"rows in any other state", `SELECT count(*) FROM certificates WHERE status <> 'issued'`, "0"},
		{"duplicate serials", `SELECT count(*) - count(DISTINCT serial) FROM certificates`, "0"},
		{"duplicate device IDs", `SELECT count(*) - count(DISTINCT device_id) FROM certificates`, "0"},
		{"device IDs with two keys", `SELECT count(*) FROM (SELECT device_id FROM certificates GROUP BY device_id HAVING count(DISTINCT key_sha256) > 1) d`, "0"},
	} {
		if got := pgtest.Query(t, url, check.sql); got[0] != check.want {
			t.Errorf("%s: %s, want %s", check.what, got[0], check.want)
		}
	}
	inDB := pgtest.Query(t, url, `SELECT serial FROM certificates ORDER BY serial`)
	slices.Sort(all)
	if !slices.Equal(all, inDB) {
		t.Fatalf("the serials the stations released differ from the ledger's")
	}
}

// testPGKill: a station killed (SIGKILL) between signing and finalizing
// leaves its reservation; the signed certificate it held has a row.
func testPGKill(t *testing.T, srv *pgtest.Server) {
	dir, url, l := pgCA(t, srv)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := csr.Create(k, "victim-1")
	tmp := t.TempDir()
	csrFile, certFile := filepath.Join(tmp, "csr.der"), filepath.Join(tmp, "cert.der")
	os.WriteFile(csrFile, der, 0o600)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=kill", "CA_DIR="+dir, "LEDGER="+url, "CSR_FILE="+csrFile, "CERT_FILE="+certFile)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if line != "signed\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("kill child: %q %v\n%s", line, err, stderr.String())
	}
	cmd.Process.Kill() // SIGKILL
	cmd.Wait()

	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	leaked, err := x509.ParseCertificate(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := leaked.CheckSignatureFrom(l.Chain()[0]); err != nil {
		t.Fatalf("the certificate the killed station held is not signed by the CA: %v", err)
	}
	serial := hex.EncodeToString(leaked.SerialNumber.Bytes())
	if got := pgtest.Query(t, url, `SELECT status FROM certificates WHERE serial = $1`, serial); len(got) != 1 || got[0] != "reserved" {
		t.Fatalf("row of the killed station's certificate: %v, want reserved", got)
	}
	pend, err := l.Pending()
	if err != nil || len(pend) != 1 || pend[0].Serial != serial || pend[0].Station != "victim" || pend[0].Status != ca.StatusReserved {
		t.Fatalf("pending %+v %v", pend, err)
	}
	// The device's next run with the same key is issued; another key is
	// refused while the reservation stands (it may be a certificate).
	req, _ := csr.Parse(der)
	chain, err := l.Issue(context.Background(), req)
	if err != nil {
		t.Fatalf("rerun after the kill: %v", err)
	}
	other, _ := newRequest("victim-1")
	if _, err := l.Issue(context.Background(), other); !errors.Is(err, ca.ErrIDTaken) || !strings.Contains(err.Error(), serial) {
		t.Fatalf("other key while reserved: %v", err)
	}
	// Revoking the device puts the reserved serial on the CRL too.
	serials, err := l.Revoke("victim-1", "station crashed")
	want := []string{serial, hex.EncodeToString(chain[0].SerialNumber.Bytes())}
	slices.Sort(want)
	if err != nil || !slices.Equal(serials, want) {
		t.Fatalf("revoke: %v %v, want %v", serials, err, want)
	}
	if got := crlSerials(t, dir, l.Chain()[0]); !slices.Equal(got, want) {
		t.Fatalf("CRL %v, want %v", got, want)
	}
}

// TestPGRestart: the database restarts (pg_ctl restart -m fast) while two
// stations issue, once from inside an issuance between signing and
// finalizing. Both pause and resume; nothing is lost or issued twice.
func TestPGRestart(t *testing.T) {
	t.Parallel()
	srv := pgtest.Start(t)
	const stations, boards, restartAt = 2, 30, 10
	dir, url, first := pgCA(t, srv)
	first.Close()
	var done atomic.Int32
	var restartErr error
	var wg sync.WaitGroup
	serials := make([][]string, stations)
	errs := make([]error, stations)
	var locals []*ca.Local
	for s := range stations {
		l, err := ca.OpenWith(dir, ca.OpenOptions{Station: fmt.Sprintf("st%d", s), LedgerRetry: 45 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		locals = append(locals, l)
		ca.SetAfterSign(l, func([]byte) {
			if done.Add(1) == restartAt {
				restartErr = srv.Restart()
			}
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range boards {
				req, err := newRequest(fmt.Sprintf("st%d-board-%02d", s, i))
				if err == nil {
					var chain []*x509.Certificate
					if chain, err = l.Issue(context.Background(), req); err == nil {
						serials[s] = append(serials[s], hex.EncodeToString(chain[0].SerialNumber.Bytes()))
						continue
					}
				}
				errs[s] = fmt.Errorf("station %d board %d: %w", s, i, err)
				return
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(append(errs, restartErr)...); err != nil {
		t.Fatal(err)
	}
	if done.Load() < restartAt {
		t.Fatal("the restart never ran")
	}
	// The other station issues on while the server is down, and pooled
	// connections are cut by the restart: operations paused and retried.
	var retried int64
	for _, l := range locals {
		retried += ca.LedgerRetries(l)
	}
	if retried == 0 {
		t.Fatal("no ledger operation was retried across the restart")
	}
	t.Logf("%d ledger attempts retried across the restart", retried)
	all := slices.Concat(serials...)
	slices.Sort(all)
	if got := pgtest.Query(t, url, `SELECT serial FROM certificates WHERE status = 'issued' ORDER BY serial`); !slices.Equal(got, all) || len(all) != stations*boards {
		t.Fatalf("%d certificates released, ledger has %d issued: not the same", len(all), len(got))
	}
	if got := pgtest.Query(t, url, `SELECT count(*) FROM certificates WHERE status <> 'issued'`); got[0] != "0" {
		t.Fatalf("%s rows not issued after the restart", got[0])
	}
}
