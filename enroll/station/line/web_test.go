package line_test

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"devid/enroll/station/jig"
	"devid/enroll/station/line"
	"devid/hal/hosttest"
	"devid/hal/serial"
	"devid/hal/serial/serialtest"
)

// TestWebPageInChromium drives the station's page in a real headless
// Chromium: a board is plugged (the page shows it plugged while the
// device's replies are held back), then programmed (the page shows its
// device ID and serial), and the ledger search finds its serial. The test
// keeps a screenshot in its temp dir, and in $DEVID_SCREENSHOT_DIR when set.
func TestWebPageInChromium(t *testing.T) {
	chromium := hosttest.LookPath(t, hosttest.Chromium, "chromium")
	l := newCA(t)
	roots := rootPool(l)
	serialDir := t.TempDir()

	// The device's replies wait at a gate, so "plugged" stays on the page
	// until the test has seen it.
	link := serialtest.NewLink(t)
	gate := make(chan struct{})
	var openGate sync.Once
	release := func() { openGate.Do(func() { close(gate) }) }
	t.Cleanup(release) // before the link's cleanup, which waits for its pumps
	link.SetTamper(func(dir serialtest.Direction, _ int, b []byte) []byte {
		if dir == serialtest.ToJig {
			<-gate
		}
		return b
	})
	p, err := serial.Open(link.DeviceTTY, 115200)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	serveDevice(t, p, "board-web-0001", roots, 0)

	cfg := slotsConfig(serialDir, "by-id/usb-FTDI_*-if00-port0")
	cfg.Slots[0].Name = "A"
	cfg.Station = "web-test"
	cfg.ReplyTimeout = 30 * time.Second // the gate holds the HELLO reply
	st, err := line.New(cfg, line.Options{CA: l, Ledger: l, Jig: jig.Options{Roots: roots}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	runDone := make(chan struct{})
	go func() { defer close(runDone); st.Run(ctx) }()
	defer func() { cancel(); release(); <-runDone }()
	srv := httptest.NewServer(st.Handler())
	defer srv.Close()

	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chromium),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(filepath.Join(t.TempDir(), "chromium-profile")),
		chromedp.WindowSize(1280, 800),
	)
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(alloc)
	defer cancelBrowser()

	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }
	if err := chromedp.Do(browser,
		chromedp.Navigate(srv.URL+"/"),
		chromedp.WaitVisible(css(`#slot-A[data-state="empty"]`)),
		chromedp.WaitVisible(chromedp.Search(`//span[@id="conn" and text()="live"]`)),
	); err != nil {
		t.Fatalf("page with the empty slot: %v", err)
	}
	plug(t, filepath.Join(serialDir, "by-id"), "usb-FTDI_FT232R_A1B2C3-if00-port0", link.JigTTY)
	if err := chromedp.Do(browser, chromedp.WaitVisible(css(`#slot-A[data-state="plugged"]`))); err != nil {
		t.Fatalf("page never showed the board plugged: %v", err)
	}
	release()
	if err := chromedp.Do(browser, chromedp.WaitVisible(css(`#slot-A[data-state="programmed"]`))); err != nil {
		t.Fatalf("page never showed the board programmed: %v", err)
	}
	text := func(sel string) string {
		t.Helper()
		v, err := chromedp.Run(browser, chromedp.Text(css(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return strings.TrimSpace(v)
	}
	device, serialText, yield := text(`#slot-A .device`), text(`#slot-A .serial`), text(`#yield-pct`)
	recs, err := l.Issued("board-web-0001")
	if err != nil || len(recs) != 1 {
		t.Fatalf("ledger: %+v, %v", recs, err)
	}
	if device != "board-web-0001" || serialText != recs[0].Serial || yield != "100.0 %" {
		t.Fatalf("page shows device %q serial %q yield %q; ledger serial %s", device, serialText, yield, recs[0].Serial)
	}

	// The ledger search, by serial.
	if err := chromedp.Do(browser,
		chromedp.SendKeys(css(`#q`), recs[0].Serial),
		chromedp.Click(css(`#search`)),
		chromedp.WaitVisible(css(`#ledger tr.rec`)),
	); err != nil {
		t.Fatalf("ledger search: %v", err)
	}
	if found := text(`#ledger tr.rec`); !strings.Contains(found, recs[0].Serial) || !strings.Contains(found, "board-web-0001") || !strings.Contains(found, "issue") {
		t.Fatalf("ledger search shows %q", found)
	}

	png, err := chromedp.Run(browser, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(t.TempDir(), "station-page.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	if dir := os.Getenv("DEVID_SCREENSHOT_DIR"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "station-page.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("screenshot: %s (%d bytes)", shot, len(png))
}
