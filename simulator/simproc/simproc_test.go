package simproc

import (
	"context"
	"strings"
	"testing"
	"time"
)

// The tests use /bin/sh as a stand-in child: the real devid-sim is started
// through this package by simtest, which every simulator test exercises.

func TestStartParsesReadyLine(t *testing.T) {
	p, err := Start(context.Background(), "/bin/sh", []string{"-c",
		`echo starting; echo '{"id_scope":"0ne0000SIM1","dps":{"host":"localhost","addr":"127.0.0.1:1"},"hubs":[{"name":"h","host":"h.example","addr":"127.0.0.1:2"}]}'; exec sleep 60`},
		Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	if p.Ready.IDScope != "0ne0000SIM1" || p.Ready.DPS.Addr != "127.0.0.1:1" || len(p.Ready.Hubs) != 1 || p.Ready.Hubs[0].Host != "h.example" {
		t.Fatalf("ready = %+v", p.Ready)
	}
	p.Stop()
	select {
	case <-p.Done():
	default:
		t.Fatal("Stop returned before the process was reaped")
	}
	p.Stop() // idempotent
}

func TestStartExitBeforeReady(t *testing.T) {
	if _, err := Start(context.Background(), "/bin/sh", []string{"-c", "echo not json; exit 3"}, Options{}); err == nil || !strings.Contains(err.Error(), "before its ready line") {
		t.Fatalf("err = %v", err)
	}
}

func TestStartBadReadyLine(t *testing.T) {
	if _, err := Start(context.Background(), "/bin/sh", []string{"-c", "echo '{broken'; exec sleep 60"}, Options{}); err == nil || !strings.Contains(err.Error(), "ready line") {
		t.Fatalf("err = %v", err)
	}
}

func TestStartContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Start(ctx, "/bin/sh", []string{"-c", "exec sleep 60"}, Options{Timeout: time.Minute}); err != context.Canceled {
		t.Fatalf("err = %v", err)
	}
}
