package simulator

import (
	"encoding/base64"
	"reflect"
	"strings"
	"testing"
)

func TestParseDPSUsername(t *testing.T) {
	t.Parallel()
	u, err := ParseDPSUsername("0ne00000001/registrations/dev-1/api-version=2019-03-31&ClientVersion=azure-iot-provisioning-device%2F1.9.1")
	if err != nil || u.IDScope != "0ne00000001" || u.RegistrationID != "dev-1" || u.APIVersion != "2019-03-31" || u.ClientVersion != "azure-iot-provisioning-device/1.9.1" {
		t.Fatalf("%+v %v", u, err)
	}
	for _, bad := range []string{
		"", "scope/registrations/dev", "scope/regs/dev/api-version=1", "scope/registrations/dev/?api-version=2019-03-31",
		"scope/registrations/dev/ClientVersion=x", "/registrations/dev/api-version=1", "scope/registrations//api-version=1",
		"scope/registrations/dev/api-version=%zz",
	} {
		if _, err := ParseDPSUsername(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseHubUsername(t *testing.T) {
	t.Parallel()
	u, err := ParseHubUsername("hub.azure-devices.net/dev-1/?api-version=2021-04-12&DeviceClientType=c%2F1&model-id=dtmi%3Ax%3B1")
	if err != nil || u.HubHost != "hub.azure-devices.net" || u.DeviceID != "dev-1" || u.APIVersion != "2021-04-12" || u.ModelID != "dtmi:x;1" || u.DeviceClientType != "c/1" {
		t.Fatalf("%+v %v", u, err)
	}
	for _, bad := range []string{"", "hub/dev", "hub/dev/api-version=1", "hub//?api-version=1", "hub/dev/?x=1", "a/b/c/d/?api-version=1"} {
		if _, err := ParseHubUsername(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestPropertyBag(t *testing.T) {
	t.Parallel()
	p, err := ParsePropertyBag("%24.ct=application%2Fjson&$.ce=utf-8&alarm=true&flag&empty=&sp=a%20b")
	if err != nil {
		t.Fatal(err)
	}
	sys, app := SplitProperties(p)
	want := map[string]string{"contentType": "application/json", "contentEncoding": "utf-8"}
	if !reflect.DeepEqual(sys, want) {
		t.Errorf("system %v", sys)
	}
	if app["alarm"] != "true" || app["sp"] != "a b" || app["empty"] != "" {
		t.Errorf("app %v", app)
	}
	if !p[3].Null || p[4].Null {
		t.Errorf("null handling %+v", p)
	}
	for _, bad := range []string{"a=%zz", "%zz=1", "=v"} {
		if _, err := ParsePropertyBag(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestTopics(t *testing.T) {
	t.Parallel()
	tp, err := ParseDPSTopic("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=7&operationId=4.abc.def")
	if err != nil || tp.Kind != TopicDPSPoll || tp.RID != "7" || tp.OperationID != "4.abc.def" {
		t.Fatalf("%+v %v", tp, err)
	}
	for _, bad := range []string{"$dps/registrations/PUT/iotdps-register/", "$dps/registrations/PUT/iotdps-register/?x=1",
		"$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1", "$dps/foo"} {
		if _, err := ParseDPSTopic(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	ht, err := ParseHubTopic("$iothub/methods/res/200/?$rid=abc", "d")
	if err != nil || ht.Kind != TopicMethodResponse || ht.Status != 200 || ht.RID != "abc" {
		t.Fatalf("%+v %v", ht, err)
	}
	for _, bad := range []string{"devices/other/messages/events/", "$iothub/methods/res/x/?$rid=1", "$iothub/twin/GET/", "devices/d/messages/devicebound/"} {
		if _, err := ParseHubTopic(bad, "d"); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParseDPSUsername(f *testing.F) {
	for _, s := range []string{"0ne0000SIM1/registrations/dev/api-version=2019-03-31&ClientVersion=x%2F1", "a/registrations/b/api-version=", "///"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseDPSUsername(s)
		if err == nil && (u.RegistrationID == "" || u.APIVersion == "" || strings.Contains(u.RegistrationID, "/")) {
			t.Fatalf("accepted %q as %+v", s, u)
		}
	})
}

func FuzzParseHubUsername(f *testing.F) {
	for _, s := range []string{"h.azure-devices.net/d/?api-version=2021-04-12", "h/d/m/?api-version=1&model-id=x", "/?"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseHubUsername(s)
		if err == nil && (u.DeviceID == "" || u.HubHost == "" || u.APIVersion == "") {
			t.Fatalf("accepted %q as %+v", s, u)
		}
	})
}

func FuzzParsePropertyBag(f *testing.F) {
	for _, s := range []string{"%24.ct=application%2Fjson&a=b", "a&b=&c=%20", "=", "%", "&&"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePropertyBag(s)
		if err != nil {
			return
		}
		// Round trip: encoding and parsing again gives the same properties.
		q, err := ParsePropertyBag(EncodePropertyBag(p))
		if err != nil || !reflect.DeepEqual(p, q) {
			t.Fatalf("round trip of %q: %+v vs %+v (%v)", s, p, q, err)
		}
		SplitProperties(p)
	})
}

func FuzzParseTopic(f *testing.F) {
	for _, s := range []string{"$dps/registrations/PUT/iotdps-register/?$rid=1", "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1&operationId=x",
		"devices/d/messages/events/a=b", "$iothub/twin/PATCH/properties/reported/?$rid=1", "$iothub/methods/res/200/?$rid=1", "$iothub/twin/GET/?$rid=%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if tp, err := ParseDPSTopic(s); err == nil && tp.Kind == TopicUnknown {
			t.Fatalf("DPS topic %q parsed as unknown", s)
		}
		if tp, err := ParseHubTopic(s, "d"); err == nil && tp.Kind == TopicUnknown {
			t.Fatalf("hub topic %q parsed as unknown", s)
		}
		_ = HubSubscriptionAllowed(s, "d") // must not panic
	})
}

func TestValidDeviceID(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"dev-1", "a.b_c:d=e@f$g'h(i)j,k!l?m*n%o", strings.Repeat("a", 128)} {
		if err := ValidDeviceID(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a b", "a/b", "a#b", "a+b", strings.Repeat("a", 129), "é"} {
		if ValidDeviceID(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func BenchmarkParsePropertyBag(b *testing.B) {
	bag := "%24.mid=84c08717-2be1-404c-9e5d-62f4565ca58b&%24.ct=application%2Fjson&%24.ce=utf-8&alarm=true&temp=21.5"
	for b.Loop() {
		p, err := ParsePropertyBag(bag)
		if err != nil {
			b.Fatal(err)
		}
		SplitProperties(p)
	}
}

func BenchmarkParseHubTopic(b *testing.B) {
	for b.Loop() {
		if _, err := ParseHubTopic("devices/dev-1/messages/events/%24.ct=application%2Fjson&a=b", "dev-1"); err != nil {
			b.Fatal(err)
		}
	}
}

func TestValidRegistrationID(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"dev-1", "a.b_c:d-", "X9"} {
		if err := ValidRegistrationID(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a b", "a.", "a_", "a#b", "a$b", strings.Repeat("a", 129)} {
		if ValidRegistrationID(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParsePEMCerts(f *testing.F) {
	ca, _, err := loadOrMakeCA(f.TempDir(), "c.pem", "c.key", "fuzz seed CA", nil, nil, "p256")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(pemCert(ca))
	f.Add([]byte(base64.StdEncoding.EncodeToString(ca.Raw)))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("not a certificate"))
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := ParsePEMCerts(b)
		if err == nil && len(certs) == 0 {
			t.Fatal("no error and no certificate")
		}
	})
}
