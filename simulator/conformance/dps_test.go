package conformance

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

const (
	dpsAPI = "2019-03-31"
	hubAPI = "2021-04-12"
)

func dpsUser(scope, regID string) string {
	return scope + "/registrations/" + regID + "/api-version=" + dpsAPI
}

func hubUser(host, deviceID string) string {
	return host + "/" + deviceID + "/?api-version=" + hubAPI
}

// dpsReply is one message on $dps/registrations/res/...
type dpsReply struct {
	topic      string
	status     int
	rid        string
	retryAfter string
	body       map[string]any
	raw        []byte
}

func parseDPSReply(p []byte, topic string) (dpsReply, error) {
	r := dpsReply{topic: topic, raw: p}
	rest, ok := strings.CutPrefix(topic, "$dps/registrations/res/")
	if !ok {
		return r, fmt.Errorf("reply on unexpected topic %q", topic)
	}
	st, qs, ok := strings.Cut(rest, "/?")
	if !ok {
		return r, fmt.Errorf("reply topic %q lacks /?", topic)
	}
	var err error
	if r.status, err = strconv.Atoi(st); err != nil {
		return r, fmt.Errorf("reply topic %q: status %q", topic, st)
	}
	v, err := url.ParseQuery(qs)
	if err != nil {
		return r, fmt.Errorf("reply topic %q: %v", topic, err)
	}
	r.rid = v.Get("$rid")
	r.retryAfter = v.Get("retry-after")
	if len(strings.TrimSpace(string(p))) > 0 {
		if err := json.Unmarshal(p, &r.body); err != nil {
			return r, fmt.Errorf("reply %s: body %q is not JSON: %v", topic, trunc(string(p), 200), err)
		}
	}
	return r, nil
}

// dpsRequest publishes one request and returns the next reply.
func (c *rawConn) dpsRequest(topic string, qos byte, payload []byte) (dpsReply, error) {
	if _, err := c.publish(topic, qos, false, payload); err != nil {
		return dpsReply{}, err
	}
	p, err := c.nextPublish()
	if err != nil {
		return dpsReply{}, err
	}
	return parseDPSReply(p.Payload, p.TopicName)
}

// dpsConnect opens an MQTT session to DPS as dev (ClientId and username
// from dev's CN) and subscribes to the response topic.
func (tg *target) dpsConnect(t testing.TB, cert *tls.Certificate, cn string) *rawConn {
	t.Helper()
	c, err := dialTLS(t, tg.dps(), tg.roots, cert)
	if err != nil {
		t.Fatalf("TLS to DPS: %v", err)
	}
	c.mustConnect(cn, dpsUser(tg.ready.IDScope, cn))
	c.mustSubscribe("$dps/registrations/res/#")
	return c
}

// register runs the documented register/poll exchange to its end and
// returns every reply in order. It polls at once after a 202 instead of
// waiting retry-after; the simulator allows 5 polls per 10 s.
func (c *rawConn) register(regID string) ([]dpsReply, error) {
	body, _ := json.Marshal(map[string]string{"registrationId": regID})
	r, err := c.dpsRequest("$dps/registrations/PUT/iotdps-register/?$rid=reg-1", 1, body)
	replies := []dpsReply{r}
	for i := 0; err == nil && i < 5; i++ {
		if r.status != 202 {
			return replies, nil
		}
		op := jstr(r.body, "operationId")
		r, err = c.dpsRequest("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=poll-"+strconv.Itoa(i)+"&operationId="+url.QueryEscape(op), 1, nil)
		replies = append(replies, r)
	}
	if err != nil {
		return replies, err
	}
	return replies, fmt.Errorf("still 202 after 5 polls: %s", r.raw)
}

// mustRegister registers dev through DPS and returns the final result body.
func (tg *target) mustRegister(t testing.TB, dev *deviceCert) map[string]any {
	t.Helper()
	c := tg.dpsConnect(t, &dev.TLS, dev.CN)
	defer c.close()
	rs, err := c.register(dev.CN)
	if err != nil {
		t.Fatalf("register %s: %v", dev.CN, err)
	}
	last := rs[len(rs)-1]
	if last.status != 200 || jstr(last.body, "status") != "assigned" {
		t.Fatalf("register %s: final reply %s %s", dev.CN, last.topic, last.raw)
	}
	return last.body
}
