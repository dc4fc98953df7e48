package dps

import (
	"strings"
	"testing"
	"time"
)

func TestUsernames(t *testing.T) {
	t.Parallel()
	cases := []struct{ got, want string }{
		{DPSUsername("0ne00000001", "dev-001", dpsAPIVersion, ""), "0ne00000001/registrations/dev-001/api-version=2019-03-31"},
		{DPSUsername("0ne00000001", "dev-001", dpsCSRAPIVersion, "devid/1.0 (linux)"),
			"0ne00000001/registrations/dev-001/api-version=2025-07-01-preview&ClientVersion=devid%2F1.0%20%28linux%29"},
		{HubUsername("contoso.azure-devices.net", "dev-001", hubAPIVersion, ""), "contoso.azure-devices.net/dev-001/?api-version=2021-04-12"},
		{HubUsername("contoso.azure-devices.net", "d1", hubAPIVersion, "dtmi:com:example;1"),
			"contoso.azure-devices.net/d1/?api-version=2021-04-12&model-id=dtmi%3Acom%3Aexample%3B1"},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("got %q\nwant %q", c.got, c.want)
		}
	}
}

func TestDPSTopics(t *testing.T) {
	t.Parallel()
	if got, want := dpsRegisterTopic("7"), "$dps/registrations/PUT/iotdps-register/?$rid=7"; got != want {
		t.Errorf("register topic %q, want %q", got, want)
	}
	op := "4.d0a671905ea5b2c8.e7173b7b-0e54-4aa0-9d20-aeb1b89e6c7d"
	if got, want := dpsPollTopic("8", op), "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=8&operationId="+op; got != want {
		t.Errorf("poll topic %q, want %q", got, want)
	}
	if ridOf(dpsPollTopic("8", op)) != "8" || ridOf(dpsRegisterTopic("x1")) != "x1" {
		t.Error("ridOf")
	}
}

func TestTelemetryTopic(t *testing.T) {
	t.Parallel()
	m := &Message{
		MessageID:       "m 1",
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		Properties:      map[string]string{"alarm": "true", "a/b": "x&y=z", "plus": "1+1", "ü": "ß", "empty": ""},
	}
	got := TelemetryTopic("dev1", m)
	want := "devices/dev1/messages/events/%24.mid=m%201&%24.ct=application%2Fjson&%24.ce=utf-8" +
		"&a%2Fb=x%26y%3Dz&alarm=true&empty=&plus=1%2B1&%C3%BC=%C3%9F"
	if got != want {
		t.Errorf("topic\n got %q\nwant %q", got, want)
	}
	if got := TelemetryTopic("dev1", &Message{}); got != "devices/dev1/messages/events/" {
		t.Errorf("bare topic %q", got)
	}
	// Round trip through the parser.
	if bag := ParsePropertyBag(""); len(bag) != 0 {
		t.Errorf("empty bag parsed to %v", bag)
	}
	bag := ParsePropertyBag(strings.TrimPrefix(want, "devices/dev1/messages/events/"))
	for k, v := range m.Properties {
		if g, ok := bag.Get(k); !ok || g != v {
			t.Errorf("property %q: got %q,%v want %q", k, g, ok, v)
		}
	}
	if g, _ := bag.Get("$.ct"); g != "application/json" {
		t.Errorf("$.ct = %q", g)
	}
	ts := time.Date(2026, 11, 29, 1, 2, 3, 4000, time.UTC)
	if got := TelemetryTopic("d", &Message{CreationTime: ts}); got != "devices/d/messages/events/%24.ctime=2026-11-29T01%3A02%3A03.000004Z" {
		t.Errorf("ctime topic %q", got)
	}
}

func TestPropertyBagNullAndForms(t *testing.T) {
	t.Parallel()
	bag := ParsePropertyBag("%24.mid=1&$.to=%2Fdevices%2Fd&flag&empty=&bad=%zz%4&plus=a+b")
	want := PropertyBag{
		{Name: "$.mid", Value: "1"},
		{Name: "$.to", Value: "/devices/d"},
		{Name: "flag", Null: true},
		{Name: "empty"},
		{Name: "bad", Value: "%zz%4"},
		{Name: "plus", Value: "a+b"},
	}
	if len(bag) != len(want) {
		t.Fatalf("got %v", bag)
	}
	for i := range want {
		if bag[i] != want[i] {
			t.Errorf("[%d] got %+v want %+v", i, bag[i], want[i])
		}
	}
	if enc := EncodePropertyBag(PropertyBag{{Name: "flag", Null: true}, {Name: "e"}}); enc != "flag&e=" {
		t.Errorf("encode null/empty: %q", enc)
	}
}

func TestParseResponseTopics(t *testing.T) {
	t.Parallel()
	cases := []struct {
		topic string
		want  Response
		bad   bool
	}{
		{topic: "$dps/registrations/res/202/?$rid=1&retry-after=3", want: Response{Status: 202, RID: "1", RetryAfter: 3 * time.Second, HasRetry: true}},
		{topic: "$dps/registrations/res/200/?$rid=abc-def", want: Response{Status: 200, RID: "abc-def"}},
		{topic: "$dps/registrations/res/429/?%24rid=9&Retry-After=10", want: Response{Status: 429, RID: "9", RetryAfter: 10 * time.Second, HasRetry: true}},
		{topic: "$dps/registrations/res/500/?$rid=2&retry-after=x", want: Response{Status: 500, RID: "2"}},
		{topic: "$dps/registrations/res/401", want: Response{Status: 401}},
		{topic: "$dps/registrations/res/abc/?$rid=1", bad: true},
		{topic: "$dps/registrations/res/-20/?$rid=1", bad: true},
		{topic: "$dps/registrations/PUT/iotdps-register/?$rid=1", bad: true},
	}
	for _, c := range cases {
		got, err := ParseDPSResponseTopic(c.topic)
		if (err != nil) != c.bad {
			t.Errorf("%s: err %v", c.topic, err)
			continue
		}
		if !c.bad && got != c.want {
			t.Errorf("%s: got %+v want %+v", c.topic, got, c.want)
		}
	}
	r, err := ParseTwinResponseTopic("$iothub/twin/res/204/?$rid=1&$version=6")
	if err != nil || r.Status != 204 || r.RID != "1" || !r.HasVersion || r.Version != 6 {
		t.Errorf("twin: %+v %v", r, err)
	}
}

func TestMethodAndDesiredTopics(t *testing.T) {
	t.Parallel()
	m, err := parseMethodTopic("$iothub/methods/POST/reboot/?$rid=42")
	if err != nil || m.Name != "reboot" || m.RID != "42" {
		t.Errorf("method: %+v %v", m, err)
	}
	if _, err := parseMethodTopic("$iothub/methods/POST/reboot"); err == nil {
		t.Error("method without rid accepted")
	}
	v, ok, err := parseDesiredTopic("$iothub/twin/PATCH/properties/desired/?$version=12")
	if err != nil || !ok || v != 12 {
		t.Errorf("desired: %d %v %v", v, ok, err)
	}
}

func TestParseC2DTopic(t *testing.T) {
	t.Parallel()
	topic := "devices/my-device-1/messages/devicebound/%24.mid=84c08717-2be1-404c-9e5d-62f4565ca58b&%24.to=%2Fdevices%2Fmy-device-1%2Fmessages%2FdeviceBound&iothub-ack=full&property1=value1&nullprop"
	m, err := ParseC2DTopic("my-device-1", topic)
	if err != nil {
		t.Fatal(err)
	}
	if m.MessageID != "84c08717-2be1-404c-9e5d-62f4565ca58b" || m.To != "/devices/my-device-1/messages/deviceBound" || m.Ack != "full" {
		t.Errorf("system props: %+v", m)
	}
	if v, ok := m.Properties.Get("property1"); !ok || v != "value1" {
		t.Errorf("app prop: %v", m.Properties)
	}
	if len(m.Properties) != 2 || !m.Properties[1].Null {
		t.Errorf("null prop: %+v", m.Properties)
	}
	if _, err := ParseC2DTopic("d", "devices/d/messages/events/"); err == nil {
		t.Error("telemetry topic accepted as c2d")
	}
}

func TestParseOperationStatus(t *testing.T) {
	t.Parallel()
	assigned := `{"operationId":"4.d0a6","status":"assigned","registrationState":{
        "x509":{},"registrationId":"paho-sample-device1","createdDateTimeUtc":"2020-04-10T03:11:13.0276997Z",
        "assignedHub":"contoso.azure-devices.net","deviceId":"paho-sample-device1","status":"assigned",
        "substatus":"initialAssignment","lastUpdatedDateTimeUtc":"2020-04-10T03:11:13.2096201Z",
        "etag":"IjYxMDA4ZDQ2LTAwMDAtMDEwMC0wMDAwLTVlOGZlM2QxMDAwMCI="}}`
	op, err := ParseOperationStatus([]byte(assigned))
	if err != nil {
		t.Fatal(err)
	}
	rs := op.RegistrationState
	if op.Status != StatusAssigned || rs.AssignedHub != "contoso.azure-devices.net" || rs.Substatus != "initialAssignment" || rs.X509 == nil {
		t.Errorf("parsed %+v %+v", op, rs)
	}
	failed := `{"operationId":"4.dd5e","status":"failed","registrationState":{"registrationId":"j","status":"failed","errorCode":400209,"errorMessage":"Custom allocation failed with status code: 401"}}`
	op, err = ParseOperationStatus([]byte(failed))
	if err != nil || op.Status != StatusFailed || op.RegistrationState.ErrorCode != 400209 {
		t.Errorf("failed: %+v %v", op, err)
	}
	for _, bad := range []string{`{`, `{"operationId":"x","status":"weird"}`, `{"operationId":"x","status":"assigned"}`} {
		if _, err := ParseOperationStatus([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
	// errorCode as a string still parses.
	op, err = ParseOperationStatus([]byte(`{"operationId":"x","status":"disabled","registrationState":{"errorCode":"401002"}}`))
	if err != nil || op.RegistrationState.ErrorCode != 401002 {
		t.Errorf("string errorCode: %+v %v", op, err)
	}
}

func TestParseStatusError(t *testing.T) {
	t.Parallel()
	body := `{"errorCode":401002,"trackingId":"8ad0463c","message":"Invalid certificate.","timestampUtc":"2020-04-10T05:24:22.4718526Z","info":{"a":"b","n":1}}`
	e := parseStatusError("dps register", Response{Status: 401}, []byte(body))
	if e.ErrorCode != 401002 || e.TrackingID != "8ad0463c" || e.Message != "Invalid certificate." || e.Info["a"] != "b" || e.Info["n"] != "1" {
		t.Errorf("%+v", e)
	}
	if e.Retryable() || !strings.Contains(e.Error(), "401002") || !strings.Contains(e.Error(), "8ad0463c") {
		t.Errorf("error text / retryable: %v", e)
	}
	e = parseStatusError("x", Response{Status: 503}, []byte("Service Unavailable"))
	if !e.Retryable() || e.Message != "Service Unavailable" {
		t.Errorf("%+v", e)
	}
}

func TestBackoffAndLimiter(t *testing.T) {
	t.Parallel()
	b := Backoff{Base: time.Second, Max: 60 * time.Second}
	if d := b.Delay(0, func() float64 { return 0.999 }); d >= time.Second {
		t.Errorf("delay(0) = %v", d)
	}
	if d := b.Delay(40, func() float64 { return 0.999 }); d > 60*time.Second || d < 59*time.Second {
		t.Errorf("delay(40) = %v", d)
	}
	if d := b.Delay(3, func() float64 { return 0 }); d != 0 {
		t.Errorf("full jitter lower bound %v", d)
	}
	if clampRetryAfter(10000*time.Second, 0, 300*time.Second) != 300*time.Second {
		t.Error("clamp max")
	}
	p := pollLimiter{limit: 5, window: 10 * time.Second}
	t0 := time.Unix(1000, 0)
	for i := 0; i < 5; i++ {
		now := t0.Add(time.Duration(i) * 100 * time.Millisecond)
		if d := p.wait(now); d != 0 {
			t.Fatalf("poll %d waits %v", i, d)
		}
		p.record(now)
	}
	now := t0.Add(500 * time.Millisecond)
	d := p.wait(now)
	if d < 9500*time.Millisecond {
		t.Errorf("6th poll may go after %v; 5 polls/10 s would be exceeded", d)
	}
	// The 6th poll lands more than 10 s after the 1st.
	if sixth := now.Add(d); sixth.Sub(t0) <= 10*time.Second {
		t.Errorf("window violated: 6th poll %v after the 1st", sixth.Sub(t0))
	}
}
