package line_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"devid/enroll/station/ca"
	"devid/enroll/station/ca/pgtest"
	"devid/enroll/station/jig"
	"devid/enroll/station/line"
	"devid/hal/serial/serialtest"
)

// TestTwoStationsOnePostgresLedger: two stations (each its own CA handle
// on one CA directory) program 4 boards each at the same time into one
// PostgreSQL ledger started by the test; every board gets its own serial
// and the ledger names the station that programmed it.
func TestTwoStationsOnePostgresLedger(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	dir := filepath.Join(t.TempDir(), "ca")
	if err := ca.Init(dir, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	const stations, boards = 2, 4
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	cas := make([]*ca.Local, stations)
	sts := make([]*line.Station, stations)
	for s := range stations {
		l, err := ca.OpenWith(dir, ca.OpenOptions{Station: fmt.Sprintf("st%d", s+1), Ledger: url})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		cas[s] = l
		roots := rootPool(l)
		serialDir := t.TempDir()
		var ports []string
		for b := range boards {
			pair := serialtest.Pty(t)
			serveDevice(t, pair.Master, fmt.Sprintf("pg-%d-%d", s+1, b+1), roots, 0)
			name := fmt.Sprintf("slot%d", b+1)
			plug(t, filepath.Join(serialDir, "by-id"), name, pair.TTY)
			ports = append(ports, "by-id/"+name)
		}
		cfg := slotsConfig(serialDir, ports...)
		cfg.Station = fmt.Sprintf("st%d", s+1)
		st, err := line.New(cfg, line.Options{CA: l, Ledger: l, Jig: jig.Options{Roots: roots}, Boards: boards})
		if err != nil {
			t.Fatal(err)
		}
		sts[s] = st
		wg.Add(1)
		go func() {
			defer wg.Done()
			y, err := st.Run(ctx)
			if err != nil || y.Programmed != boards {
				t.Errorf("station %d: yield %+v, %v", s+1, y, err)
			}
		}()
	}
	wg.Wait()
	serials := map[string]bool{}
	for s := range stations {
		for b := range boards {
			id := fmt.Sprintf("pg-%d-%d", s+1, b+1)
			// Read through the other station's handle: one shared ledger.
			recs, err := cas[(s+1)%stations].Issued(id)
			if err != nil || len(recs) != 1 || recs[0].Station != fmt.Sprintf("st%d", s+1) {
				t.Fatalf("ledger for %s: %+v, %v", id, recs, err)
			}
			serials[recs[0].Serial] = true
		}
	}
	if len(serials) != stations*boards {
		t.Fatalf("%d distinct serials, want %d", len(serials), stations*boards)
	}
	// Station 1's page finds serials station 2 issued: the search goes
	// to the shared ledger.
	checkSerialSearch(t, sts[0], cas[1])
}
