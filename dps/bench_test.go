package dps

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"devid/hal/hosttest"
	"devid/simulator/simtest"
)

// Work per benchmark op, so `make bench` (-benchtime 1x) still measures
// something meaningful.
const (
	telemetryPerOp = 200
	registerPerOp  = 3
)

// BenchmarkTelemetryQoS1 measures QoS 1 telemetry (each message waits
// for its PUBACK) to the simulated hub over loopback TLS, with the given
// in-flight window (that many senders at once). One op = 200 messages.
func BenchmarkTelemetryQoS1(b *testing.B) {
	r := newRig(b)
	for _, window := range []int{1, 32} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) {
			res, cred := r.register(b, fmt.Sprintf("bench-tel-%d", window))
			h, err := ConnectHub(context.Background(), r.hubConfig(res, cred))
			if err != nil {
				b.Fatal(err)
			}
			defer h.Close()
			sendTelemetryBench(b, h, window)
		})
	}
}

// sendTelemetryBench sends b.N * telemetryPerOp QoS 1 messages through h
// from window goroutines at once, and reports the rate.
func sendTelemetryBench(b *testing.B, h *Hub, window int) {
	msg := &Message{Payload: []byte(`{"temperature":21.5,"humidity":40,"seq":123456}`), ContentType: "application/json", ContentEncoding: "utf-8",
		Properties: map[string]string{"kind": "bench"}}
	total := b.N * telemetryPerOp
	next := make(chan struct{}, total)
	for i := 0; i < total; i++ {
		next <- struct{}{}
	}
	close(next)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < window; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				if err := h.SendTelemetry(context.Background(), msg); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(total)/time.Since(start).Seconds(), "msgs/s")
}

var goRegisterMs float64 // devid's mean, for the Node SDK ratio

// BenchmarkRegister measures the time to "assigned" with retry-after=0
// (connect, subscribe, register, poll) and the round trips it takes,
// for devid and then for the official Azure IoT Node.js SDK against the
// same simulator. One op = 3 registrations of fresh devices.
func BenchmarkRegister(b *testing.B) {
	r := newRig(b, simtest.WithArgs("--retry-after", "0", "--assigning-polls", "0"))
	seq := 0
	b.Run("devid", func(b *testing.B) {
		// One untimed registration first, as on the Node side.
		b.StopTimer()
		seq++
		if _, err := Register(context.Background(), r.config(r.ca.credential(b, fmt.Sprintf("bench-reg-%d", seq)), nil)); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		var trips int
		var total time.Duration
		n := b.N * registerPerOp
		for i := 0; i < n; i++ {
			b.StopTimer()
			seq++
			cred := r.ca.credential(b, fmt.Sprintf("bench-reg-%d", seq))
			cfg := r.config(cred, nil)
			cfg.MinPollInterval = -1 // measure our round trips, not the polite floor
			b.StartTimer()
			t0 := time.Now()
			res, err := Register(context.Background(), cfg)
			total += time.Since(t0)
			if err != nil {
				b.Fatal(err)
			}
			trips += res.RoundTrips
		}
		goRegisterMs = float64(total.Microseconds()) / 1000 / float64(n)
		b.ReportMetric(float64(trips)/float64(n), "roundtrips/assigned")
		b.ReportMetric(goRegisterMs, "ms/assigned")
	})
	b.Run("node-sdk", func(b *testing.B) {
		modules, _ := filepath.Abs("../simulator/conformance/node/node_modules")
		hosttest.LookPath(b, hosttest.Node, "node")
		if _, err := os.Stat(filepath.Join(modules, "azure-iot-provisioning-device")); err != nil {
			hosttest.Unavailable(b, hosttest.Node, "official Azure IoT Node SDK not installed in simulator/conformance/node (scripts/deps.sh installs it): %v", err)
		}
		dir := b.TempDir()
		type dev struct {
			RegID    string `json:"regId"`
			CertFile string `json:"certFile"`
			KeyFile  string `json:"keyFile"`
		}
		var devs []dev
		want := b.N * registerPerOp
		for i := 0; i < want+1; i++ { // +1: an untimed warm-up registration
			seq++
			id := fmt.Sprintf("bench-node-%d", seq)
			cred := r.ca.credential(b, id)
			d := dev{RegID: id, CertFile: filepath.Join(dir, id+".pem"), KeyFile: filepath.Join(dir, id+".key")}
			certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cred.Leaf.Raw})
			keyDER, err := x509.MarshalPKCS8PrivateKey(cred.PrivateKey.(slowSigner).k)
			if err != nil {
				b.Fatal(err)
			}
			os.WriteFile(d.CertFile, certPEM, 0o600)
			os.WriteFile(d.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
			devs = append(devs, d)
		}
		cfgFile := filepath.Join(dir, "bench.json")
		cfgJSON, _ := json.Marshal(map[string]any{"ready": r.sim.Ready, "devices": devs})
		os.WriteFile(cfgFile, cfgJSON, 0o600)
		cmd := exec.Command("node", "testdata/node_register_bench.js", cfgFile)
		cmd.Env = append(os.Environ(), "NODE_PATH="+modules, "NODE_EXTRA_CA_CERTS="+r.sim.Ready.ServerCA)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		b.ResetTimer()
		out, err := cmd.Output()
		b.StopTimer()
		var sum float64
		n := 0
		warm := false
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			var ev struct {
				Event   string  `json:"event"`
				MS      float64 `json:"ms"`
				Message string  `json:"message"`
			}
			if json.Unmarshal(sc.Bytes(), &ev) != nil {
				continue
			}
			switch ev.Event {
			case "registered":
				if warm {
					sum += ev.MS
					n++
				}
				warm = true
			case "error":
				b.Fatalf("node sdk: %s", ev.Message)
			}
		}
		if err != nil || n != want {
			b.Fatalf("node: %v (%d of %d registered): %s", err, n, want, stderr.String())
		}
		nodeMs := sum / float64(n)
		b.ReportMetric(nodeMs, "ms/assigned")
		if goRegisterMs > 0 {
			b.ReportMetric(nodeMs/goRegisterMs, "node/devid")
		}
	})
}
