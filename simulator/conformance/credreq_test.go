package conformance

import (
	"crypto/elliptic"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// credReply reads the next answer on $iothub/credentials/res/ and returns
// its status, $rid and body.
func credReply(t testing.TB, c *rawConn) (int, string, []byte) {
	t.Helper()
	for {
		p, err := c.nextPublish()
		if err != nil {
			t.Fatal(err)
		}
		rest, ok := strings.CutPrefix(p.TopicName, "$iothub/credentials/res/")
		if !ok {
			continue
		}
		st, qs, _ := strings.Cut(rest, "/?")
		v, _ := url.ParseQuery(qs)
		n, err := strconv.Atoi(st)
		if err != nil {
			t.Fatalf("credentials reply topic %q: status %q", p.TopicName, st)
		}
		return n, v.Get("$rid"), p.Payload
	}
}

// TestHubCertificateRequestActive: a certificate request stays active
// until it completes; meanwhile another request gets 409 / 409005 naming
// the active $rid and its operationExpires, unless it says replace ("*"
// or that $rid); replacing a $rid that is not active is 412. A device
// that reconnects mid-request still meets its active request
// (docs/simulator.md, certificate renewal).
func TestHubCertificateRequestActive(t *testing.T) {
	t.Parallel()
	tg := startSim(t)
	ca := newTestCA(t, "conformance cert request CA")
	tg.enrollGroup("credreq", ca.PEM, nil)
	d := tg.provision(t, ca, "credreq-1")
	connect := func() *rawConn {
		c := tg.hubDial(t, d)
		c.mustConnect(d.id, d.host+"/"+d.id+"/?api-version="+hubCSRAPI)
		c.mustSubscribe("$iothub/credentials/res/#")
		return c
	}
	request := func(c *rawConn, rid, replace string) (int, map[string]any, []byte) {
		t.Helper()
		req := map[string]string{"id": d.id, "csr": makeCSR(t, d.id, ecKey(t, elliptic.P384()))}
		if replace != "" {
			req["replace"] = replace
		}
		body, _ := json.Marshal(req)
		if _, err := c.publish("$iothub/credentials/POST/issueCertificate/?$rid="+rid, 1, false, body); err != nil {
			t.Fatal(err)
		}
		st, got, b := credReply(t, c)
		if got != rid {
			t.Fatalf("answer on $rid %q, want %q: %d %s", got, rid, st, b)
		}
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		return st, m, b
	}
	hold := func() {
		tg.mustDo(http.MethodPost, "/sim/faults", map[string]any{"scope": "hub", "deviceId": d.id, "ops": []string{"credentials"}, "delayMs": 3600000}, nil)
	}

	c := connect()
	hold()
	st, acc, b := request(c, "req-0001", "")
	if st != 202 || jstr(acc, "operationExpires") == "" {
		t.Fatalf("first request: %d %s; want 202 with operationExpires", st, b)
	}
	st, m, b := request(c, "req-0002", "")
	if st != 409 || jget(m, "errorCode") != float64(409005) || jstr(m, "info", "requestId") != "req-0001" || jstr(m, "info", "operationExpires") != jstr(acc, "operationExpires") {
		t.Errorf("second request while one is active: %d %s; want 409 / 409005 with info.requestId req-0001 and operationExpires %s", st, b, jstr(acc, "operationExpires"))
	}
	if st, m, b := request(c, "req-0003", "other-0009"); st != 412 || jget(m, "errorCode") == nil {
		t.Errorf("replace of a $rid that is not active: %d %s; want 412 with an error body", st, b)
	}

	// A reboot mid-request: the request is still active on the new connection.
	c.close()
	c = connect()
	st, m, b = request(c, "req-0004", "")
	if st != 409 || jstr(m, "info", "requestId") != "req-0001" {
		t.Errorf("request after reconnecting: %d %s; want 409005 naming req-0001", st, b)
	}

	// replace names the active request: it is dropped and this one served.
	tg.mustDo(http.MethodDelete, "/sim/faults", nil, nil)
	if st, _, b := request(c, "req-0005", "req-0001"); st != 202 {
		t.Fatalf("replace req-0001: %d %s; want 202", st, b)
	}
	if st, rid, b := credReply(t, c); st != 200 || rid != "req-0005" {
		t.Fatalf("replacing request's result: %d on %q %s; want 200 on req-0005", st, rid, b)
	}

	// Completed: nothing is active, a new request needs no replace.
	hold()
	if st, _, b := request(c, "req-0006", ""); st != 202 {
		t.Fatalf("request after completion: %d %s; want 202", st, b)
	}
	// replace "*" replaces whatever is active.
	tg.mustDo(http.MethodDelete, "/sim/faults", nil, nil)
	if st, _, b := request(c, "req-0007", "*"); st != 202 {
		t.Fatalf("replace *: %d %s; want 202", st, b)
	}
	if st, rid, b := credReply(t, c); st != 200 || rid != "req-0007" {
		t.Fatalf("replace * result: %d on %q %s; want 200 on req-0007", st, rid, b)
	}
}
