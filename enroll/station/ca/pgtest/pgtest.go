// Package pgtest starts a throw-away PostgreSQL server for tests: initdb
// in a temporary directory, postgres listening only on a unix socket in
// that directory, stopped (and the directory removed) at the end.
//
// It uses Debian's server programs (/usr/lib/postgresql/*/bin, package
// postgresql; scripts/deps.sh installs it). When they are missing the test
// is skipped, or fails when DEVID_REQUIRE names "postgresql"
// (hal/hosttest). initdb refuses to run as root, so under root the server
// runs as uid/gid 65534 (nobody) through setpriv(1).
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"devid/hal/hosttest"
)

// User is the server's superuser (trust authentication on the socket).
const User = "devid"

// nobody is the uid and gid the server runs as when the test runs as root.
const nobody = 65534

// Server is a running test server.
type Server struct {
	// Dir holds the data directory (Dir/data), the socket and the log.
	Dir string
	bin string
	dbs atomic.Int64
}

// BinDir returns the directory of the newest installed server version.
func BinDir() (string, error) {
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(m) == 0 {
		if p, err := exec.LookPath("initdb"); err == nil {
			return filepath.Dir(p), nil
		}
		return "", errors.New("PostgreSQL server programs (initdb, pg_ctl) are not installed: no /usr/lib/postgresql/*/bin/initdb")
	}
	sort.Slice(m, func(i, j int) bool { return versionOf(m[i]) < versionOf(m[j]) })
	return filepath.Dir(m[len(m)-1]), nil
}

func versionOf(p string) int {
	var v int
	fmt.Sscanf(filepath.Base(filepath.Dir(filepath.Dir(p))), "%d", &v)
	return v
}

// Start starts a server for t and stops it when t ends. A missing server
// is a skip or a failure as hal/hosttest decides.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := BinDir()
	if err != nil {
		hosttest.Unavailable(t, hosttest.PostgreSQL, "%v", err)
	}
	if os.Geteuid() == 0 {
		if _, err := exec.LookPath("setpriv"); err != nil {
			hosttest.Unavailable(t, hosttest.PostgreSQL, "running as root, the server needs setpriv (util-linux) to run as nobody: %v", err)
		}
	}
	s, err := StartIn(bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop PostgreSQL: %v", err)
		}
	})
	return s
}

// StartIn starts a server with the programs in bin (BinDir); the caller
// must Stop it.
func StartIn(bin string) (*Server, error) {
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, bin: bin}
	if os.Geteuid() == 0 {
		if err := os.Chown(dir, nobody, nobody); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	if out, err := s.run("initdb", "-D", s.data(), "-U", User, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	if err := s.ctl("start"); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

func (s *Server) data() string { return filepath.Join(s.Dir, "data") }

// run runs a server program, as nobody under root.
func (s *Server) run(prog string, args ...string) ([]byte, error) {
	name := filepath.Join(s.bin, prog)
	if os.Geteuid() == 0 {
		args = append([]string{"--reuid", fmt.Sprint(nobody), "--regid", fmt.Sprint(nobody), "--clear-groups", name}, args...)
		name = "setpriv"
	}
	cmd := exec.Command(name, args...)
	cmd.Dir = s.Dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "HOME="+s.Dir)
	return cmd.CombinedOutput()
}

// ctl runs pg_ctl start, stop or restart and waits for it to finish.
func (s *Server) ctl(action string, extra ...string) error {
	args := []string{action, "-D", s.data(), "-w", "-t", "60", "-l", filepath.Join(s.Dir, "log")}
	if action != "stop" {
		args = append(args, "-o", "-k "+s.Dir+" -c listen_addresses= -p 5432")
	}
	out, err := s.run("pg_ctl", append(args, extra...)...)
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(s.Dir, "log"))
		return fmt.Errorf("pg_ctl %s: %v\n%s\nserver log:\n%s", action, err, out, log)
	}
	return nil
}

// Restart stops the server (fast: connections are cut) and starts it.
func (s *Server) Restart() error { return s.ctl("restart", "-m", "fast") }

// Stop stops the server at once and removes its directory.
func (s *Server) Stop() error {
	err := s.ctl("stop", "-m", "immediate")
	if rerr := os.RemoveAll(s.Dir); err == nil {
		err = rerr
	}
	return err
}

// URL is the connection URL of database db.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://%s@/%s?host=%s&port=5432&sslmode=disable", User, db, s.Dir)
}

// NewDatabase creates an empty database and returns its URL.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d", s.dbs.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	return s.URL(name)
}

// Query runs one query on the database at url and returns the first
// column of every row as text (tests' checks).
func Query(t testing.TB, url, sql string, args ...any) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	rows, err := c.Query(ctx, sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", strings.TrimSpace(sql), err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		v, err := r.Values()
		if err != nil || len(v) == 0 {
			return "", err
		}
		return fmt.Sprint(v[0]), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
