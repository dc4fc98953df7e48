package dps

import (
	"strings"
	"testing"
)

// The reply parsers take bytes from the network. They must never panic,
// and what they accept must be self-consistent.

func FuzzParseResponseTopic(f *testing.F) {
	for _, s := range []string{
		"$dps/registrations/res/202/?$rid=1&retry-after=3",
		"$dps/registrations/res/200/?$rid=abc",
		"$dps/registrations/res/429/?%24rid=9&Retry-After=99999999999999999999",
		"$dps/registrations/res/500",
		"$iothub/twin/res/204/?$rid=1&$version=6",
		"$iothub/twin/res/200/?$rid=%zz",
		"$dps/registrations/res//?",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		for _, parse := range []func(string) (Response, error){ParseDPSResponseTopic, ParseTwinResponseTopic} {
			r, err := parse(topic)
			if err != nil {
				continue
			}
			if r.Status < 100 || r.Status > 999 {
				t.Fatalf("accepted status %d from %q", r.Status, topic)
			}
			if r.RetryAfter < 0 {
				t.Fatalf("negative retry-after from %q", topic)
			}
		}
	})
}

func FuzzPropertyBag(f *testing.F) {
	for _, s := range []string{
		"%24.mid=1&%24.to=%2Fdevices%2Fd&iothub-ack=full",
		"a=b&c&d=&=e&&",
		"%zz=%4&%%%",
		"%C3%BC=%C3%9F&plus=1+1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		bag := ParsePropertyBag(s)
		// Encoding what we decoded and decoding again is stable.
		again := ParsePropertyBag(EncodePropertyBag(bag))
		if len(again) != len(bag) {
			t.Fatalf("round trip of %q changed length: %v -> %v", s, bag, again)
		}
		for i := range bag {
			if bag[i] != again[i] {
				t.Fatalf("round trip of %q: %+v -> %+v", s, bag[i], again[i])
			}
		}
	})
}

func FuzzTelemetryTopic(f *testing.F) {
	f.Add("k", "v", "application/json", "m1")
	f.Add("a&b=c", "%24x y+z", "", "")
	f.Fuzz(func(t *testing.T, k, v, ct, mid string) {
		m := &Message{ContentType: ct, MessageID: mid, Properties: map[string]string{k: v}}
		topic := TelemetryTopic("dev", m)
		rest, ok := strings.CutPrefix(topic, "devices/dev/messages/events/")
		if !ok || strings.ContainsAny(rest, "/#+ ") {
			t.Fatalf("bad topic %q", topic)
		}
		bag := ParsePropertyBag(rest)
		if strings.HasPrefix(k, "$.") {
			return // collides with a system property name
		}
		if got, ok := bag.Get(k); !ok || got != v {
			t.Fatalf("property %q=%q came back as %q (%v) from %q", k, v, got, ok, topic)
		}
		if got, _ := bag.Get("$.ct"); got != ct {
			t.Fatalf("$.ct %q came back as %q", ct, got)
		}
	})
}

func FuzzParseOperationStatus(f *testing.F) {
	for _, s := range []string{
		`{"operationId":"4.d0a6","status":"assigning"}`,
		`{"operationId":"4.d0a6","status":"assigned","registrationState":{"assignedHub":"h","deviceId":"d","x509":{"enrollmentGroupId":"g"},"issuedCertificateChain":["MIIB"]}}`,
		`{"operationId":"x","status":"failed","registrationState":{"errorCode":"400209","errorMessage":"m"}}`,
		`{"errorCode":401002,"trackingId":"t","message":"Invalid certificate.","info":{"a":1}}`,
		`[]`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		op, err := ParseOperationStatus(body)
		if err == nil {
			if op.Status == StatusAssigned && (op.RegistrationState == nil || op.RegistrationState.AssignedHub == "") {
				t.Fatalf("assigned without hub accepted: %s", body)
			}
			if op.RegistrationState != nil {
				_, _ = ParseIssuedChain(op.RegistrationState.IssuedCertificateChain)
			}
		}
		for _, st := range []int{401, 429, 503} {
			e := parseStatusError("fuzz", Response{Status: st}, body)
			if e.Status != st || e.Error() == "" {
				t.Fatalf("status error %+v", e)
			}
		}
	})
}

func FuzzHubTopics(f *testing.F) {
	for _, s := range []string{
		"$iothub/methods/POST/reboot/?$rid=42",
		"$iothub/methods/POST/a%2Fb/?$rid=1&x",
		"$iothub/twin/PATCH/properties/desired/?$version=12",
		"$iothub/twin/PATCH/properties/desired/?$version=x",
		"devices/d/messages/devicebound/%24.mid=1&iothub-ack=full&p",
		"devices/other/messages/devicebound/",
		"devices/d/messages/devicebound",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		if m, err := parseMethodTopic(topic); err == nil && (m.Name == "" || m.RID == "") {
			t.Fatalf("method topic %q accepted with empty parts", topic)
		}
		_, _, _ = parseDesiredTopic(topic)
		if m, err := ParseC2DTopic("d", topic); err == nil && m.Topic != topic {
			t.Fatalf("c2d topic not kept")
		}
	})
}

func FuzzParseTwin(f *testing.F) {
	f.Add([]byte(`{"desired":{"a":1,"$version":12},"reported":{"$version":123}}`))
	f.Add([]byte(`{"desired":null}`))
	f.Add([]byte(`{"desired":[1]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		_, _ = ParseTwin(body)
	})
}

func FuzzCredentialBody(f *testing.F) {
	f.Add([]byte(`["MIIB","MIIC"]`))
	f.Add([]byte(`{"certificates":["-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"]}`))
	f.Add([]byte(`{"certificates":[]}`))
	f.Add([]byte(`[1,2]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		if chain, err := parseIssuedCredential(body, nil); err == nil && len(chain) == 0 {
			t.Fatalf("empty chain accepted from %q", body)
		}
	})
}
